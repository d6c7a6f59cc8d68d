//! The reader half of a session: reads bytes (poll-based, with an adaptive read size), decodes
//! every frame a read brought in and hands them to the handler's queue as one batch, and waits
//! — without reading — while the handler's queue is full or the session's byte budget is spent
//! (watching the socket meanwhile for a peer that hangs up). Byte streams (TCP, TLS) run
//! [`stream_reader`]; the datagram and WebSocket readers use [`decode_all`] and
//! [`wait_for_budget`].

use super::budget::Mem;
use super::config::SessionConfig;
use super::handle::Session;
use super::io::{hung_up, ReadSource};
use super::queue;
use super::timers::deadline_after;
use crate::Error;
use bytes::BytesMut;
use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// What the reader hands the handler.
pub(crate) enum Inbound<T> {
    /// A decoded message, when it was read (milliseconds of the session clock), and how many
    /// bytes of the session's budget it holds (released once it is handled).
    Msg(T, u64, usize),
    Err(Error),
}

const MIN_READ: usize = 512;
/// Small reads in a row after which the read size halves.
const SHRINK_AFTER: u8 = 8;
/// The largest empty read buffer a reader keeps while it waits for data after a small read.
const KEEP_WHILE_WAITING: usize = 1024;
/// ... and after a read that filled a good part of its buffer (traffic is flowing): the next
/// read is likely to need as much, and freeing and allocating it per burst costs more.
const KEEP_WHILE_FLOWING: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// The reader's share of the configuration (small and `Copy`, for the spawned reader task).
#[derive(Clone, Copy)]
pub(crate) struct ReadLimits {
    pub(crate) read_buffer: usize,
    pub(crate) max_frame_len: usize,
    pub(crate) read_timeout: Option<Duration>,
}

impl From<&SessionConfig> for ReadLimits {
    fn from(c: &SessionConfig) -> Self {
        ReadLimits {
            read_buffer: c.read_buffer.clamp(MIN_READ, MAX_READ),
            max_frame_len: c.max_frame_len,
            read_timeout: c.read_timeout,
        }
    }
}

/// How far [`decode_some`] got.
enum Step {
    /// Every complete frame is queued.
    Done,
    /// The handler's queue is full; frames remain.
    Full,
    /// The handler is gone.
    Closed,
    /// The input does not decode.
    Failed(Error),
}

/// Decodes complete frames from `buf` straight into the handler's queue, without waiting: one
/// lock for all the frames of a read.
fn decode_some<D>(
    codec: &mut D,
    buf: &mut BytesMut,
    tx: &queue::Sender<Inbound<D::Item>>,
    eof: bool,
    read_at: u64,
    frames: &mut u64,
    moved: &mut usize,
) -> Step
where
    D: Decoder<Error: Into<crate::error::BoxError> + Send>,
{
    let mut failure = None;
    let mut next = || {
        let before = buf.len();
        let decoded = if !eof {
            codec.decode(buf)
        } else if buf.is_empty() {
            Ok(None)
        } else {
            codec.decode_eof(buf)
        };
        match decoded {
            Ok(Some(item)) => {
                *frames += 1;
                let len = before.saturating_sub(buf.len());
                *moved += len;
                Some(Inbound::Msg(item, read_at, len))
            }
            Ok(None) => None,
            Err(e) => {
                failure = Some(Error::Decode(e.into()));
                None
            }
        }
    };
    match tx.push_from(&mut next) {
        Err(()) => Step::Closed,
        Ok(false) => Step::Full,
        Ok(true) => match failure {
            None => Step::Done,
            Some(e) => Step::Failed(e),
        },
    }
}

/// Decodes every complete frame in `buf` and hands each to the handler, waiting for room in its
/// queue (and watching `probe`'s socket meanwhile: a peer that hangs up while the session is
/// not reading ends it at once). With `eof`, the buffer is a whole message (a datagram, a
/// WebSocket message, the rest of a stream at EOF): the codec's `decode_eof` also gets what is
/// left. Returns `false` when the session should stop reading (decode error, handler gone,
/// peer gone). Adds to `moved` the bytes of `buf` that became frames (each frame holds its
/// share of the budget from then on).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn decode_all<D, O>(
    codec: &mut D,
    buf: &mut BytesMut,
    tx: &queue::Sender<Inbound<D::Item>>,
    session: &Session<O>,
    eof: bool,
    read_at: u64,
    probe: Option<&TcpStream>,
    moved: &mut usize,
) -> bool
where
    D: Decoder<Error: Into<crate::error::BoxError> + Send>,
{
    let mut frames = 0u64;
    let mut step = decode_some(codec, buf, tx, eof, read_at, &mut frames, moved);
    if matches!(step, Step::Full | Step::Failed(_)) {
        // Rare (the handler is behind, or the input is bad): boxed, so a reader's state does
        // not carry these waits.
        step = Box::pin(async {
            loop {
                match step {
                    Step::Full => {
                        tokio::select! {
                            biased;
                            _ = tx.wait_for_room() => {}
                            _ = hung_up(probe) => {
                                session.peer_gone();
                                break Step::Closed;
                            }
                        }
                        step = decode_some(codec, buf, tx, eof, read_at, &mut frames, moved);
                    }
                    Step::Failed(e) => {
                        report(tx, e).await;
                        break Step::Closed;
                    }
                    done => break done,
                }
            }
        })
        .await;
    }
    session.stats_ref().add_in(frames, 0);
    matches!(step, Step::Done)
}

