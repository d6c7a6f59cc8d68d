//! The RPC server: a registry of services by name, dispatch of "service + method" to typed
//! handlers, and a session listener that runs every request concurrently on the session's own
//! task (polled once in place; only if it is still pending is it parked in the session's set of
//! requests in flight), under a per-session in-flight limit.

use super::codec::{Codec, Message};
use super::context::{with_deadline, CallContext};
use super::frame::{
    control_frame, encode_frame, kind, EncodeError, Frame, FrameCodec, Header, Limits, FLAG_REPLY,
    HEADER_LEN,
};
use super::status::Status;
use crate::session::MAX_DATAGRAM;
use crate::session::{
    Ctx, EventListener, Retained, Server, ServerBuilder, Session, SessionConfig, Transport,
};
use crate::Error;
use bytes::{Bytes, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What a typed handler becomes once its types are erased: decode the body, run, and encode
/// the response straight into its frame.
trait Handler: Send + Sync {
    fn call(
        &self,
        req: RequestHead,
        body: Bytes,
        ctx: CallContext,
    ) -> Result<Pin<Box<dyn Call>>, Status>;
}

/// A running call with its types erased: it is polled until the handler is done, then writes
/// its response frame straight into the session's write buffer (no buffer of its own, no copy).
trait Call: Send {
    /// Drives the handler; `Ready` once it has finished (its result is kept inside).
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
    /// Appends the response frame of a finished call to `out`, or gives the error status.
    fn write_response(self: Pin<&mut Self>, out: &mut BytesMut) -> Result<(), Status>;
}

/// What the response frame needs from the request.
#[derive(Clone, Copy)]
struct RequestHead {
    id: u64,
    codec: Codec,
    limits: Limits,
}

struct Unary<F, Req, Resp> {
    f: F,
    _types: std::marker::PhantomData<fn(Req) -> Resp>,
}

pin_project_lite::pin_project! {
    /// A unary handler's future and, once it is done, its result.
    struct UnaryCall<Fut, Resp> {
        #[pin]
        fut: Fut,
        done: Option<Result<Resp, Status>>,
        head: RequestHead,
    }
}

impl<Fut, Resp> Call for UnaryCall<Fut, Resp>
where
    Fut: Future<Output = Result<Resp, Status>> + Send,
    Resp: Message,
{
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.done.is_some() {
            return Poll::Ready(());
        }
        match this.fut.poll(cx) {
            Poll::Ready(r) => {
                *this.done = Some(r);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn write_response(self: Pin<&mut Self>, out: &mut BytesMut) -> Result<(), Status> {
        let this = self.project();
        let head = *this.head;
        let resp = match this.done.take() {
            Some(r) => r?,
            None => return Err(Status::internal("response taken twice")),
        };
        let h = Header {
            kind: kind::RESPONSE,
            codec: head.codec.id(),
            id: head.id,
            ..Header::default()
        };
        out.reserve(HEADER_LEN + resp.size_hint(head.codec));
        encode_frame(out, &h, &head.limits, |b| resp.encode_body(head.codec, b)).map_err(
            |e| match e {
                EncodeError::Body(st) => st,
                EncodeError::Frame(e) => Status::resource_exhausted(format!("response: {e}")),
            },
        )
    }
}

impl<F, Fut, Req, Resp> Handler for Unary<F, Req, Resp>
where
    F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    Req: Message,
    Resp: Message,
{
    fn call(
        &self,
        req: RequestHead,
        body: Bytes,
        ctx: CallContext,
    ) -> Result<Pin<Box<dyn Call>>, Status> {
        let msg = Req::decode_body(req.codec, body)?;
        Ok(Box::pin(UnaryCall {
            fut: (self.f)(msg, ctx),
            done: None,
            head: req,
        }))
    }
}

pin_project_lite::pin_project! {
    /// A handler's future with the call's deadline as the inherited one while it is polled
    /// (for a handler running on a task of its own).
    struct WithDeadline<Fut> {
        deadline: Option<Instant>,
        #[pin]
        fut: Fut,
    }
}

impl<Fut: Future> Future for WithDeadline<Fut> {
    type Output = Fut::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fut::Output> {
        let this = self.project();
        let fut = this.fut;
        with_deadline(*this.deadline, || fut.poll(cx))
    }
}

/// A handler running as a task of its own; aborted when the call is dropped (cancelled, past
/// its deadline, session gone).
struct Spawned<T>(tokio::task::JoinHandle<Result<T, Status>>);

impl<T> Future for Spawned<T> {
    type Output = Result<T, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| match joined {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(panic_status(e.into_panic())),
            Err(_) => Err(Status::cancelled("handler task cancelled")),
        })
    }
}

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fast hasher for the names and ids the server looks up on every request (FxHash's
/// multiply-rotate). Service and method maps hold only configured names (a peer's names are
/// looked up, never inserted); the per-session map of request ids holds at most
/// `max_in_flight` entries, so chosen colliding ids cannot make it grow or cost more than that.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(26) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// One service: a name and its methods.
pub struct Service {
    name: String,
    methods: FxMap<Box<[u8]>, Arc<dyn Handler>>,
    /// Method names in the order they were added (for listing).
    order: Vec<String>,
    /// Methods added more than once (an error when the server starts).
    duplicates: Vec<String>,
}

impl Service {
    /// A service named `name` (e.g. `"greeter.Greeter"`), without methods yet.
    pub fn new(name: impl Into<String>) -> Self {
        Service {
            name: name.into(),
            methods: FxMap::default(),
            order: Vec::new(),
            duplicates: Vec::new(),
        }
    }

    /// Adds a unary method: `handler(request, context)` returns the response or a status.
    ///
    /// ```
    /// use qsocket::rpc::{CallContext, Service, Status};
    /// let svc = Service::new("math.Math").unary("Double", |x: i64, _ctx: CallContext| async move {
    ///     x.checked_mul(2).ok_or_else(|| Status::out_of_range("overflow"))
    /// });
    /// ```
    pub fn unary<Req, Resp, F, Fut>(mut self, method: &str, handler: F) -> Self
    where
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
        Req: Message,
        Resp: Message,
    {
        let h: Arc<dyn Handler> = Arc::new(Unary {
            f: handler,
            _types: std::marker::PhantomData,
        });
        if self.methods.insert(method.as_bytes().into(), h).is_some() {
            self.duplicates.push(method.to_string());
        } else {
            self.order.push(method.to_string());
        }
        self
    }

    /// Adds a unary method whose handler runs as a task of its own (`tokio::spawn`) instead
    /// of on the session's task: for CPU-heavy or blocking-ish handlers, which would otherwise
    /// hold up every other call on the same connection, and which a multi-threaded runtime can
    /// then run in parallel. Costs a spawn per call. Deadlines, cancellation (the task is
    /// aborted), panics (`internal`) and the inherited deadline of nested calls behave as for
    /// [`unary`](Self::unary).
    ///
    /// ```
    /// use qsocket::rpc::{CallContext, Service, Status};
    /// let svc = Service::new("math.Math").unary_spawned("SumTo", |n: u64, _ctx: CallContext| async move {
    ///     Ok::<_, Status>((1..=n.min(10_000_000)).sum::<u64>())
    /// });
    /// ```
    pub fn unary_spawned<Req, Resp, F, Fut>(self, method: &str, handler: F) -> Self
    where
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
        Req: Message,
        Resp: Message,
    {
        self.unary(method, move |req: Req, ctx: CallContext| {
            let deadline = ctx.deadline();
            let fut = handler(req, ctx);
            Spawned(tokio::spawn(WithDeadline { deadline, fut }))
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of its methods, in the order they were added.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }
}

/// A type that serves one named RPC service (generated servers implement it, so a registry can
/// publish what a server offers).
pub trait NamedService {
    /// The service's full name, e.g. `"greeter.Greeter"`.
    const NAME: &'static str;
}

/// The services a server offers, by name.
#[derive(Default)]
pub struct Router {
    services: FxMap<Box<[u8]>, Service>,
    /// Service names in the order they were added (for listing).
    order: Vec<String>,
    /// Services added more than once (an error when the server starts).
    duplicates: Vec<String>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Router::default()
    }

    /// Adds a service. A name already added — or a method added twice to one service — is a
    /// mistake: [`RpcServerBuilder::start`] refuses it with [`Error::Config`] naming it (see
    /// also [`check`](Self::check)); nothing is silently replaced.
    pub fn add_service(mut self, service: Service) -> Self {
        let name = service.name.clone();
        match self.services.entry(name.as_bytes().into()) {
            std::collections::hash_map::Entry::Occupied(_) => self.duplicates.push(name),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(service);
                self.order.push(name);
            }
        }
        self
    }

    /// The services, in the order they were added (each lists its methods).
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.order
            .iter()
            .filter_map(|n| self.services.get(n.as_bytes()))
    }

    /// Whether the router is well formed: no service name, and no method of a service, added
    /// twice.
    pub fn check(&self) -> Result<(), Error> {
        if let Some(name) = self.duplicates.first() {
            return Err(Error::Config(format!("service {name:?} is added twice")));
        }
        for svc in self.services() {
            if let Some(m) = svc.duplicates.first() {
                return Err(Error::Config(format!(
                    "method {m:?} of service {:?} is added twice",
                    svc.name
                )));
            }
        }
        Ok(())
    }

    fn find(&self, service: &[u8], method: &[u8]) -> Result<&Arc<dyn Handler>, Status> {
        let svc = self.services.get(service).ok_or_else(|| {
            Status::unimplemented(format!(
                "unknown service {:?}",
                String::from_utf8_lossy(service)
            ))
        })?;
        svc.methods.get(method).ok_or_else(|| {
            Status::unimplemented(format!(
                "unknown method {:?} of service {:?}",
                String::from_utf8_lossy(method),
                svc.name
            ))
        })
    }
}

/// Settings of an RPC server.
#[derive(Debug, Clone)]
pub struct RpcServerConfig {
    /// Frame size limits.
    pub limits: Limits,
    /// Requests in flight per session; beyond it the session stops reading (backpressure).
    /// UDP sessions use at most [`RpcServerConfig::udp_max_in_flight`]. Default 1024.
    pub max_in_flight: usize,
    /// In-flight limit of UDP sessions. Default 64.
    pub udp_max_in_flight: usize,
    /// Session settings (timeouts, queues…). The default closes sessions idle for 2 minutes
    /// (clients send heartbeats when otherwise idle).
    pub session: SessionConfig,
}

impl Default for RpcServerConfig {
    fn default() -> Self {
        let limits = Limits::default();
        RpcServerConfig {
            limits,
            max_in_flight: 1024,
            udp_max_in_flight: 64,
            session: SessionConfig {
                session_timeout: Some(Duration::from_secs(120)),
                max_frame_len: limits.max_frame(),
                ..SessionConfig::default()
            },
        }
    }
}

/// Builds an RPC server: `RpcServer::builder(router).bind(url)….start().await`.
pub struct RpcServer;

impl RpcServer {
    /// Starts building a server for the services of `router`.
    pub fn builder(router: Router) -> RpcServerBuilder {
        RpcServerBuilder {
            router,
            cfg: RpcServerConfig::default(),
            binds: Vec::new(),
            max_sessions: None,
            udp_max_sessions: None,
            shared_budget: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Builder of an RPC server (see [`RpcServer::builder`]).
pub struct RpcServerBuilder {
    router: Router,
    cfg: RpcServerConfig,
    binds: Vec<String>,
    max_sessions: Option<usize>,
    udp_max_sessions: Option<usize>,
    shared_budget: Option<usize>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl RpcServerBuilder {
    /// Adds an address: `tcp://`, `udp://`, `ws://host:port/path` (and `tls://`, `wss://`).
    pub fn bind(mut self, url: &str) -> Self {
        self.binds.push(url.to_string());
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, cfg: RpcServerConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Requests in flight per session.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.cfg.max_in_flight = n;
        self
    }

    /// The most connection sessions at once (see [`ServerBuilder::max_sessions`]).
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = Some(n);
        self
    }

    /// The most UDP peers at once (see [`ServerBuilder::udp_max_sessions`]).
    pub fn udp_max_sessions(mut self, n: usize) -> Self {
        self.udp_max_sessions = Some(n);
        self
    }

    /// What all sessions together may hold beyond their allowances: requests being read,
    /// waiting, or in flight, and responses waiting for slow clients (see
    /// [`ServerBuilder::shared_budget`]). Default 256 MiB.
    pub fn shared_budget(mut self, bytes: usize) -> Self {
        self.shared_budget = Some(bytes);
        self
    }

    /// TLS for `tls://` and `wss://` addresses.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Binds and starts serving. The returned [`Server`] gives the bound endpoints and shuts
    /// down gracefully.
    pub async fn start(self) -> Result<Server, Error> {
        if self.cfg.max_in_flight == 0 || self.cfg.udp_max_in_flight == 0 {
            return Err(Error::Config("in-flight limits must be at least 1".into()));
        }
        self.router.check()?;
        let mut session_cfg = self.cfg.session.clone();
        session_cfg.max_frame_len = session_cfg.max_frame_len.max(self.cfg.limits.max_frame());
        session_cfg.session_budget = session_cfg.session_budget.max(session_cfg.min_budget());
        let shared = Arc::new(Shared {
            router: self.router,
            cfg: self.cfg,
        });
        let codec = FrameCodec::new(shared.cfg.limits);
        let factory = move || RpcServerListener::new(shared.clone());
        let mut b: ServerBuilder<_, _, _> = Server::builder(codec, factory).config(session_cfg);
        for url in &self.binds {
            b = b.bind(url);
        }
        if let Some(n) = self.max_sessions {
            b = b.max_sessions(n);
        }
        if let Some(n) = self.udp_max_sessions {
            b = b.udp_max_sessions(n);
        }
        if let Some(n) = self.shared_budget {
            b = b.shared_budget(n);
        }
        #[cfg(feature = "tls")]
        if let Some(t) = self.tls {
            b = b.tls(t);
        }
        b.start().await
    }
}

struct Shared {
    router: Router,
    cfg: RpcServerConfig,
}

/// A request parked because it did not finish when first polled.
struct InFlight {
    id: u64,
    codec: u8,
    oneway: bool,
    deadline: Option<Instant>,
    call: Option<Pin<Box<dyn Call>>>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Its frame's bytes, counted against the session's budget until it ends.
    _held: Option<Retained<Bytes>>,
}

/// How a call ended.
enum Outcome {
    /// The handler finished: its response can be written.
    Done(Pin<Box<dyn Call>>),
    /// The call failed before a response existed (panic, deadline).
    Failed(Status),
}

impl Future for InFlight {
    /// The request id, codec, whether it was oneway, and the outcome.
    type Output = (u64, u8, bool, Outcome);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(t) = this.timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                let st = Status::deadline_exceeded("deadline exceeded while the handler ran");
                return Poll::Ready((this.id, this.codec, this.oneway, Outcome::Failed(st)));
            }
        }
        let Some(call) = this.call.as_mut() else {
            let st = Status::internal("call polled after it ended");
            return Poll::Ready((this.id, this.codec, this.oneway, Outcome::Failed(st)));
        };
        let deadline = this.deadline;
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            with_deadline(deadline, || call.as_mut().poll_call(cx))
        }));
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(())) => match this.call.take() {
                Some(call) => Outcome::Done(call),
                None => Outcome::Failed(Status::internal("call lost")),
            },
            Err(panic) => Outcome::Failed(panic_status(panic)),
        };
        Poll::Ready((this.id, this.codec, this.oneway, outcome))
    }
}

