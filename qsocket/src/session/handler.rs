//! The handler half of a session ([`drive`]): one task per session that runs `on_open`, then
//! the listener's callbacks for every decoded message, its work in flight, the queued sends and
//! the timers, writing everything a pass produced at once; then closes (drains, answers what was
//! read on a graceful close, shuts the write side) and runs `on_close`.

use super::config::SessionConfig;
use super::framing::Framing;
use super::handle::Session;
use super::io::FrameSink;
use super::listener::{Ctx, EventListener};
use super::queue;
use super::reader::Inbound;
use super::timers::{deadline_after, Timers};
use super::writer::{Out, Outgoing, FLUSH_BYTES};
use crate::Error;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// At most this many messages are handled, or queued sends gathered, per loop pass before the
/// handler writes.
const BATCH: usize = 128;

/// After this many messages of a batch are handled, what they produced is written at once,
/// before the rest are handled: the peer starts on the first answers while this side works
/// on the others, instead of the two sides taking turns. One extra write per batch larger
/// than this; smaller batches are written once, as before.
const EARLY_WRITE: usize = 8;

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

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
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
    C: Framing<L::In, L::Out>,
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
        out: Out::new(codec, S::MESSAGES, sink.max_message()),
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
enum Ev<O> {
    Closed,
    /// Messages from the reader are queued (taken by the loop that handles them, so none is
    /// held across the handler's awaits).
    In,
    ReaderDone,
    Out(O),
    Tick,
    Work,
}

impl<L, C, S> Handler<'_, L, C, S>
where
    L: EventListener,
    C: Framing<L::In, L::Out>,
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
            // (Matched as a temporary: an event is not kept across the awaits below.)
            let tick = match poll_fn(|cx| {
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
                    match self.inbound.poll_ready(cx) {
                        Poll::Ready(true) => return Poll::Ready(Ev::In),
                        Poll::Ready(false) => return Poll::Ready(Ev::ReaderDone),
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
            .await
            {
                Ev::Closed | Ev::ReaderDone => return,
                Ev::Out(o) => {
                    Outgoing::push(&mut self.out, o);
                    false
                }
                Ev::In | Ev::Work => false,
                Ev::Tick => true,
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
            while handled < BATCH && self.listener.accepts_messages() {
                // The message is moved straight into its callback: no copy of it is kept in
                // this state while the callback runs.
                let (m, at, len) = match self.inbound.try_recv() {
                    None => break,
                    Some(Inbound::Msg(m, at, len)) => (m, at, len),
                    Some(Inbound::Err(e)) => {
                        Box::pin(self.fail(e, true)).await;
                        break;
                    }
                };
                handled += 1;
                let mut ctx = Ctx::new(&self.session, &mut self.out, at).holding(len);
                self.listener.on_message(&mut ctx, m).await;
                done += ctx.unretained();
                if self.out.buf.len() >= FLUSH_BYTES || handled == EARLY_WRITE {
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
