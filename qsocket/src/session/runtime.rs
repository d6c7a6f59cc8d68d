//! The two tasks of a session: the reader (read + decode every frame a read brought in) and the
//! handler (listener callbacks, cron tick, timeouts, and one write for everything queued).

use super::config::SessionConfig;
use super::handle::Session;
use super::io::hung_up;
use super::io::{FrameSink, ReadSource};
use super::listener::{Ctx, EventListener};
use super::queue;
use super::Codec;
use crate::Error;
use bytes::BytesMut;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

/// What the reader hands the handler.
pub(crate) enum Inbound<T> {
    /// A decoded message, when it was read (milliseconds of the session clock), and how many
    /// bytes of the session's budget it holds (released once it is handled).
    Msg(T, u64, usize),
    Err(Error),
}

/// At most this many messages are handled, or queued sends gathered, per loop pass before the
/// handler writes; it also writes once this many bytes are buffered.
const BATCH: usize = 128;
const FLUSH_BYTES: usize = 64 * 1024;
const MIN_READ: usize = 512;
/// Small reads in a row after which the read size halves.
const SHRINK_AFTER: u8 = 8;
/// The largest empty read buffer a reader keeps while it waits for data after a small read.
const KEEP_WHILE_WAITING: usize = 1024;
/// ... and after a read that filled a good part of its buffer (traffic is flowing): the next
/// read is likely to need as much, and freeing and allocating it per burst costs more.
const KEEP_WHILE_FLOWING: usize = 8 * 1024;
/// The largest write buffer an idle session keeps (a larger one is given back when the
/// handler goes idle).
const KEEP_WHILE_IDLE: usize = 1024;
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
fn settle(mem: &super::budget::Mem, charged: &mut usize, cap: usize) {
    if cap > *charged {
        mem.charge(cap - *charged);
    } else {
        mem.release(*charged - cap);
    }
    *charged = cap;
}

/// Runs `fut`, first polling it once without any timer; if it is pending, bounds it by
/// `limit` and by `force`.
async fn guarded<F: Future<Output = Result<(), Error>>, O>(
    fut: F,
    limit: Option<Duration>,
    force: &CancellationToken,
    session: &Session<O>,
) -> Result<(), Error> {
    let mut fut = pin!(fut);
    let first = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    if let Poll::Ready(r) = first {
        return r;
    }
    // The slow path (timer + forced-shutdown watch) is boxed: it is rare, and keeping its
    // state inline would make every idle session's handler larger.
    Box::pin(wait_bounded(fut, limit, force, session)).await
}

/// Runs `fut` until it ends, `limit` passes, the shutdown turns forced, or the peer is found
/// gone while the session was not reading.
async fn wait_bounded<F: Future<Output = Result<(), Error>>, O>(
    fut: F,
    limit: Option<Duration>,
    force: &CancellationToken,
    session: &Session<O>,
) -> Result<(), Error> {
    let gone = async {
        session.token().cancelled().await;
        if !session.mem().is_gone() {
            std::future::pending::<()>().await;
        }
    };
    let timed = async {
        match limit {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or(Err(Error::WriteTimeout(t))),
            None => fut.await,
        }
    };
    tokio::select! {
        biased;
        _ = force.cancelled() => Err(Error::SessionClosed),
        _ = gone => Err(Error::PeerGone),
        r = timed => r,
    }
}

/// Where listener callbacks put what they send: encoded at once into the session's write
/// buffer (see [`Ctx::send`]), or written there directly as a whole frame by a protocol layer.
pub(crate) trait Outgoing<O>: Send {
    /// Encodes `msg` into the write buffer.
    fn push(&mut self, msg: O);
    /// Appends one whole frame, written by `write`.
    fn push_raw(&mut self, write: &mut dyn FnMut(&mut BytesMut));
    /// Bytes waiting in the write buffer.
    fn buffered(&self) -> usize;
}

/// The handler's outgoing side: the codec, the write buffer and the frame bounds.
struct Out<C> {
    codec: C,
    buf: BytesMut,
    bounds: Vec<usize>,
    frames: u64,
    /// Whether each frame travels as its own message, and the largest one the sink carries.
    messages: bool,
    /// While busy: the most bytes buffered since the handler last went idle. After a large
    /// buffer was given back: the size to make the next one with, so a burst starts with that
    /// much room instead of growing step by step (then it counts anew).
    mark: u32,
    max_message: usize,
    /// Messages that could not be encoded (they are dropped; the rest go out).
    errors: Vec<Error>,
}