/// The `internal` status of a handler that panicked.
fn panic_status(panic: Box<dyn std::any::Any + Send>) -> Status {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into());
    tracing::error!(panic = %what, "rpc handler panicked");
    Status::internal(format!("handler panicked: {what}"))
}

/// Appends a response frame carrying an error status; the body is the UTF-8 message.
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

/// The session listener of an RPC server.
struct RpcServerListener {
    shared: Arc<Shared>,
    /// Requests parked because they did not finish when first polled; made on first use, so
    /// an idle session holds none of its state.
    in_flight: Option<FuturesUnordered<Abortable<InFlight>>>,
    aborts: FxMap<u64, AbortHandle>,
    limit: usize,
    goaway_sent: bool,
    udp: bool,
}

impl RpcServerListener {
    fn new(shared: Arc<Shared>) -> Self {
        let limit = shared.cfg.max_in_flight;
        RpcServerListener {
            shared,
            in_flight: None,
            aborts: FxMap::default(),
            limit,
            goaway_sent: false,
            udp: false,
        }
    }

    /// How many requests are parked.
    fn parked(&self) -> usize {
        self.in_flight.as_ref().map_or(0, FuturesUnordered::len)
    }

    /// Writes a call's answer straight into the session's write buffer: the response of a
    /// finished call, or its error; over UDP a response too large for a datagram becomes a
    /// `resource_exhausted` answer instead of being dropped.
    fn reply(udp: bool, ctx: &mut Ctx<'_, Bytes>, id: u64, codec: u8, outcome: Outcome) {
        match outcome {
            Outcome::Done(mut call) => ctx.send_raw(&mut |buf: &mut BytesMut| {
                let start = buf.len();
                let error = match call.as_mut().write_response(buf) {
                    Ok(()) if udp && buf.len() - start > MAX_DATAGRAM => {
                        Some(Status::resource_exhausted(format!(
                            "response of {} bytes does not fit in a UDP datagram",
                            buf.len() - start
                        )))
                    }
                    Ok(()) => None,
                    Err(st) => Some(st),
                };
                if let Some(st) = error {
                    buf.truncate(start);
                    write_error(buf, id, codec, &st);
                }
            }),
            Outcome::Failed(st) => ctx.send_raw(&mut |buf: &mut BytesMut| {
                write_error(buf, id, codec, &st);
            }),
        }
    }

