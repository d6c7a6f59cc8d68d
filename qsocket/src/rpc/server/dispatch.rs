//! The session listener of an RPC server: it takes each request frame, checks it, finds its
//! handler, runs the server layers, and polls the call once in place on the session's own
//! task; only a call still pending is parked in the session's set of calls in flight (under a
//! per-session limit, beyond which the session stops reading). Responses are encoded straight
//! into the session's write buffer.

use super::handler::{panic_status, Handler, RequestHead, Running};
use super::layer::{tell, Admit, AdmitFuture, ServerLayer};
use super::router::{FxMap, Method, Router};
use super::RpcServerConfig;
use crate::rpc::codec::Codec;
use crate::rpc::context::{with_deadline, CallContext};
use crate::rpc::frame::{control_frame, encode_frame, kind, Frame, Header, Limits, FLAG_REPLY};
use crate::rpc::Status;
use crate::session::MAX_DATAGRAM;
use crate::session::{Ctx, EventListener, Retained, Session, Transport};
use crate::Error;
use bytes::{Bytes, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What every session of one server shares.
pub(super) struct Shared<L> {
    pub(super) router: Router,
    pub(super) cfg: RpcServerConfig,
    pub(super) layer: L,
}

/// Where a dispatched call is.
enum Stage<L> {
    /// A layer's asynchronous admission check is running; the handler starts when it admits
    /// (boxed: rare, and it would make every call's state larger).
    Admitting(Box<Admitting<L>>),
    /// The handler is running (or has finished: its result is inside).
    Running(Pin<Box<dyn Running>>),
    /// Ended before a handler ran, or already taken.
    Failed(Option<Status>),
}

/// A call waiting for an asynchronous admission check.
struct Admitting<L> {
    check: AdmitFuture,
    handler: Arc<dyn Handler>,
    head: RequestHead,
    body: Bytes,
    shared: Arc<Shared<L>>,
}

/// A dispatched call: polled once in place, parked if still pending.
struct InFlight<L: ServerLayer> {
    id: u64,
    codec: u8,
    oneway: bool,
    deadline: Option<Instant>,
    stage: Stage<L>,
    /// For layers that observe outcomes: the context the handler got (`None` for `()`, or
    /// until an admission check ends).
    observe: Option<Observe<L>>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Its frame's bytes, counted against the session's budget until it ends.
    _held: Option<Retained<Bytes>>,
}

/// How a call ended.
enum Outcome {
    /// The handler finished: its response can be written.
    Done(Pin<Box<dyn Running>>),
    /// The call failed before a response existed (refused, undecodable, panic, deadline).
    Failed(Status),
}

/// A finished call, for the listener to answer.
struct Ended<L: ServerLayer> {
    id: u64,
    codec: u8,
    oneway: bool,
    outcome: Outcome,
    observe: Option<Observe<L>>,
}

/// The layers' view of an admitted call until its outcome: tells them the outcome once, or,
/// for a parked call dropped first (a `cancel` frame, its session closing), `cancelled`.
struct Observe<L: ServerLayer> {
    /// `None` once told.
    call: Option<CallContext>,
    /// The layers, to tell them if the call is dropped untold: set only when the call is
    /// parked (a call answered in its first poll is always told, and costs no `Arc` clone).
    shared: Option<Arc<Shared<L>>>,
}

impl<L: ServerLayer> Observe<L> {
    fn tell(&mut self, layer: &L, status: Result<(), &Status>) {
        if let Some(call) = self.call.take() {
            tell(layer, &call, status);
        }
    }
}

impl<L: ServerLayer> Drop for Observe<L> {
    fn drop(&mut self) {
        if let (Some(call), Some(shared)) = (self.call.take(), self.shared.take()) {
            let st = Status::cancelled(
                "the call was cancelled, or its session closed, while the handler ran",
            );
            tell(&shared.layer, &call, Err(&st));
        }
    }
}

impl<L: ServerLayer> InFlight<L> {
    /// The end of a call, ready or not.
    fn end(&mut self, outcome: Outcome) -> Poll<Ended<L>> {
        Poll::Ready(Ended {
            id: self.id,
            codec: self.codec,
            oneway: self.oneway,
            outcome,
            observe: self.observe.take(),
        })
    }
}

/// Starts `handler` for an admitted call; keeps the context for observing layers (`shared`:
/// the layers, if the call is parked already).
fn run_handler<L: ServerLayer>(
    shared: Option<Arc<Shared<L>>>,
    handler: &dyn Handler,
    head: RequestHead,
    body: Bytes,
    call: CallContext,
    observe: &mut Option<Observe<L>>,
) -> Stage<L> {
    if L::OBSERVES {
        *observe = Some(Observe {
            call: Some(call.clone()),
            shared,
        });
    }
    // A handler may panic before it returns its future, too.
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(head, body, call))) {
        Ok(Ok(running)) => Stage::Running(running),
        Ok(Err(st)) => Stage::Failed(Some(st)),
        Err(panic) => Stage::Failed(Some(panic_status(panic))),
    }
}