impl<C: Send> Out<C> {
    /// Before appending: a buffer given back while idle is made again at the size it had.
    fn room(&mut self) {
        if self.buf.capacity() == 0 && self.mark > 0 {
            self.buf.reserve(self.mark as usize);
            self.mark = 0;
        }
    }

    /// The handler is going idle: a buffer that traffic made large is given back (only when
    /// everything in it is written), remembering its size for the next burst.
    fn idle(&mut self) {
        if !self.buf.is_empty() {
            return;
        }
        // The most bytes this burst buffered (or the size kept from the last release, when
        // nothing was pushed since).
        let used = self.mark as usize;
        if self.buf.capacity() > KEEP_WHILE_IDLE || used > KEEP_WHILE_IDLE {
            self.buf = BytesMut::new();
        }
        self.mark = if used > KEEP_WHILE_IDLE {
            u32::try_from(used.min(FLUSH_BYTES)).unwrap_or(u32::MAX)
        } else {
            0
        };
    }

    /// Closes the frame that started at `start`.
    fn end_frame(&mut self, start: usize) {
        if self.messages {
            let len = self.buf.len() - start;
            if len > self.max_message {
                self.buf.truncate(start);
                self.errors.push(Error::FrameTooLarge {
                    len,
                    max: self.max_message,
                });
                return;
            }
            self.bounds.push(self.buf.len());
        }
        self.frames += 1;
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.mark = self.mark.max(len);
    }
}

