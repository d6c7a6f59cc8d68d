//! The [`EventListener`] trait (the user's or a protocol's side of a session) and the [`Ctx`]
//! its callbacks receive.

use super::handle::Session;
use super::writer::Outgoing;
use crate::Error;
use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Instant;

/// What a session does with its events: the user's code, one instance per session.
///
/// Every method has a default that does nothing, so a listener writes only what it needs
/// (usually [`on_message`](Self::on_message)). All callbacks of one session run in order on
/// that session's handler task, so `&mut self` needs no lock; different sessions run in
/// parallel on a multi-threaded runtime.
///
/// Callbacks receive a [`Ctx`], whose [`send`](Ctx::send) queues replies into the session's
/// next write without waiting. A callback that awaits holds up only its own session.
///
/// ```
/// use qsocket::session::{Ctx, EventListener, Session};
///
/// /// Replies to every line with its length; counts lines per session.
/// #[derive(Default)]
/// struct Counter { lines: u64 }
///
/// impl EventListener for Counter {
///     type In = String;
///     type Out = String;
///     async fn on_open(&mut self, session: &Session<String>) -> Result<(), qsocket::Error> {
///         if session.peer_addr().ip().is_loopback() { Ok(()) }
///         else { Err(qsocket::Error::refused("loopback only")) }
///     }
///     async fn on_message(&mut self, ctx: &mut Ctx<'_, String>, line: String) {
///         self.lines += 1;
///         ctx.send(line.len().to_string());
///     }
/// }
/// ```
pub trait EventListener: Send + 'static {
    /// Messages decoded from the peer (the codec's `Decoder::Item`).
    type In: Send + 'static;
    /// Messages sent to the peer (what the codec encodes).
    type Out: Send + 'static;

    /// The session is connected. Return an error to refuse it: it is then closed without
    /// `on_close`. Reading has already begun: messages that arrive meanwhile wait and are
    /// handed to `on_message` only after `on_open` returns `Ok` (a refused session's are
    /// dropped).
    fn on_open(
        &mut self,
        session: &Session<Self::Out>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = session;
        async { Ok(()) }
    }

    /// A message arrived.
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, Self::Out>,
        msg: Self::In,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, msg);
        async {}
    }

    /// The cron tick: every `cron_period`, for heartbeats and housekeeping.
    fn on_cron(&mut self, ctx: &mut Ctx<'_, Self::Out>) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }

    /// Something went wrong on this session. For errors from the peer or the connection the
    /// session closes right after; for a message that could not be encoded, only that message
    /// is dropped.
    fn on_error(
        &mut self,
        session: &Session<Self::Out>,
        err: &Error,
    ) -> impl Future<Output = ()> + Send {
        let _ = (session, err);
        async {}
    }

    /// The session closed. Runs exactly once per opened session; no callback follows it.
    fn on_close(&mut self, session: &Session<Self::Out>) -> impl Future<Output = ()> + Send {
        let _ = session;
        async {}
    }

    /// For protocol layers that keep work of their own in flight (e.g. an RPC server's
    /// concurrent requests): the handler polls this whenever it waits for events, like a
    /// future, so that work progresses on the session's own task without a spawn. Return
    /// `Ready(())` after making progress (whatever was sent through `ctx` is then written),
    /// `Pending` otherwise, having arranged for `cx` to be woken. Default: no such work.
    fn poll_work(&mut self, ctx: &mut Ctx<'_, Self::Out>, cx: &mut Context<'_>) -> Poll<()> {
        let _ = (ctx, cx);
        Poll::Pending
    }

    /// A graceful local close is under way ([`Session::close`], a server's shutdown): the
    /// handler keeps polling this, and [`poll_work`](Self::poll_work), writing whatever they
    /// send, until it returns `Ready` or the shutdown's grace period ends. A protocol can say
    /// goodbye here (once: what it sends is written at once, and it is polled again after
    /// each write) and let its work in flight finish. No messages are read any more.
    /// Default: `Ready` at once.
    fn poll_close(&mut self, ctx: &mut Ctx<'_, Self::Out>, cx: &mut Context<'_>) -> Poll<()> {
        let _ = (ctx, cx);
        Poll::Ready(())
    }

    /// Whether the listener takes more messages now. While it returns `false` the handler
    /// stops handing over messages and, once the queue between them fills, the reader stops
    /// reading: backpressure down to the peer. Checked again after `poll_work` progresses.
    fn accepts_messages(&self) -> bool {
        true
    }
}

/// What a listener callback can do with its session while it runs.
pub struct Ctx<'a, O> {
    session: &'a Session<O>,
    out: &'a mut dyn Outgoing<O>,
    received: u64,
    /// Budget bytes the message being handled holds; 0 once retained.
    holds: usize,
}