/// Hands the handler the error that ends a reader (boxed: once per session at most).
pub(crate) async fn report<T>(tx: &queue::Sender<Inbound<T>>, e: Error) {
    let _ = Box::pin(tx.send(Inbound::Err(e))).await;
}

/// Waits, without reading, until the session's budget has room; meanwhile watches `probe`'s
/// socket. `false` if the peer hung up.
pub(crate) async fn wait_for_budget<O>(session: &Session<O>, probe: Option<&TcpStream>) -> bool {
    tokio::select! {
        biased;
        _ = poll_fn(|cx| session.mem().poll_room(cx)) => true,
        _ = hung_up(probe) => {
            session.peer_gone();
            false
        }
    }
}

/// Bytes of spare room a decoder may leave reserved in a read buffer: a codec that reserves
/// what a frame's header announces (tokio-util's `LengthDelimitedCodec` does) would otherwise
/// make every peer that sends only a header hold a largest frame's worth of memory.
const MAX_SPARE: usize = MAX_READ;

/// Gives back spare room beyond what has arrived plus a read (or a quarter of a large partial
/// frame, the reader's own growth step), whatever a decoder reserved.
/// The allocation is shrunk in place (no second buffer, no copy where the allocator can
/// shrink it where it is; glibc also keeps a large block a mapping of its own that way,
/// instead of freeing it and raising its threshold for mapping large blocks, which would
/// make later large buffers come from — and stay in — the heap).
fn trim_spare(buf: &mut BytesMut, want: usize) {
    // The reader's own growth (a quarter of a large partial frame) is left alone.
    let keep = want.max(buf.len() / 4);
    if buf.capacity() - buf.len() > keep.max(MAX_SPARE) {
        let mut v: Vec<u8> = std::mem::take(buf).into();
        v.shrink_to(v.len() + keep);
        *buf = BytesMut::from(bytes::Bytes::from(v));
    }
}