impl<C, O> Outgoing<O> for Out<C>
where
    C: Encoder<O, Error: Into<crate::error::BoxError>> + Send,
{
    fn push(&mut self, msg: O) {
        self.room();
        let start = self.buf.len();
        if let Err(e) = self.codec.encode(msg, &mut self.buf) {
            self.buf.truncate(start);
            self.errors.push(Error::Encode(e.into()));
            return;
        }
        self.end_frame(start);
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn push_raw(&mut self, write: &mut dyn FnMut(&mut BytesMut)) {
        self.room();
        let start = self.buf.len();
        write(&mut self.buf);
        if self.buf.len() > start {
            self.end_frame(start);
        }
    }
}

/// Timers of one session: cron, WebSocket ping, timeout check, all served by one `Sleep`.
struct Timers {
    cron: Option<(Duration, Instant)>,
    ping: Option<(Duration, Instant)>,
    check: Option<(Duration, Instant)>,
}

impl Timers {
    fn new(cfg: &SessionConfig, ws: bool) -> Self {
        let now = Instant::now();
        let timeout = cfg
            .session_timeout
            .or(ws.then(|| cfg.ws_ping_period.saturating_mul(3)));
        let every = |p: Duration| (p, deadline_after(now, p));
        Timers {
            cron: cfg.cron_period.map(every),
            ping: ws.then_some(cfg.ws_ping_period).map(every),
            // Checked when the session would time out if nothing arrived meanwhile (then
            // re-armed from the last activity): an idle session wakes once per timeout, not
            // periodically.
            check: timeout.map(every),
        }
    }

    fn next(&self) -> Option<Instant> {
        [self.cron, self.ping, self.check]
            .into_iter()
            .flatten()
            .map(|(_, at)| at)
            .min()
    }

    /// Whether the timer `t` is due at `now`; if so, moves it one period on.
    fn due(t: &mut Option<(Duration, Instant)>, now: Instant) -> bool {
        match t {
            Some((period, at)) if *at <= now => {
                *at = deadline_after(now, *period);
                true
            }
            _ => false,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// `since + t`, or far in the future if that does not fit in an `Instant`.
pub(crate) fn deadline_after(since: Instant, t: Duration) -> Instant {
    since
        .checked_add(t)
        .unwrap_or_else(|| since + Duration::from_secs(86_400 * 365 * 30))
}

/// Everything one session needs to run, apart from its transport.
pub(crate) struct Parts<L: EventListener, C> {
    pub(crate) listener: L,
    pub(crate) codec: C,
    pub(crate) session: Session<L::Out>,
    pub(crate) outbound: queue::Receiver<L::Out>,
    pub(crate) inbound: queue::Receiver<Inbound<L::In>>,
}

/// Runs the handler of one session until it closes: the reader is spawned, `on_open` runs, then
/// messages, sends, ticks and writes until the session closes; then queued writes are drained,
/// the write side shut down, and `on_close` runs once.
///
/// The future resolves to `Err` only when `on_open` refused the session.
///
/// One of these waits in every idle session, so its state is kept small: the arguments are
/// captured and used in place (an `async fn` would hold a second copy of each), writes are
/// poll-based, and what is rare — timer ticks, the closing phase, a write that has to wait —
/// is boxed when it happens.
pub(crate) fn drive<'a, L, C, S, R, RF, OL>(
    parts: Parts<L, C>,
    sink: S,
    reader: Option<RF>,
    cfg: &'a SessionConfig,
    force: &'a CancellationToken,
    on_live: OL,
) -> impl Future<Output = Result<(), Error>> + 'a
where
    L: EventListener,
    C: Codec<L::In, L::Out>,
    S: FrameSink,
    R: Future<Output = ()> + Send + 'static,
    // The reader is made only when it is spawned, so its state is not kept in the handler's.
    RF: FnOnce() -> R + 'a,
    OL: FnOnce(&Session<L::Out>) + 'a,
{
    let Parts {
        listener,
        codec,
        session,
        outbound,
        inbound,
    } = parts;
    let mut h = Handler {
        out: Out {
            codec,
            buf: BytesMut::new(),
            bounds: Vec::new(),
            frames: 0,
            messages: S::MESSAGES,
            mark: 0,
            max_message: sink.max_message(),
            errors: Vec::new(),
        },
        timers: Timers::new(cfg, session.transport().is_ws()),
        listener,
        session,
        outbound,
        inbound,
        sink,
        cfg,
        force,
        failure: None,
        can_write: true,
    };
    // Spawned now, so the handler's state keeps only its handle (reading can start while
    // `on_open` runs: frames wait in the queue; a refused session aborts it unread). The
    // handle aborts the reader however the handler ends, a panic in a callback included.
    let reader = AbortOnDrop(reader.map(|make| tokio::spawn(make())));
    let mut on_live = Some(on_live);
    async move {
        if let Err(e) = h.listener.on_open(&h.session).await {
            tracing::debug!(session = h.session.id(), peer = %h.session.peer_addr(), error = %e, "session refused");
            h.session.close();
            drop(reader);
            h.session.mem().release_all();
            Box::pin(h.sink.shutdown(None)).await;
            return Err(e);
        }
        if let Some(f) = on_live.take() {
            f(&h.session);
        }
        tracing::trace!(session = h.session.id(), peer = %h.session.peer_addr(), transport = %h.session.transport(), "session open");
        h.run().await;
        // Closing: stop the reader, refuse new sends, write what was accepted, shut down.
        Box::pin(h.close()).await;
        drop(reader);
        match &h.failure {
            Some(e) => {
                tracing::debug!(session = h.session.id(), peer = %h.session.peer_addr(), error = %e, "session closed")
            }
            None => {
                tracing::trace!(session = h.session.id(), peer = %h.session.peer_addr(), "session closed")
            }
        }
        // What is still counted (frames never handled, a reader's partial frame) is let go
        // with the session; what a listener still retains is let go as it drops.
        h.session.mem().release_all();
        h.listener.on_close(&h.session).await;
        Ok(())
    }
}

/// The handler's state.
struct Handler<'a, L: EventListener, C, S> {
    listener: L,
    session: Session<L::Out>,
    outbound: queue::Receiver<L::Out>,
    inbound: queue::Receiver<Inbound<L::In>>,
    out: Out<C>,
    sink: S,
    timers: Timers,
    cfg: &'a SessionConfig,
    force: &'a CancellationToken,
    /// `None`: a graceful end (closed locally or by the peer); `Some`: an error ended it
    /// (boxed: rare, and this state is in every session).
    failure: Option<Box<Error>>,
    /// Whether the write side still works (a failed write ends it).
    can_write: bool,
}

/// What woke the handler.
enum Ev<I, O> {
    Closed,
    In(Inbound<I>),
    ReaderDone,
    Out(O),
    Tick,
    Work,
}

impl<L, C, S> Handler<'_, L, C, S>
where
    L: EventListener,
    C: Codec<L::In, L::Out>,
    S: FrameSink,
{
    /// Records the error that ends the session (after telling the listener).
    async fn fail(&mut self, e: Error, can_write: bool) {
        self.listener.on_error(&self.session, &e).await;
        self.failure = Some(Box::new(e));
        self.can_write &= can_write;
    }

    /// Tells the listener about messages that could not be encoded (they were dropped).
    async fn report_encode_errors(&mut self) {
        for e in std::mem::take(&mut self.out.errors) {
            self.listener.on_error(&self.session, &e).await;
        }
    }

    /// Writes what is buffered: polled once in place (the common case: the socket takes it at
    /// once, no timer is armed); only if that is pending does the write get a timeout and
    /// become interruptible by a forced shutdown (boxed: rare, and its state would otherwise
    /// sit in every idle session).
    async fn write(&mut self) -> Result<(), Error> {
        if self.out.buf.is_empty() {
            return Ok(());
        }
        let (frames, bytes) = (self.out.frames, self.out.buf.len() as u64);
        // What the first poll did, kept small: this sits in the handler's state while a slow
        // write waits.
        let first = poll_fn(|cx| {
            Poll::Ready(
                match self
                    .sink
                    .poll_write(cx, &mut self.out.buf, &mut self.out.bounds)
                {
                    Poll::Ready(Ok(())) => Ok(true),
                    Poll::Ready(Err(e)) => Err(Box::new(e)),
                    Poll::Pending => Ok(false),
                },
            )
        });
        if !first.await.map_err(|e| *e)? {
            Box::pin(self.write_slow()).await?;
        }
        self.out.frames = 0;
        self.session.stats_ref().add_out(frames, bytes);
        Ok(())
    }

    /// The rest of a write the socket did not take at once, bounded by the write timeout and
    /// the forced shutdown.
    async fn write_slow(&mut self) -> Result<(), Error> {
        // Output waiting for a slow peer is held on its behalf.
        let pending = self.out.buf.len();
        let mem = self.session.mem();
        mem.charge(pending);
        let (sink, out) = (&mut self.sink, &mut self.out);
        let write = poll_fn(|cx| sink.poll_write(cx, &mut out.buf, &mut out.bounds));
        let r = wait_bounded(write, self.cfg.write_timeout, self.force, &self.session).await;
        mem.release(pending);
        r
    }

    /// Writes what is buffered; on failure records it and returns `false`.
    async fn flush(&mut self) -> bool {
        match self.write().await {
            Ok(()) => true,
            Err(e) => {
                Box::pin(self.fail(e, false)).await;
                false
            }
        }
    }

    /// Writes what is buffered while closing (errors end the closing quietly).
    async fn flush_quiet(&mut self) -> bool {
        self.write().await.is_ok()
    }

    /// Serves the session until it closes or fails.
    async fn run(&mut self) {
        let token = self.session.token().clone();
        let mut cancelled = pin!(token.cancelled());
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut sleep = pin!(tokio::time::sleep_until(
            self.timers.next().unwrap_or(far).into()
        ));
        let has_timers = self.timers.next().is_some();
        loop {
            let ev = poll_fn(|cx| {
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ev::Closed);
                }
                if has_timers && sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ev::Tick);
                }
                let at = self.session.stats_ref().active_ms();
                if self
                    .listener
                    .poll_work(&mut Ctx::new(&self.session, &mut self.out, at), cx)
                    .is_ready()
                {
                    return Poll::Ready(Ev::Work);
                }
                if self.listener.accepts_messages() {
                    match self.inbound.poll_recv(cx) {
                        Poll::Ready(Some(m)) => return Poll::Ready(Ev::In(m)),
                        Poll::Ready(None) => return Poll::Ready(Ev::ReaderDone),
                        Poll::Pending => {}
                    }
                }
                if let Poll::Ready(Some(o)) = self.outbound.poll_recv(cx) {
                    return Poll::Ready(Ev::Out(o));
                }
                // Going idle: do not keep a write buffer that traffic made large.
                self.out.idle();
                Poll::Pending
            })
            .await;

            let (mut first, tick) = match ev {
                Ev::Closed | Ev::ReaderDone => return,
                Ev::Out(o) => {
                    Outgoing::push(&mut self.out, o);
                    (None, false)
                }
                Ev::In(m) => (Some(m), false),
                Ev::Work => (None, false),
                Ev::Tick => (None, true),
            };
            if tick {
                // Boxed: ticks are rare, and their awaits would enlarge every session.
                if !Box::pin(self.tick()).await {
                    return;
                }
                sleep
                    .as_mut()
                    .reset(self.timers.next().unwrap_or(far).into());
            }

            // Handle the batch of decoded messages that is ready, encoding replies as they come.
            let mut handled = 0;
            // Budget bytes of handled messages, given back once per batch, after the batch's
            // answers are written (or counted as output waiting for the peer).
            let mut done = 0;
            while handled < BATCH {
                let msg = match first.take() {
                    Some(m) => m,
                    None if !self.listener.accepts_messages() => break,
                    None => match self.inbound.try_recv() {
                        Some(m) => m,
                        None => break,
                    },
                };
                handled += 1;
                let (m, at, len) = match msg {
                    Inbound::Msg(m, at, len) => (m, at, len),
                    Inbound::Err(e) => {
                        Box::pin(self.fail(e, true)).await;
                        break;
                    }
                };
                let mut ctx = Ctx::new(&self.session, &mut self.out, at).holding(len);
                self.listener.on_message(&mut ctx, m).await;
                done += ctx.unretained();
                if self.out.buf.len() >= FLUSH_BYTES {
                    // The handled messages' bytes are given back once their answers are
                    // written, or counted as output waiting for the peer: never both let go,
                    // so the budget bounds the two together.
                    if !self.flush().await {
                        return;
                    }
                    self.session.mem().release(std::mem::take(&mut done));
                }
            }

            // Gather what else is queued for sending, then write it all at once.
            for _ in 0..BATCH {
                match self.outbound.try_recv() {
                    Some(o) => Outgoing::push(&mut self.out, o),
                    None => break,
                }
            }
            if !self.out.errors.is_empty() {
                Box::pin(self.report_encode_errors()).await;
            }
            let written = self.flush().await;
            self.session.mem().release(done);
            if !written || self.failure.is_some() || self.session.is_closed() {
                return;
            }
        }
    }

    /// Serves the timers that are due; `false` when that ended the session.
    async fn tick(&mut self) -> bool {
        let now = Instant::now();
        if Timers::due(&mut self.timers.check, now) {
            // The check's period is the session timeout.
            if let Some((t, at)) = self.timers.check.as_mut() {
                let t = *t;
                let idle = self.session.idle_for();
                if idle >= t {
                    self.fail(Error::Timeout(t), true).await;
                    return false;
                }
                // Active since: check again when the quiet time would reach `t`.
                *at = deadline_after(now, (t - idle).max(Duration::from_millis(5)));
            }
        }
        if Timers::due(&mut self.timers.ping, now) {
            if let Err(e) = guarded(
                self.sink.ping(),
                self.cfg.write_timeout,
                self.force,
                &self.session,
            )
            .await
            {
                self.fail(e, false).await;
                return false;
            }
        }
        if Timers::due(&mut self.timers.cron, now) {
            let at = self.session.stats_ref().active_ms();
            self.listener
                .on_cron(&mut Ctx::new(&self.session, &mut self.out, at))
                .await;
        }
        true
    }

    /// Closes: stops the reader, refuses new sends, writes what was accepted (and, on a
    /// graceful close, answers what was already read and lets work in flight finish within the
    /// shutdown's grace period), then shuts the write side down.
    async fn close(&mut self) {
        self.session.mark_closed();
        self.session.token().cancel();
        self.outbound.close();
        self.inbound.close();
        if self.session.mem().is_gone() {
            // The peer hung up while the session was paused: nothing more can reach it.
            self.can_write = false;
            if self.failure.is_none() {
                Box::pin(self.fail(Error::PeerGone, false)).await;
            }
        }
        if !self.can_write {
            return;
        }
        while let Some(o) = self.outbound.try_recv() {
            Outgoing::push(&mut self.out, o);
        }
        self.out.errors.clear();
        let graceful = self.failure.is_none();
        let mut ok = self.flush_quiet().await;
        // Messages already read are still handled on a graceful close: a peer's requests that
        // arrived before the close get their answers.
        if ok && graceful {
            while let Some(m) = self.inbound.try_recv() {
                match m {
                    Inbound::Msg(m, at, len) => {
                        let mut ctx = Ctx::new(&self.session, &mut self.out, at).holding(len);
                        self.listener.on_message(&mut ctx, m).await;
                        let done = ctx.unretained();
                        self.session.mem().release(done);
                    }
                    Inbound::Err(_) => break,
                }
            }
            self.out.errors.clear();
            ok = self.flush_quiet().await;
        }
        // A graceful local close lets the listener finish its work in flight (and say goodbye)
        // until it is done or the shutdown's grace period ends.
        let force = self.force;
        let mut forced = pin!(force.cancelled());
        while ok && graceful {
            let at = self.session.stats_ref().active_ms();
            let done = poll_fn(|cx| {
                if force.is_cancelled() {
                    return Poll::Ready(true);
                }
                let mut ctx = Ctx::new(&self.session, &mut self.out, at);
                let progressed = self.listener.poll_work(&mut ctx, cx).is_ready();
                if self.listener.poll_close(&mut ctx, cx).is_ready() {
                    return Poll::Ready(true);
                }
                // Progress, or something to write (a goodbye such as RPC's GOAWAY must go out
                // now, not when the work in flight ends): write, then wait again.
                if progressed || !self.out.buf.is_empty() {
                    return Poll::Ready(false);
                }
                if forced.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                Poll::Pending
            })
            .await;
            self.out.errors.clear();
            ok = self.flush_quiet().await;
            if done {
                break;
            }
        }
        if ok {
            let (sink, why) = (&mut self.sink, self.failure.as_deref());
            let shutdown = async {
                sink.shutdown(why).await;
                Ok(())
            };
            let _ = guarded(shutdown, self.cfg.write_timeout, force, &self.session).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio_util::codec::BytesCodec;

    fn out() -> Out<BytesCodec> {
        Out {
            codec: BytesCodec::new(),
            buf: BytesMut::new(),
            bounds: Vec::new(),
            frames: 0,
            messages: false,
            mark: 0,
            max_message: usize::MAX,
            errors: Vec::new(),
        }
    }

    /// What a sink does once everything is written.
    fn written(o: &mut Out<BytesCodec>) {
        o.buf.clear();
        o.bounds.clear();
    }

    #[test]
    fn an_idle_handler_gives_back_a_large_write_buffer_and_regrows_it_at_once() {
        let mut o = out();
        // Small traffic: the buffer is kept while idle (no allocation per call).
        Outgoing::push(&mut o, Bytes::from_static(&[1; 31]));
        written(&mut o);
        o.idle();
        let small = o.buf.capacity();
        assert!((31..=KEEP_WHILE_IDLE).contains(&small));
        Outgoing::push(&mut o, Bytes::from_static(&[1; 31]));
        assert_eq!(o.buf.capacity(), small, "kept and reused");
        written(&mut o);
        o.idle();

        // A burst: given back when idle, but not while it still holds unwritten bytes.
        for _ in 0..100 {
            Outgoing::push(&mut o, Bytes::from(vec![2u8; 100]));
        }
        o.idle();
        assert_eq!(o.buf.len(), 10_000, "unwritten bytes are never dropped");
        written(&mut o);
        o.idle();
        assert_eq!(o.buf.capacity(), 0, "given back");
        // The next burst starts with room for the last one.
        Outgoing::push(&mut o, Bytes::from(vec![3u8; 100]));
        assert!(o.buf.capacity() >= 10_000);
        written(&mut o);
        o.idle();
        assert_eq!(o.buf.capacity(), 0, "still large: given back again");
        // Small traffic again: the size hint follows it down.
        Outgoing::push(&mut o, Bytes::from_static(&[4; 31]));
        written(&mut o);
        o.idle();
        Outgoing::push(&mut o, Bytes::from_static(&[4; 31]));
        written(&mut o);
        o.idle();
        assert!(o.buf.capacity() > 0 && o.buf.capacity() <= KEEP_WHILE_IDLE);
    }
}