impl<'a, O> Ctx<'a, O> {
    pub(crate) fn new(
        session: &'a Session<O>,
        out: &'a mut dyn Outgoing<O>,
        received: u64,
    ) -> Self {
        Ctx {
            session,
            out,
            received,
            holds: 0,
        }
    }

    /// For the message being handled, which holds `len` bytes of the session's budget.
    pub(crate) fn holding(mut self, len: usize) -> Self {
        self.holds = len;
        self
    }

    /// The budget bytes of the message that were not retained (to give back now).
    pub(crate) fn unretained(&self) -> usize {
        self.holds
    }

    /// Keeps the message being handled counted against the session's byte budget (see
    /// [`SessionConfig::session_budget`](super::SessionConfig::session_budget)) until the
    /// returned guard is dropped, instead of only until this callback returns.
    ///
    /// For listeners that keep a message, or data sharing its memory, after `on_message`
    /// returns — an RPC server's requests in flight, for one: the session then stops reading
    /// when what it keeps reaches the budget, and the server's shared budget counts it too.
    /// Outside `on_message`, or called twice, the guard holds nothing ([`Retained::bytes`] is
    /// 0). The bytes are given back when the guard drops, or when the session ends, whichever
    /// comes first (a guard dropped after its session ended gives back nothing more).
    pub fn retain(&mut self) -> Retained<O> {
        Retained {
            session: self.session.clone(),
            bytes: std::mem::take(&mut self.holds),
        }
    }

    /// Bytes waiting in the session's write buffer: everything sent through this or an earlier
    /// `Ctx` of the session's current pass and not yet written. The handler writes them once
    /// the callback returns (at the end of its pass, or right after this message once 64 KiB
    /// are buffered), so a listener producing a lot of output at once can stop at a threshold
    /// of its own and go on at its next [`poll_work`](EventListener::poll_work).
    pub fn write_buffered(&self) -> usize {
        self.out.buffered()
    }

    /// Appends one whole frame that `write` puts straight into the session's write buffer —
    /// for protocol layers that encode in place instead of building a message first (no
    /// intermediate buffer, no copy).
    ///
    /// `write` is called once, at once, with the write buffer; it must only **append**, and
    /// what it appends must already be in the wire format of the session's
    /// [`Framing`](super::Framing) (a length prefix included, for a length-delimited one): the
    /// framing's encoder is not called. What it appends is one frame, with the same guarantees
    /// as [`send`](Self::send): it never waits, goes out in order with everything else sent on
    /// this session, and is written as soon as the callback returns. Appending nothing sends
    /// nothing. Over UDP and WebSocket the frame travels as one datagram or message; one
    /// larger than the transport carries ([`MAX_DATAGRAM`](super::MAX_DATAGRAM) for UDP, the
    /// session's `max_frame_len` for WebSocket) is dropped and reported to
    /// [`on_error`](EventListener::on_error) as [`Error::FrameTooLarge`], and the session goes
    /// on. Should `write` remove bytes that were there before it (frames sent earlier), those
    /// frames are damaged: the session reports an [`Error::Encode`] and writes what is left.
    pub fn send_raw(&mut self, write: &mut dyn FnMut(&mut bytes::BytesMut)) {
        self.out.push_raw(write);
    }

    /// When the message being handled was read from the network; in the other callbacks
    /// (`on_cron`, `poll_work`, `poll_close`), when the session last read anything.
    ///
    /// It is taken once per read (all frames of one read share it), kept at millisecond
    /// precision: never later than the read, at most a millisecond earlier. Deadlines that
    /// travel as "time remaining" should count from here (see
    /// [`deadline_after`](super::deadline_after)), so time a message spent queued in this
    /// process — behind the session's other messages, or while its handler was busy — is not
    /// lost.
    pub fn received_at(&self) -> Instant {
        super::handle::instant_of(self.received)
    }

    /// The session this callback runs for.
    pub fn session(&self) -> &Session<O> {
        self.session
    }

    /// Encodes a message into the session's next write. Never waits: the handler writes it
    /// (with everything else queued) as soon as the callback returns. A message the codec
    /// cannot encode is dropped and reported to `on_error`.
    pub fn send(&mut self, msg: O) {
        self.out.push(msg);
    }

    /// Closes the session after this callback; what was sent so far is still written.
    pub fn close(&self) {
        self.session.close();
    }
}

/// Budget bytes of a message kept after its callback returned (see [`Ctx::retain`]); given
/// back when dropped.
#[must_use = "the bytes are given back as soon as the guard is dropped"]
pub struct Retained<O> {
    session: Session<O>,
    bytes: usize,
}

impl<O> Retained<O> {
    /// The bytes it keeps counted.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl<O> Drop for Retained<O> {
    fn drop(&mut self) {
        self.session.mem().release(self.bytes);
    }
}

impl<O> fmt::Debug for Retained<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retained")
            .field("session", &self.session.id())
            .field("bytes", &self.bytes)
            .finish()
    }
}
