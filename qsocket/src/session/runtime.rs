//! The two tasks of a session: the reader (read + decode every frame a read brought in) and the
//! handler (listener callbacks, cron tick, timeouts, and one write for everything queued).

use super::config::SessionConfig;
use super::handle::Session;
use super::io::{FrameSink, ReadSource};
use super::listener::{Ctx, EventListener};
use super::queue;
use super::Codec;
use crate::Error;
use bytes::BytesMut;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

/// What the reader hands the handler.
pub(crate) enum Inbound<T> {
    /// A decoded message and when it was read (milliseconds of the session clock).
    Msg(T, u64),
    Err(Error),
}

/// At most this many messages are handled, or queued sends gathered, per loop pass before the
/// handler writes; it also writes once this many bytes are buffered.
const BATCH: usize = 128;
const FLUSH_BYTES: usize = 64 * 1024;
const MIN_READ: usize = 512;
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

/// Decodes every complete frame in `buf` and hands each to the handler, waiting for room in its
/// queue. With `eof`, the buffer is a whole message (a datagram, a WebSocket message, the rest
/// of a stream at EOF): the codec's `decode_eof` also gets what is left. Returns `false` when
/// the session should stop reading (decode error, handler gone).
pub(crate) async fn decode_all<D, O>(
    codec: &mut D,
    buf: &mut BytesMut,
    tx: &queue::Sender<Inbound<D::Item>>,
    session: &Session<O>,
    eof: bool,
    read_at: u64,
) -> bool
where
    D: Decoder<Error: Into<crate::error::BoxError> + Send>,
{
    let mut frames = 0u64;
    let ok = loop {
        // Decode straight into the handler's queue, one lock for all the frames of a read.
        let mut failure = None;
        let mut next = || {
            let decoded = if !eof {
                codec.decode(buf)
            } else if buf.is_empty() {
                Ok(None)
            } else {
                codec.decode_eof(buf)
            };
            match decoded {
                Ok(Some(item)) => {
                    frames += 1;
                    Some(Inbound::Msg(item, read_at))
                }
                Ok(None) => None,
                Err(e) => {
                    failure = Some(Error::Decode(e.into()));
                    None
                }
            }
        };
        match tx.push_from(&mut next) {
            Err(()) => break false,
            Ok(false) => tx.wait_for_room().await,
            Ok(true) => match failure {
                None => break true,
                Some(e) => {
                    let _ = tx.send(Inbound::Err(e)).await;
                    break false;
                }
            },
        }
    };
    session.stats_ref().add_in(frames, 0);
    ok
}

/// The reader task of a byte-stream session (TCP, TLS).
pub(crate) async fn stream_reader<R, D, O>(
    mut src: R,
    mut codec: D,
    tx: queue::Sender<Inbound<D::Item>>,
    session: Session<O>,
    limits: ReadLimits,
) where
    R: ReadSource,
    D: Decoder<Error: Into<crate::error::BoxError> + Send> + Send,
    D::Item: Send,
    O: Send + 'static,
{
    let token = session.token().clone();
    let mut buf = BytesMut::new();
    let mut want = limits.read_buffer;
    // When the partial frame now in `buf` started arriving.
    let mut partial_since: Option<Instant> = None;
    loop {
        // Only a partial frame is timed (from its first byte, however it trickles in): a quiet
        // connection is not an error here.
        if buf.is_empty() {
            partial_since = None;
        } else if partial_since.is_none() {
            partial_since = Some(Instant::now());
        }
        let partial_timeout = limits
            .read_timeout
            .zip(partial_since)
            .map(|(t, since)| (t, deadline_after(since, t)));
        let before = buf.len();
        let read = src.read_into(&mut buf, want);
        let result = match partial_timeout {
            None => tokio::select! {
                biased;
                _ = token.cancelled() => return,
                r = read => r.map_err(Error::from),
            },
            // Boxed: rare, and its timer would otherwise enlarge every idle reader.
            Some((t, at)) => tokio::select! {
                biased;
                _ = token.cancelled() => return,
                r = Box::pin(tokio::time::timeout_at(at.into(), read)) => match r {
                    Ok(r) => r.map_err(Error::from),
                    Err(_) => Err(Error::ReadTimeout(t)),
                },
            },
        };
        match result {
            Ok(0) => {
                // EOF: hand on every frame already read (a last frame is never lost), then
                // report bytes that do not form a frame.
                let at = session.stats_ref().active_ms();
                decode_all(&mut codec, &mut buf, &tx, &session, true, at).await;
                return;
            }
            Ok(n) => {
                let stats = session.stats_ref();
                stats.add_in(0, n as u64);
                let at = stats.touch();
                // Adapt the next read size to the traffic (like netty's adaptive allocator).
                if before + n == buf.capacity() {
                    want = (want * 2).min(MAX_READ);
                } else if n < want / 4 {
                    want = (want / 2).max(MIN_READ);
                }
                if !decode_all(&mut codec, &mut buf, &tx, &session, false, at).await {
                    return;
                }
                if buf.len() > limits.max_frame_len {
                    let err = Error::FrameTooLarge {
                        len: buf.len(),
                        max: limits.max_frame_len,
                    };
                    let _ = tx.send(Inbound::Err(err)).await;
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Inbound::Err(e)).await;
                return;
            }
        }
    }
}