/// Polls a running handler with the call's deadline as the inherited one; a panic becomes
/// an `internal` status.
fn poll_running(
    call: &mut Pin<Box<dyn Running>>,
    deadline: Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Status>> {
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        with_deadline(deadline, || call.as_mut().poll_call(cx))
    }));
    match polled {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
        Err(panic) => Poll::Ready(Err(panic_status(panic))),
    }
}

impl<L: ServerLayer> Future for InFlight<L> {
    type Output = Ended<L>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended<L>> {
        let this = &mut *self;
        if let Some(t) = this.timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                let st = Status::deadline_exceeded("deadline exceeded while the handler ran");
                return this.end(Outcome::Failed(st));
            }
        }
        let deadline = this.deadline;
        loop {
            match &mut this.stage {
                Stage::Admitting(a) => {
                    let Admitting {
                        check,
                        handler,
                        head,
                        body,
                        shared,
                    } = &mut **a;
                    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        with_deadline(deadline, || check.as_mut().poll(cx))
                    }));
                    let next = match polled {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok(call))) => run_handler(
                            Some(shared.clone()),
                            &**handler,
                            *head,
                            std::mem::take(body),
                            call,
                            &mut this.observe,
                        ),
                        Ok(Poll::Ready(Err(st))) => Stage::Failed(Some(st)),
                        Err(panic) => Stage::Failed(Some(panic_status(panic))),
                    };
                    this.stage = next;
                }
                Stage::Running(call) => {
                    let outcome = match poll_running(call, deadline, cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {
                            match std::mem::replace(&mut this.stage, Stage::Failed(None)) {
                                Stage::Running(call) => Outcome::Done(call),
                                _ => Outcome::Failed(Status::internal("call lost")),
                            }
                        }
                        Poll::Ready(Err(st)) => Outcome::Failed(st),
                    };
                    return this.end(outcome);
                }
                Stage::Failed(st) => {
                    let st = st
                        .take()
                        .unwrap_or_else(|| Status::internal("call polled after it ended"));
                    return this.end(Outcome::Failed(st));
                }
            }
        }
    }
}

/// Appends a response frame carrying an error status; the body is the UTF-8 message. An error
/// response carries no metadata.
fn write_error(buf: &mut BytesMut, id: u64, codec: u8, st: &Status) {
    let h = Header {
        kind: kind::RESPONSE,
        codec,
        id,
        status: st.code() as u16,
        ..Header::default()
    };
    let msg = st.message().as_bytes();
    let msg = &msg[..msg.len().min(16 * 1024)];
    let limits = Limits::default();
    let r = encode_frame(buf, &h, &limits, |b| {
        b.extend_from_slice(msg);
        Ok::<_, ()>(())
    });
    debug_assert!(r.is_ok());
}

/// A session's parked requests, and how to cancel each (by request id).
struct Parked<L: ServerLayer> {
    calls: FuturesUnordered<Abortable<InFlight<L>>>,
    aborts: FxMap<u64, AbortHandle>,
}

impl<L: ServerLayer> Default for Parked<L> {
    fn default() -> Self {
        Parked {
            calls: FuturesUnordered::new(),
            aborts: FxMap::default(),
        }
    }
}

/// The session listener of an RPC server.
pub(super) struct RpcServerListener<L: ServerLayer> {
    shared: Arc<Shared<L>>,
    /// The method called last: most sessions call a few methods again and again, and
    /// comparing two short names is cheaper than hashing them.
    last: Option<Arc<Method>>,
    /// The clock read for the batch read at `clock.0` (one read per batch, not per request).
    clock: Option<(Instant, Instant)>,
    /// Requests parked because they did not finish when first polled. Made on the first one
    /// and kept for the session's life (so a session that parks calls now and then does not
    /// make it again each time); a session that never parked one holds just this pointer.
    parked: Option<Box<Parked<L>>>,
    limit: usize,
    goaway_sent: bool,
    udp: bool,
}