/// The reader task of a byte-stream session (TCP, TLS). It runs until the peer closes, an
/// error, or the handler is gone (its queue closed); the handler aborts it when the session
/// ends. Its state is small (poll-based reads, rare waits boxed): one waits in every idle
/// session.
pub(crate) fn stream_reader<R, D, O>(
    src: R,
    codec: D,
    tx: queue::Sender<Inbound<D::Item>>,
    session: Session<O>,
    limits: ReadLimits,
) -> impl Future<Output = ()> + Send
where
    R: ReadSource,
    D: Decoder<Error: Into<crate::error::BoxError> + Send> + Send,
    D::Item: Send,
    O: Send + 'static,
{
    let (mut src, mut codec) = (src, codec);
    async move {
        let mut buf = BytesMut::new();
        // The budget bytes the reader's buffer holds: its whole capacity (what is allocated
        // for it, read or not; bytes that became frames are the frames' from then on).
        let mut charged = 0usize;
        let mem = session.mem();
        let mut want = limits.read_buffer;
        // Small reads in a row.
        let mut small = 0u8;
        // Whether the last read filled a good part of its buffer (traffic is flowing).
        let mut flowing = false;
        // When the partial frame now in `buf` started arriving.
        let mut partial_since: Option<Instant> = None;
        loop {
            // Only a partial frame is timed (from its first byte, however it trickles in, and
            // while the session waits for budget): a quiet connection is not an error here.
            if buf.is_empty() {
                partial_since = None;
            } else if partial_since.is_none() {
                partial_since = Some(Instant::now());
            }
            mem.set_partial(!buf.is_empty());
            // Before waiting, an empty buffer is given back unless it is small, or traffic is
            // flowing and it is not large (then the next read needs one again at once).
            let keep = if flowing {
                KEEP_WHILE_FLOWING
            } else {
                KEEP_WHILE_WAITING
            };
            if buf.is_empty() && buf.capacity() > keep {
                buf = BytesMut::new();
                settle(mem, &mut charged, 0);
            }
            let before = buf.len();
            // The budget's room is looked at when the bytes are there to be read, so many
            // waiting sessions cannot all be let in at once; the buffer grows by no more than
            // the room (a large partial frame by a quarter of itself at a time).
            let read = poll_fn(|cx| {
                // Room already counted (the buffer's spare capacity) can always be filled; the
                // buffer grows only within the budget's room.
                let spare = buf.capacity() - buf.len();
                let room = mem.room();
                if room == 0 && spare == 0 {
                    return Poll::Ready(None);
                }
                let grow = want.max(buf.len() / 4).min(room);
                let r = src.poll_read_into(cx, &mut buf, grow, spare.saturating_add(room));
                if r.is_pending() && buf.is_empty() && buf.capacity() > keep {
                    // Readiness that came to nothing (a new connection's first wake-up often
                    // does) must not leave a read buffer behind in a waiting session.
                    buf = BytesMut::new();
                }
                settle(mem, &mut charged, buf.capacity());
                r.map(Some)
            });
            let deadline = limits
                .read_timeout
                .zip(partial_since)
                .map(|(t, since)| (t, deadline_after(since, t)));
            let result = match deadline {
                None => read.await.map(|r| r.map_err(Error::from)),
                // Boxed: rare, and its timer would otherwise enlarge every idle reader.
                Some((t, at)) => match Box::pin(tokio::time::timeout_at(at.into(), read)).await {
                    Ok(r) => r.map(|r| r.map_err(Error::from)),
                    Err(_) => Some(Err(Error::ReadTimeout(t))),
                },
            };
            let Some(result) = result else {
                // No room in the budget: wait (boxed: rare) without reading. While the shared
                // budget is what is spent, the partial frame's read timeout runs on (peers
                // that stall mid-frame must not keep it spent); while the session's own budget
                // is (its listener or writer is behind), the peer is not at fault: its frame's
                // clock starts again once reading resumes.
                // An empty buffer is not kept while waiting: its room is counted, and a reader
                // must never wait for room its own buffer takes.
                if buf.is_empty() {
                    buf = BytesMut::new();
                    settle(mem, &mut charged, 0);
                }
                let pool_bound = mem.pool_bound();
                if !pool_bound {
                    partial_since = None;
                }
                let wait = wait_for_budget(&session, src.probe());
                let waited = match deadline.filter(|_| pool_bound) {
                    None => Box::pin(wait).await,
                    Some((t, at)) => match Box::pin(tokio::time::timeout_at(at.into(), wait)).await
                    {
                        Ok(w) => w,
                        Err(_) => {
                            report(&tx, Error::ReadTimeout(t)).await;
                            return;
                        }
                    },
                };
                if !waited {
                    return;
                }
                if !pool_bound {
                    partial_since = None;
                }
                continue;
            };
            let mut moved = 0;
            match result {
                Ok(0) => {
                    // EOF: hand on every frame already read (a last frame is never lost), then
                    // report bytes that do not form a frame.
                    let at = session.stats_ref().active_ms();
                    decode_all(
                        &mut codec, &mut buf, &tx, &session, true, at, None, &mut moved,
                    )
                    .await;
                    return;
                }
                Ok(n) => {
                    let stats = session.stats_ref();
                    stats.add_in(0, n as u64);
                    let at = stats.touch();
                    // Adapt the next read size to the traffic (like netty's adaptive
                    // allocator): grow at once when a read fills the buffer; shrink only after
                    // a run of small reads, so one short read (the tail of a burst) does not
                    // make the next burst take two reads.
                    flowing = n >= want / 4;
                    if before + n == buf.capacity() {
                        want = (want * 2).min(MAX_READ);
                        small = 0;
                    } else if n < want / 4 {
                        small += 1;
                        if small == SHRINK_AFTER {
                            want = (want / 2).max(MIN_READ);
                            small = 0;
                        }
                    } else {
                        small = 0;
                    }
                    let go_on = decode_all(
                        &mut codec,
                        &mut buf,
                        &tx,
                        &session,
                        false,
                        at,
                        src.probe(),
                        &mut moved,
                    )
                    .await;
                    // The frames' bytes left the buffer's capacity with them.
                    charged = charged.saturating_sub(moved);
                    if moved > 0 {
                        // A frame is in: an overdraft this session held goes round.
                        mem.set_partial(false);
                    }
                    if !go_on {
                        return;
                    }
                    trim_spare(&mut buf, want);
                    settle(mem, &mut charged, buf.capacity());
                    if buf.len() > limits.max_frame_len {
                        let err = Error::FrameTooLarge {
                            len: buf.len(),
                            max: limits.max_frame_len,
                        };
                        report(&tx, err).await;
                        return;
                    }
                }
                Err(e) => {
                    report(&tx, e).await;
                    return;
                }
            }
        }
    }
}

/// Brings what the reader's buffer is counted for (`charged`) to its capacity `cap`.
fn settle(mem: &Mem, charged: &mut usize, cap: usize) {
    if cap > *charged {
        mem.charge(cap - *charged);
    } else {
        mem.release(*charged - cap);
    }
    *charged = cap;
}