/// Writes what the handler buffered: polled once in place (the common case: the socket takes
/// it at once, no timer is armed); only if that is pending does the write get a timeout and
/// become interruptible by a forced shutdown.
async fn write_out<S: FrameSink>(
    sink: &mut S,
    buf: &mut BytesMut,
    bounds: &mut Vec<usize>,
    write_timeout: Option<Duration>,
    force: &CancellationToken,
) -> Result<(), Error> {
    guarded(sink.write(buf, bounds), write_timeout, force).await
}

/// Runs `fut`, first polling it once without any timer; if it is pending, bounds it by
/// `limit` and by `force`.
async fn guarded<F: Future<Output = Result<(), Error>>>(
    fut: F,
    limit: Option<Duration>,
    force: &CancellationToken,
) -> Result<(), Error> {
    let mut fut = pin!(fut);
    let first = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    if let Poll::Ready(r) = first {
        return r;
    }
    // The slow path (timer + forced-shutdown watch) is boxed: it is rare, and keeping its
    // state inline would make every idle session's handler larger.
    Box::pin(wait_bounded(fut, limit, force)).await
}

async fn wait_bounded<F: Future<Output = Result<(), Error>>>(
    mut fut: Pin<&mut F>,
    limit: Option<Duration>,
    force: &CancellationToken,
) -> Result<(), Error> {
    let timed = async {
        match limit {
            Some(t) => tokio::time::timeout(t, fut.as_mut())
                .await
                .unwrap_or(Err(Error::WriteTimeout(t))),
            None => fut.as_mut().await,
        }
    };
    tokio::select! {
        biased;
        _ = force.cancelled() => Err(Error::SessionClosed),
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
}

/// The handler's outgoing side: the codec, the write buffer and the frame bounds.
struct Out<C> {
    codec: C,
    buf: BytesMut,
    bounds: Vec<usize>,
    frames: u64,
    /// Whether each frame travels as its own message, and the largest one the sink carries.
    messages: bool,
    max_message: usize,
    /// Messages that could not be encoded (they are dropped; the rest go out).
    errors: Vec<Error>,
}

impl<C: Send> Out<C> {
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
    }
}

impl<C, O> Outgoing<O> for Out<C>
where
    C: Encoder<O, Error: Into<crate::error::BoxError>> + Send,
{
    fn push(&mut self, msg: O) {
        let start = self.buf.len();
        if let Err(e) = self.codec.encode(msg, &mut self.buf) {
            self.buf.truncate(start);
            self.errors.push(Error::Encode(e.into()));
            return;
        }
        self.end_frame(start);
    }

    fn push_raw(&mut self, write: &mut dyn FnMut(&mut BytesMut)) {
        let start = self.buf.len();
        write(&mut self.buf);
        if self.buf.len() > start {
            self.end_frame(start);
        }
    }
}

impl<C> Out<C> {
    async fn flush<S: FrameSink, O>(
        &mut self,
        sink: &mut S,
        session: &Session<O>,
        cfg: &SessionConfig,
        force: &CancellationToken,
    ) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let bytes = self.buf.len() as u64;
        let frames = std::mem::take(&mut self.frames);
        write_out(
            sink,
            &mut self.buf,
            &mut self.bounds,
            cfg.write_timeout,
            force,
        )
        .await?;
        session.stats_ref().add_out(frames, bytes);
        if self.buf.capacity() > 4 * FLUSH_BYTES {
            // Do not keep a buffer that one burst made large.
            self.buf = BytesMut::new();
        }
        Ok(())
    }
}