impl<L: ServerLayer> RpcServerListener<L> {
    pub(super) fn new(shared: Arc<Shared<L>>) -> Self {
        let limit = shared.cfg.max_in_flight;
        RpcServerListener {
            shared,
            last: None,
            clock: None,
            parked: None,
            limit,
            goaway_sent: false,
            udp: false,
        }
    }

    /// How many requests are parked.
    fn parked(&self) -> usize {
        self.parked.as_ref().map_or(0, |p| p.calls.len())
    }

    /// Writes a call's answer straight into the session's write buffer: the response of a
    /// finished call, or its error; over UDP a response too large for a datagram becomes a
    /// `resource_exhausted` answer instead of being dropped. Gives the error the caller was
    /// answered with, if any.
    fn reply(
        udp: bool,
        ctx: &mut Ctx<'_, Bytes>,
        id: u64,
        codec: u8,
        outcome: Outcome,
    ) -> Option<Status> {
        match outcome {
            Outcome::Done(mut call) => {
                let mut error = None;
                ctx.send_raw(&mut |buf: &mut BytesMut| {
                    let start = buf.len();
                    error = match call.as_mut().write_response(buf) {
                        Ok(()) if udp && buf.len() - start > MAX_DATAGRAM => {
                            Some(Status::resource_exhausted(format!(
                                "response of {} bytes does not fit in a UDP datagram",
                                buf.len() - start
                            )))
                        }
                        Ok(()) => None,
                        Err(st) => Some(st),
                    };
                    if let Some(st) = &error {
                        buf.truncate(start);
                        write_error(buf, id, codec, st);
                    }
                });
                error
            }
            Outcome::Failed(st) => {
                ctx.send_raw(&mut |buf: &mut BytesMut| {
                    write_error(buf, id, codec, &st);
                });
                Some(st)
            }
        }
    }

    /// Answers a finished call (unless it is oneway) and tells the observing layers.
    fn finish(&mut self, ctx: &mut Ctx<'_, Bytes>, ended: Ended<L>) {
        let Ended {
            id,
            codec,
            oneway,
            outcome,
            observe,
        } = ended;
        self.answer(ctx, id, codec, oneway, outcome, observe);
    }

    /// [`finish`](Self::finish) in pieces (no [`Ended`] is made for a call that ends in its
    /// first poll).
    fn answer(
        &mut self,
        ctx: &mut Ctx<'_, Bytes>,
        id: u64,
        codec: u8,
        oneway: bool,
        outcome: Outcome,
        observe: Option<Observe<L>>,
    ) {
        let layer = &self.shared.layer;
        if oneway {
            if let Some(mut o) = observe {
                match &outcome {
                    Outcome::Done(call) => o.tell(layer, call.outcome()),
                    Outcome::Failed(st) => o.tell(layer, Err(st)),
                }
            }
            return;
        }
        let error = Self::reply(self.udp, ctx, id, codec, outcome);
        if let Some(mut o) = observe {
            o.tell(layer, error.as_ref().map_or(Ok(()), Err));
        }
    }