    /// Starts a request: dispatch, poll once in place (with the session task's context), park
    /// it if still pending. Synchronous, so the session's handler state does not have to hold
    /// a request's dispatch state across an await.
    fn start(&mut self, ctx: &mut Ctx<'_, Bytes>, frame: &Frame, cx: &mut Context<'_>) {
        let oneway = frame.kind == kind::ONEWAY;
        let (id, codec_id) = (frame.id, frame.codec);
        let received = ctx.received_at();
        let deadline = (frame.timeout_ms > 0)
            .then(|| received + Duration::from_millis(u64::from(frame.timeout_ms)));
        let fail = |st: Status| (!oneway).then_some(st);
        let started = match Codec::from_id(codec_id) {
            None => Err(fail(Status::unimplemented(format!(
                "unknown codec id {codec_id}"
            )))),
            Some(_) if !frame.metadata().is_valid() => Err(fail(Status::invalid_argument(
                "malformed metadata: an entry runs past the end of the metadata block",
            ))),
            Some(_) if deadline.is_some_and(|d| d <= Instant::now()) => Err(fail(
                Status::deadline_exceeded("deadline passed before the request was dispatched"),
            )),
            Some(codec) => self
                .shared
                .router
                .find(frame.service(), frame.method())
                .and_then(|h| {
                    let session = ctx.session();
                    let call = CallContext {
                        deadline,
                        metadata: frame.metadata_bytes(),
                        peer: session.peer_addr(),
                        session_id: session.id(),
                        request_id: id,
                    };
                    let head = RequestHead {
                        id,
                        codec,
                        limits: self.shared.cfg.limits,
                    };
                    // A handler may panic before it returns its future, too.
                    std::panic::catch_unwind(AssertUnwindSafe(|| h.call(head, frame.body(), call)))
                        .unwrap_or_else(|panic| Err(panic_status(panic)))
                })
                .map_err(fail),
        };
        let started = match started {
            Ok(call) => call,
            Err(Some(st)) => {
                Self::reply(self.udp, ctx, id, codec_id, Outcome::Failed(st));
                return;
            }
            Err(None) => return,
        };
        let mut call = InFlight {
            id,
            codec: codec_id,
            oneway,
            deadline,
            call: Some(started),
            timer: None,
            _held: None,
        };
        match Pin::new(&mut call).poll(cx) {
            Poll::Ready((_, _, _, outcome)) => {
                if !oneway {
                    Self::reply(self.udp, ctx, id, codec_id, outcome);
                }
            }
            Poll::Pending => {
                call.timer = deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into())));
                // The request (its body may be borrowed by the handler) stays counted.
                call._held = Some(ctx.retain());
                let (handle, reg) = AbortHandle::new_pair();
                if !oneway {
                    // Oneway calls carry no usable id and cannot be cancelled.
                    self.aborts.insert(id, handle);
                }
                self.in_flight
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(Abortable::new(call, reg));
            }
        }
    }
}