/// Timers of one session: cron, WebSocket ping, timeout check, all served by one `Sleep`.
struct Timers {
    cron: Option<(Duration, Instant)>,
    ping: Option<(Duration, Instant)>,
    check: Option<(Duration, Instant)>,
    timeout: Option<Duration>,
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
            check: timeout
                .map(|t| (t / 4).clamp(Duration::from_millis(5), Duration::from_secs(1)))
                .map(every),
            timeout,
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

/// Runs the handler of one session until it closes: `on_open`, then the reader is spawned, then
/// messages, sends, ticks and writes until the session closes; then queued writes are drained,
/// the write side shut down, and `on_close` runs once.
///
/// Returns `Err` only when `on_open` refused the session.
pub(crate) async fn drive<L, C, S, R, RF>(
    parts: Parts<L, C>,
    mut sink: S,
    reader: Option<RF>,
    cfg: &SessionConfig,
    force: &CancellationToken,
    on_live: impl FnOnce(&Session<L::Out>),
) -> Result<(), Error>
where
    L: EventListener,
    C: Codec<L::In, L::Out>,
    S: FrameSink,
    R: Future<Output = ()> + Send + 'static,
    // The reader is made only when it is spawned, so its (large) state is not kept in the
    // handler's.
    RF: FnOnce() -> R,
{
    let Parts {
        mut listener,
        codec,
        session,
        mut outbound,
        mut inbound,
    } = parts;
    if let Err(e) = listener.on_open(&session).await {
        tracing::debug!(session = session.id(), peer = %session.peer_addr(), error = %e, "session refused");
        session.close();
        sink.shutdown().await;
        return Err(e);
    }
    // Aborts the reader however the handler ends, a panic in a listener callback included.
    let reader = AbortOnDrop(reader.map(|make| tokio::spawn(make())));
    on_live(&session);
    tracing::trace!(session = session.id(), peer = %session.peer_addr(), transport = %session.transport(), "session open");

    let mut out = Out {
        codec,
        buf: BytesMut::new(),
        bounds: Vec::new(),
        frames: 0,
        messages: S::MESSAGES,
        max_message: sink.max_message(),
        errors: Vec::new(),
    };
    let mut timers = Timers::new(cfg, session.transport().is_ws());
    let token = session.token().clone();
    let mut cancelled = pin!(token.cancelled());
    let mut forced = pin!(force.cancelled());
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut sleep = pin!(tokio::time::sleep_until(
        timers.next().unwrap_or(far).into()
    ));
    let has_timers = timers.next().is_some();

    enum Ev<I, O> {
        Closed,
        In(Inbound<I>),
        ReaderDone,
        Out(O),
        Tick,
        Work,
    }

    // `None`: a graceful end (closed locally or by the peer); `Some`: an error ended it.
    let mut failure: Option<Error> = None;
    let mut can_write = true;
    'run: loop {
        let ev = poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ev::Closed);
            }
            if has_timers && sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ev::Tick);
            }
            let at = session.stats_ref().active_ms();
            if listener
                .poll_work(&mut Ctx::new(&session, &mut out, at), cx)
                .is_ready()
            {
                return Poll::Ready(Ev::Work);
            }
            if listener.accepts_messages() {
                match inbound.poll_recv(cx) {
                    Poll::Ready(Some(m)) => return Poll::Ready(Ev::In(m)),
                    Poll::Ready(None) => return Poll::Ready(Ev::ReaderDone),
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(Some(o)) = outbound.poll_recv(cx) {
                return Poll::Ready(Ev::Out(o));
            }
            Poll::Pending
        })
        .await;

        let mut first = match ev {
            Ev::Closed => break 'run,
            Ev::ReaderDone => break 'run,
            Ev::Out(o) => {
                Outgoing::push(&mut out, o);
                None
            }
            Ev::In(m) => Some(m),
            Ev::Work => None,
            Ev::Tick => {
                let now = Instant::now();
                if Timers::due(&mut timers.check, now) {
                    if let Some(t) = timers.timeout.filter(|t| session.idle_for() > *t) {
                        let e = Error::Timeout(t);
                        listener.on_error(&session, &e).await;
                        failure = Some(e);
                        break 'run;
                    }
                }
                if Timers::due(&mut timers.ping, now) {
                    if let Err(e) = guarded(sink.ping(), cfg.write_timeout, force).await {
                        listener.on_error(&session, &e).await;
                        failure = Some(e);
                        can_write = false;
                        break 'run;
                    }
                }
                if Timers::due(&mut timers.cron, now) {
                    let at = session.stats_ref().active_ms();
                    listener
                        .on_cron(&mut Ctx::new(&session, &mut out, at))
                        .await;
                }
                sleep.as_mut().reset(timers.next().unwrap_or(far).into());
                None
            }
        };

        // Handle the batch of decoded messages that is ready, encoding replies as they come.
        let mut handled = 0;
        while handled < BATCH {
            let msg = match first.take() {
                Some(m) => m,
                None if !listener.accepts_messages() => break,
                None => match inbound.try_recv() {
                    Some(m) => m,
                    None => break,
                },
            };
            handled += 1;
            match msg {
                Inbound::Msg(m, at) => {
                    listener
                        .on_message(&mut Ctx::new(&session, &mut out, at), m)
                        .await;
                }
                Inbound::Err(e) => {
                    listener.on_error(&session, &e).await;
                    failure = Some(e);
                    break;
                }
            }
            {
                if out.buf.len() >= FLUSH_BYTES {
                    if let Err(e) = out.flush(&mut sink, &session, cfg, force).await {
                        listener.on_error(&session, &e).await;
                        failure = Some(e);
                        can_write = false;
                        break 'run;
                    }
                }
            }
        }

        // Gather what else is queued for sending, then write it all at once.
        for _ in 0..BATCH {
            match outbound.try_recv() {
                Some(o) => Outgoing::push(&mut out, o),
                None => break,
            }
        }
        let errors = std::mem::take(&mut out.errors);
        for e in errors {
            listener.on_error(&session, &e).await;
        }
        if let Err(e) = out.flush(&mut sink, &session, cfg, force).await {
            listener.on_error(&session, &e).await;
            failure = Some(e);
            can_write = false;
            break 'run;
        }
        if failure.is_some() {
            break 'run;
        }
        if session.is_closed() {
            break 'run;
        }
    }

    // Closing: stop the reader, refuse new sends, write what was accepted, shut down, on_close.
    session.mark_closed();
    token.cancel();
    outbound.close();
    inbound.close();
    if can_write {
        while let Some(o) = outbound.try_recv() {
            Outgoing::push(&mut out, o);
        }
        out.errors.clear();
        let mut ok = out.flush(&mut sink, &session, cfg, force).await.is_ok();
        // A graceful local close lets the listener finish its work in flight (and say goodbye)
        // until it is done or the shutdown's grace period ends.
        // Messages already read are still handled on a graceful close: a peer's requests that
        // arrived before the close get their answers.
        if ok && failure.is_none() {
            while let Some(m) = inbound.try_recv() {
                match m {
                    Inbound::Msg(m, at) => {
                        let mut ctx = Ctx::new(&session, &mut out, at);
                        listener.on_message(&mut ctx, m).await;
                    }
                    Inbound::Err(_) => break,
                }
            }
            out.errors.clear();
            ok = out.flush(&mut sink, &session, cfg, force).await.is_ok();
        }
        while ok && failure.is_none() {
            let at = session.stats_ref().active_ms();
            let done = poll_fn(|cx| {
                if force.is_cancelled() {
                    return Poll::Ready(true);
                }
                let mut ctx = Ctx::new(&session, &mut out, at);
                let progressed = listener.poll_work(&mut ctx, cx).is_ready();
                if listener.poll_close(&mut ctx, cx).is_ready() {
                    return Poll::Ready(true);
                }
                if progressed {
                    return Poll::Ready(false);
                }
                if forced.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                Poll::Pending
            })
            .await;
            out.errors.clear();
            ok = out.flush(&mut sink, &session, cfg, force).await.is_ok();
            if done {
                break;
            }
        }
        if ok {
            let _ = guarded(
                async {
                    sink.shutdown().await;
                    Ok(())
                },
                cfg.write_timeout,
                force,
            )
            .await;
        }
    }
    drop(reader);
    match &failure {
        Some(e) => {
            tracing::debug!(session = session.id(), peer = %session.peer_addr(), error = %e, "session closed")
        }
        None => {
            tracing::trace!(session = session.id(), peer = %session.peer_addr(), "session closed")
        }
    }
    listener.on_close(&session).await;
    Ok(())
}