    /// The method a request calls: the one called last if the names match, else the router's.
    fn find<'s>(
        last: &'s mut Option<Arc<Method>>,
        router: &'s Router,
        frame: &Frame,
    ) -> Result<&'s Method, Status> {
        if !matches!(last, Some(m) if m.is(frame.service(), frame.method())) {
            *last = Some(router.find(frame.service(), frame.method())?.clone());
        }
        last.as_deref()
            .ok_or_else(|| Status::internal("method lookup lost its entry"))
    }

    /// Now, read once per batch of requests (a batch's requests were read at the same time).
    fn now(&mut self, received: Instant) -> Instant {
        match self.clock {
            Some((at, now)) if at == received => now,
            _ => {
                let now = Instant::now();
                self.clock = Some((received, now));
                now
            }
        }
    }

    /// Checks a request and passes it through the layers: the call to poll, or the status
    /// that refuses it (no layer has admitted it then, so none is told).
    fn dispatch(
        &mut self,
        ctx: &Ctx<'_, Bytes>,
        frame: &Frame,
        deadline: Option<Instant>,
    ) -> Result<(Stage<L>, Option<Observe<L>>), Status> {
        let codec = Codec::from_id(frame.codec)
            .ok_or_else(|| Status::unimplemented(format!("unknown codec id {}", frame.codec)))?;
        if !frame.metadata().is_valid() {
            return Err(Status::invalid_argument(
                "malformed metadata: an entry runs past the end of the metadata block",
            ));
        }
        if let Some(d) = deadline {
            if d <= self.now(ctx.received_at()) {
                return Err(Status::deadline_exceeded(
                    "deadline passed before the request was dispatched",
                ));
            }
        }
        // For layers that observe outcomes, the batch's clock reading (one per batch).
        let observed_at = L::OBSERVES.then(|| self.now(ctx.received_at()));
        let method = Self::find(&mut self.last, &self.shared.router, frame)?;
        method.check_codec(codec)?;
        let handler = &method.handler;
        let mut call = CallContext::new(frame, ctx.session(), deadline);
        if let Some(at) = observed_at {
            call.set_started(at);
        }
        let layer = &self.shared.layer;
        let admit = std::panic::catch_unwind(AssertUnwindSafe(|| layer.on_request(&mut call)))
            .unwrap_or_else(|panic| Admit::Refuse(panic_status(panic)));
        let head = RequestHead {
            id: frame.id,
            codec,
            limits: self.shared.cfg.limits,
        };
        let mut observe = None;
        let stage = match admit {
            Admit::Pass => run_handler(None, &**handler, head, frame.body(), call, &mut observe),
            Admit::Refuse(st) => return Err(st),
            Admit::Wait(check) => Stage::Admitting(Box::new(Admitting {
                check,
                handler: handler.clone(),
                head,
                body: frame.body(),
                shared: self.shared.clone(),
            })),
        };
        Ok((stage, observe))
    }

    /// Starts a request: dispatch, poll once in place (with the session task's context), park
    /// it if still pending. Synchronous, so the session's handler state does not have to hold
    /// a request's dispatch state across an await.
    fn start(&mut self, ctx: &mut Ctx<'_, Bytes>, frame: &Frame, cx: &mut Context<'_>) {
        let oneway = frame.kind == kind::ONEWAY;
        let (id, codec) = (frame.id, frame.codec);
        let deadline = (frame.timeout_ms > 0)
            .then(|| ctx.received_at() + Duration::from_millis(u64::from(frame.timeout_ms)));
        let (stage, observe) = match self.dispatch(ctx, frame, deadline) {
            Ok(started) => started,
            Err(st) => {
                if !oneway {
                    Self::reply(self.udp, ctx, id, codec, Outcome::Failed(st));
                }
                return;
            }
        };
        // The usual case, a handler that ends in its first poll, is answered from here: no
        // parked call's state is made or moved for it.
        let stage = match stage {
            Stage::Running(mut run) => match poll_running(&mut run, deadline, cx) {
                Poll::Ready(r) => {
                    let outcome = match r {
                        Ok(()) => Outcome::Done(run),
                        Err(st) => Outcome::Failed(st),
                    };
                    return self.answer(ctx, id, codec, oneway, outcome, observe);
                }
                Poll::Pending => Stage::Running(run),
            },
            other => other,
        };
        let mut call = InFlight {
            id,
            codec,
            oneway,
            deadline,
            stage,
            observe,
            timer: None,
            _held: None,
        };
        let polled = match &call.stage {
            // Polled just now.
            Stage::Running(_) => Poll::Pending,
            _ => Pin::new(&mut call).poll(cx),
        };
        match polled {
            Poll::Ready(ended) => self.finish(ctx, ended),
            Poll::Pending => {
                if let Some(o) = call.observe.as_mut() {
                    o.shared = Some(self.shared.clone());
                }
                call.timer = deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into())));
                // The request (its body may be borrowed by the handler) stays counted.
                call._held = Some(ctx.retain());
                let (handle, reg) = AbortHandle::new_pair();
                let parked = self.parked.get_or_insert_with(Default::default);
                if !oneway {
                    // Oneway calls carry no usable id and cannot be cancelled.
                    parked.aborts.insert(id, handle);
                }
                parked.calls.push(Abortable::new(call, reg));
            }
        }
    }
}

impl<L: ServerLayer> EventListener for RpcServerListener<L> {
    type In = Frame;
    type Out = Bytes;