impl EventListener for RpcServerListener {
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
                if let Some(h) = self.aborts.remove(&frame.id) {
                    h.abort();
                }
            }
            // Heartbeat replies only prove life (reading updated the active time); unknown
            // kinds are ignored so newer peers can add some.
            _ => {}
        }
    }

    fn poll_work(&mut self, ctx: &mut Ctx<'_, Bytes>, cx: &mut Context<'_>) -> Poll<()> {
        let mut progressed = false;
        let Some(in_flight) = self.in_flight.as_mut() else {
            return Poll::Pending;
        };
        // Stops once a good amount of output is buffered, so it is written (to a slow peer:
        // waited for) before more responses are made.
        loop {
            if ctx.write_buffered() >= 64 * 1024 {
                // Written by the handler, which then polls again.
                return Poll::Ready(());
            }
            let Poll::Ready(Some(done)) = in_flight.poll_next_unpin(cx) else {
                break;
            };
            progressed = true;
            if let Ok((id, codec, oneway, outcome)) = done {
                if !oneway {
                    self.aborts.remove(&id);
                    Self::reply(self.udp, ctx, id, codec, outcome);
                }
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
    use crate::rpc::Code;

    #[test]
    fn services_are_listed_and_names_added_twice_are_refused() {
        let echo = |x: i32, _| async move { Ok(x) };
        let r = Router::new()
            .add_service(Service::new("a.A").unary("M", echo).unary("N", echo))
            .add_service(Service::new("b.B").unary("O", echo));
        assert!(r.check().is_ok());
        let listed: Vec<(&str, Vec<&str>)> = r
            .services()
            .map(|s| (s.name(), s.methods().collect()))
            .collect();
        assert_eq!(listed, vec![("a.A", vec!["M", "N"]), ("b.B", vec!["O"])]);
        let twice = Router::new()
            .add_service(Service::new("a.A").unary("M", echo))
            .add_service(Service::new("a.A").unary("N", echo));
        let e = twice.check().expect_err("duplicate service");
        assert!(e.to_string().contains("\"a.A\" is added twice"), "{e}");
        assert!(twice.find(b"a.A", b"M").is_ok(), "the first one is kept");
        let e = Router::new()
            .add_service(Service::new("a.A").unary("M", echo).unary("M", echo))
            .check()
            .expect_err("duplicate method");
        assert!(e.to_string().contains("method \"M\""), "{e}");
    }

    #[test]
    fn unknown_service_and_method_are_named() {
        let r = Router::new()
            .add_service(Service::new("a.A").unary("M", |x: i32, _| async move { Ok(x) }));
        let e = r.find(b"b.B", b"M").err().expect("unknown service");
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e.message().contains("b.B"));
        let e = r.find(b"a.A", b"N").err().expect("unknown method");
        assert!(e.message().contains("\"N\"") && e.message().contains("a.A"));
        assert!(r.find(b"a.A", b"M").is_ok());
    }
}