    async fn on_open(&mut self, session: &Session<Bytes>) -> Result<(), Error> {
        if session.transport() == Transport::Udp {
            self.udp = true;
            self.limit = self.shared.cfg.udp_max_in_flight.min(self.limit);
        }
        Ok(())
    }

    async fn on_error(&mut self, session: &Session<Bytes>, err: &Error) {
        // Malformed input from a peer (bad magic, version, lengths) ends its session: say why.
        tracing::warn!(session = session.id(), peer = %session.peer_addr(), error = %err, "rpc session error");
    }

    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, frame: Frame) {
        match frame.kind {
            kind::REQUEST | kind::ONEWAY => {
                std::future::poll_fn(|cx| {
                    self.start(ctx, &frame, cx);
                    Poll::Ready(())
                })
                .await
            }
            kind::HEARTBEAT if frame.flags & FLAG_REPLY == 0 => {
                ctx.send(control_frame(kind::HEARTBEAT, FLAG_REPLY, frame.id));
            }
            kind::CANCEL => {
                if let Some(h) = self
                    .parked
                    .as_mut()
                    .and_then(|p| p.aborts.remove(&frame.id))
                {
                    h.abort();
                }
            }
            // Heartbeat replies only prove life (reading updated the active time); unknown
            // kinds are ignored so newer peers can add some.
            _ => {}
        }
    }

    fn poll_work(&mut self, ctx: &mut Ctx<'_, Bytes>, cx: &mut Context<'_>) -> Poll<()> {
        if self.parked.is_none() {
            return Poll::Pending;
        }
        let mut progressed = false;
        // Stops once a good amount of output is buffered, so it is written (to a slow peer:
        // waited for) before more responses are made.
        loop {
            if ctx.write_buffered() >= 64 * 1024 {
                // Written by the handler, which then polls again.
                return Poll::Ready(());
            }
            let Some(parked) = self.parked.as_mut() else {
                break;
            };
            let Poll::Ready(Some(done)) = parked.calls.poll_next_unpin(cx) else {
                break;
            };
            progressed = true;
            if let Ok(ended) = done {
                if !ended.oneway {
                    parked.aborts.remove(&ended.id);
                }
                self.finish(ctx, ended);
            }
        }
        if progressed {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn accepts_messages(&self) -> bool {
        self.parked() < self.limit
    }

    /// Graceful shutdown: tell the client to send nothing new, then finish what is in flight.
    fn poll_close(&mut self, ctx: &mut Ctx<'_, Bytes>, _cx: &mut Context<'_>) -> Poll<()> {
        if !self.goaway_sent {
            self.goaway_sent = true;
            ctx.send(control_frame(kind::GOAWAY, 0, 0));
        }
        if self.parked() == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    /// Every idle TCP session of a server holds its handler task, whose state is the session
    /// handler's with this listener in it (and the task's allocation rounds it up to a multiple
    /// of 128 bytes). The listener keeps what only busy sessions need behind one pointer.
    /// (Sizes of a 64-bit target; a new compiler may lay the state out differently: look at
    /// `RUSTFLAGS=-Zprint-type-sizes` before raising a bound.)
    #[cfg(target_pointer_width = "64")]
    #[tokio::test]
    async fn an_idle_sessions_state_stays_small() {
        let listener = std::mem::size_of::<RpcServerListener<()>>();
        assert!(listener <= 72, "the RPC listener is {listener} bytes");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let c = tokio::net::TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let addrs = (
            Transport::Tcp,
            c.local_addr().expect("local"),
            c.peer_addr().expect("peer"),
        );
        let (rd, wr) = c.into_split();
        let shared = Arc::new(Shared {
            router: Router::new(),
            cfg: RpcServerConfig::default(),
            layer: (),
        });
        let cfg = crate::session::SessionConfig::default();
        let force = CancellationToken::new();
        let session = crate::session::stream_session(
            rd,
            wr,
            (
                RpcServerListener::new(shared),
                crate::rpc::frame::FrameCodec::new(Limits::default()),
                addrs,
                CancellationToken::new(),
                None,
            ),
            &cfg,
            &force,
            |_| {},
        );
        // 952 bytes when this was written, and the task 1,280 (it took 1,536 before this
        // listener and the handler's loop were made smaller).
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1024, "a session's state is {size} bytes");
    }
}
