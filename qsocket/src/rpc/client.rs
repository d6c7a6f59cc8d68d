//! The RPC client: many calls in flight per session, matched by request id in a per-session
//! pending table (slab index + generation, no hashing); per-call deadlines sent to the server
//! as time remaining; dropping a call cancels it; a session that dies fails its calls at once.

use super::codec::{Codec, Message};
use super::context::current_deadline;
use super::frame::{
    control_frame_mut, encode_frame, kind, put_metadata, EncodeError, Frame, FrameCodec, Header,
    Limits, HEADER_LEN,
};
use super::status::{Code, Sent, Status};
use crate::session::MAX_DATAGRAM;
use crate::session::{Client, Ctx, Endpoint, EventListener, Session, SessionConfig, Transport};
use crate::Error;
use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A source of endpoints for a client: a fixed list now, a registry-backed list later.
pub trait Endpoints: Send + Sync + 'static {
    /// The endpoints to use now.
    fn current(&self) -> Vec<Endpoint>;
    /// Resolves when [`current`](Self::current) may have changed.
    fn changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// A fixed list of endpoints.
#[derive(Debug, Clone)]
pub struct StaticEndpoints(pub Vec<Endpoint>);

impl Endpoints for StaticEndpoints {
    fn current(&self) -> Vec<Endpoint> {
        self.0.clone()
    }

    fn changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

/// Where a call stands in its slot.
enum State {
    /// The slot is free.
    Free,
    /// Waiting for the response; the caller's waker once it has polled.
    Waiting(Option<Waker>),
    /// Answered (or failed), not yet taken by the caller.
    Done(Result<Frame, Status>),
}

/// The calls waiting for a response, for all sessions to one endpoint. A response completes
/// its call right where it is decoded, in the session's reader (see [`ClientCodec`]): it is
/// put in the call's slot and the caller woken — no channel, no allocation per call.
pub(crate) struct Pending {
    inner: Mutex<Table>,
    /// Wakes the deadline sweeper when the first call is registered.
    busy: Notify,
    /// Ends the sweeper: cancelled when the endpoint is removed or the client closes.
    stop: tokio_util::sync::CancellationToken,
}

struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots in use (waiting or answered).
    len: usize,
}

struct Slot {
    generation: u32,
    state: State,
    /// When the caller stops waiting.
    deadline: Instant,
    /// The session the request went out on.
    session: u64,
}

impl Table {
    /// The slot of `id`, if it is still that call's.
    fn slot(&mut self, id: u64) -> Option<&mut Slot> {
        let (generation, index) = ((id >> 32) as u32, id as u32 as usize);
        self.slots
            .get_mut(index)
            .filter(|s| s.generation == generation && !matches!(s.state, State::Free))
    }

    fn release(&mut self, id: u64) {
        if let Some(slot) = self.slot(id) {
            slot.state = State::Free;
            self.free.push(id as u32);
            self.len -= 1;
        }
    }
}

impl Pending {
    fn new(stop: tokio_util::sync::CancellationToken) -> Self {
        Pending {
            inner: Mutex::new(Table {
                slots: Vec::new(),
                free: Vec::new(),
                len: 0,
            }),
            busy: Notify::new(),
            stop,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a call on `session`; its id is `generation << 32 | slot`.
    fn insert(&self, session: u64, deadline: Instant) -> u64 {
        let mut t = self.lock();
        let index = match t.free.pop() {
            Some(i) => i,
            None => {
                t.slots.push(Slot {
                    generation: 0,
                    state: State::Free,
                    session: 0,
                    deadline,
                });
                (t.slots.len() - 1) as u32
            }
        };
        let slot = &mut t.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = State::Waiting(None);
        slot.session = session;
        slot.deadline = deadline;
        let id = (u64::from(slot.generation) << 32) | u64::from(index);
        t.len += 1;
        let first = t.len == 1;
        drop(t);
        if first {
            self.busy.notify_one();
        }
        id
    }

    /// Ends call `id` with `result` if it is still waiting, and wakes its caller.
    fn complete(&self, id: u64, result: Result<Frame, Status>) {
        let waker = {
            let mut t = self.lock();
            match t.slot(id) {
                Some(slot) => match std::mem::replace(&mut slot.state, State::Done(result)) {
                    State::Waiting(w) => w,
                    // Already answered: keep the first outcome.
                    other => {
                        slot.state = other;
                        None
                    }
                },
                None => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The caller's side: the outcome of call `id` once there is one (the slot is then free).
    fn poll_outcome(&self, id: u64, cx: &mut Context<'_>) -> Poll<Result<Frame, Status>> {
        let mut t = self.lock();
        let Some(slot) = t.slot(id) else {
            return Poll::Ready(Err(Status::internal("call lost its slot")));
        };
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Waiting(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                slot.state = State::Waiting(Some(w));
                Poll::Pending
            }
            State::Done(r) => {
                t.free.push(id as u32);
                t.len -= 1;
                Poll::Ready(r)
            }
            State::Free => Poll::Ready(Err(Status::internal("call lost its slot"))),
        }
    }

    /// Gives up call `id` (its caller stopped waiting); `true` if no outcome had arrived.
    fn remove(&self, id: u64) -> bool {
        let mut t = self.lock();
        let waiting = matches!(t.slot(id).map(|s| &s.state), Some(State::Waiting(_)));
        t.release(id);
        waiting
    }

    /// Ends, with `status`, every waiting call whose slot matches `pred`.
    fn fail_where(&self, pred: impl Fn(&Slot) -> bool, status: &Status) {
        let wakers: Vec<Waker> = {
            let mut t = self.lock();
            let mut wakers = Vec::new();
            for slot in t.slots.iter_mut() {
                if matches!(slot.state, State::Waiting(_)) && pred(slot) {
                    if let State::Waiting(Some(w)) =
                        std::mem::replace(&mut slot.state, State::Done(Err(status.clone())))
                    {
                        wakers.push(w);
                    }
                }
            }
            wakers
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Fails every call pending on `session`.
    fn fail_session(&self, session: u64, status: &Status) {
        self.fail_where(|slot| slot.session == session, status);
    }

    /// Ends every call whose deadline has passed with `deadline_exceeded`.
    fn expire(&self, now: Instant) {
        let st =
            Status::deadline_exceeded("no response within the deadline").with_sent(Sent::Maybe);
        self.fail_where(|slot| slot.deadline <= now, &st);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }
}

/// How often the sweeper looks for calls past their deadline while calls are pending: a call
/// ends at most this much after its deadline (the server enforces the deadline on its side too).
const SWEEP_EVERY: Duration = Duration::from_millis(5);

/// Ends calls whose deadline has passed — one task per endpoint instead of a timer per call.
async fn sweep(pending: Arc<Pending>) {
    let stop = pending.stop.clone();
    loop {
        while pending.len() == 0 {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = pending.busy.notified() => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        pending.expire(Instant::now());
    }
}

/// The session codec of client connections: frames as [`FrameCodec`], except that a response
/// completes its call at once, in the reader that decoded it, with no hand-off to another task.
#[derive(Clone)]
struct ClientCodec {
    frames: FrameCodec,
    pending: Arc<Pending>,
}

impl ClientCodec {
    fn complete(&self, frame: Frame) -> Option<Frame> {
        if frame.kind != kind::RESPONSE {
            return Some(frame);
        }
        let id = frame.id;
        self.pending.complete(id, Ok(frame));
        None
    }
}

impl tokio_util::codec::Decoder for ClientCodec {
    type Item = Frame;
    type Error = super::frame::FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        while let Some(frame) = self.frames.decode(src)? {
            if let Some(other) = self.complete(frame) {
                return Ok(Some(other));
            }
        }
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        while let Some(frame) = self.frames.decode_eof(src)? {
            if let Some(other) = self.complete(frame) {
                return Ok(Some(other));
            }
        }
        Ok(None)
    }
}

/// A client session carries whole frames as the `BytesMut` they were encoded in: a request
/// is never frozen into `Bytes` (which allocates when the buffer is not full), only copied
/// into the write buffer.
impl tokio_util::codec::Encoder<BytesMut> for ClientCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: BytesMut, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

/// What the call path and a connection's listener share about that connection.
struct ConnState {
    /// Set by a GOAWAY: no new calls on this connection.
    draining: AtomicBool,
    /// Calls in flight on this connection.
    in_flight: AtomicUsize,
    /// UDP: caps the calls in flight (the rest wait for a permit).
    permits: Option<Arc<Semaphore>>,
}

/// A live connection as the call path sees it (one `Arc`: a pick clones one pointer).
#[derive(Clone)]
struct Conn(Arc<ConnParts>);

struct ConnParts {
    session: Session<BytesMut>,
    pending: Arc<Pending>,
    state: Arc<ConnState>,
}

impl std::ops::Deref for Conn {
    type Target = ConnParts;

    fn deref(&self) -> &ConnParts {
        &self.0
    }
}

/// Connections of a client, shared with the listeners that add and remove them.
struct Pool {
    live: Mutex<Vec<Conn>>,
    changed: Notify,
    next: AtomicUsize,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pick(&self) -> Option<Conn> {
        let live = self.lock();
        let n = live.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &live[(start + k) % n])
            .find(|c| !c.session.is_closed() && !c.state.draining.load(Ordering::Relaxed))
            .cloned()
    }
}

/// The session listener of an RPC client connection.
struct RpcClientListener {
    pool: Arc<Pool>,
    pending: Arc<Pending>,
    state: Arc<ConnState>,
    heartbeat: Duration,
}

impl EventListener for RpcClientListener {
    type In = Frame;
    type Out = BytesMut;

    async fn on_open(&mut self, session: &Session<BytesMut>) -> Result<(), Error> {
        self.pool.lock().push(Conn(Arc::new(ConnParts {
            session: session.clone(),
            pending: self.pending.clone(),
            state: self.state.clone(),
        })));
        self.pool.changed.notify_waiters();
        Ok(())
    }

    async fn on_message(&mut self, ctx: &mut Ctx<'_, BytesMut>, frame: Frame) {
        match frame.kind {
            // Responses are completed by the codec; heartbeat replies only prove life.
            kind::HEARTBEAT if frame.flags & super::frame::FLAG_REPLY == 0 => {
                ctx.send(control_frame_mut(
                    kind::HEARTBEAT,
                    super::frame::FLAG_REPLY,
                    frame.id,
                ));
            }
            kind::GOAWAY => {
                tracing::debug!(session = ctx.session().id(), "server sent goaway");
                self.state.draining.store(true, Ordering::Release);
                if self.state.in_flight.load(Ordering::Acquire) == 0 {
                    ctx.close();
                }
            }
            _ => {}
        }
    }

    async fn on_cron(&mut self, ctx: &mut Ctx<'_, BytesMut>) {
        if ctx.session().idle_for() >= self.heartbeat {
            ctx.send(control_frame_mut(kind::HEARTBEAT, 0, 0));
        }
    }

    async fn on_close(&mut self, session: &Session<BytesMut>) {
        self.pool.lock().retain(|c| c.session.id() != session.id());
        let status = Status::unavailable("connection closed").with_sent(Sent::Maybe);
        self.pending.fail_session(session.id(), &status);
        self.pool.changed.notify_waiters();
    }
}

/// Settings of an RPC client.
#[derive(Debug, Clone)]
pub struct RpcClientConfig {
    /// Body codec of calls that do not choose one. Default protobuf.
    pub codec: Codec,
    /// Deadline of calls that set none (and are not made inside a handler). Default 30 s.
    pub timeout: Duration,
    /// Sessions per endpoint. Default 1.
    pub sessions_per_endpoint: usize,
    /// A session with no traffic for this long sends a heartbeat; one silent for three times
    /// as long is closed and replaced. Default 10 s.
    pub heartbeat: Duration,
    /// Calls in flight per UDP session; the rest wait. Default 64.
    pub udp_max_in_flight: usize,
    /// Frame size limits.
    pub limits: Limits,
    /// Session settings (its cron period and timeout are set from `heartbeat`).
    pub session: SessionConfig,
}

impl Default for RpcClientConfig {
    fn default() -> Self {
        RpcClientConfig {
            codec: Codec::Protobuf,
            timeout: Duration::from_secs(30),
            sessions_per_endpoint: 1,
            heartbeat: Duration::from_secs(10),
            udp_max_in_flight: 64,
            limits: Limits::default(),
            session: SessionConfig::default(),
        }
    }
}

/// The sessions to one endpoint and the calls pending on them.
type EndpointClient = (Endpoint, Client<BytesMut>, Arc<Pending>);

/// An RPC client over a set of endpoints. Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    cfg: RpcClientConfig,
    clients: Mutex<Vec<EndpointClient>>,
    closed: AtomicBool,
    /// Ends the task that follows a changing endpoint source.
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Builder of an [`RpcClient`].
pub struct RpcClientBuilder {
    endpoints: Vec<Result<Endpoint, Error>>,
    source: Option<Arc<dyn Endpoints>>,
    cfg: RpcClientConfig,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl RpcClient {
    /// Starts building a client.
    pub fn builder() -> RpcClientBuilder {
        RpcClientBuilder {
            endpoints: Vec::new(),
            source: None,
            cfg: RpcClientConfig::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// A client of one endpoint URL with the default settings.
    pub async fn connect(url: &str) -> Result<RpcClient, Error> {
        RpcClient::builder().endpoint(url).start().await
    }

    /// A unary call with the client's default codec and timeout.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        self.request(service, method).call(req).await
    }

    /// A call with options: `client.request(svc, m).timeout(d).codec(Codec::Json).call(&req)`.
    pub fn request<'a>(&'a self, service: &'a str, method: &'a str) -> Call<'a> {
        Call {
            client: self,
            service,
            method,
            deadline: None,
            codec: self.inner.cfg.codec,
            metadata: Vec::new(),
            metadata_error: None,
        }
    }

    /// Calls in flight on all sessions.
    pub fn in_flight(&self) -> usize {
        let clients = self.inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.iter().map(|(_, _, p)| p.len()).sum()
    }

    /// Closes every session (calls pending on them fail) and stops reconnecting.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.stop.cancel();
        let clients: Vec<_> =
            std::mem::take(&mut *self.inner.clients.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, c, _) in clients {
            c.close(Duration::from_secs(5)).await;
        }
        self.inner.pool.changed.notify_waiters();
    }

    /// A live connection, waiting for one until `deadline`.
    async fn conn(&self, deadline: Instant) -> Result<Conn, Status> {
        let pool = &self.inner.pool;
        if let Some(c) = pool.pick() {
            return Ok(c);
        }
        loop {
            let changed = pool.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(c) = pool.pick() {
                return Ok(c);
            }
            if self.inner.closed.load(Ordering::Relaxed) {
                return Err(Status::unavailable("client closed"));
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return Err(Status::unavailable(
                    "no connection to any endpoint before the deadline",
                ));
            }
        }
    }
}

impl RpcClientBuilder {
    /// Adds an endpoint URL (`tcp://`, `udp://`, `ws://…/path`, `tls://`, `wss://`).
    pub fn endpoint(mut self, url: &str) -> Self {
        self.endpoints.push(Endpoint::parse(url));
        self
    }

    /// Takes endpoints from a source (e.g. a registry) instead of a fixed list.
    pub fn endpoints(mut self, source: impl Endpoints) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, cfg: RpcClientConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Default body codec.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.cfg.codec = codec;
        self
    }

    /// Default call timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.cfg.timeout = timeout;
        self
    }

    /// Sessions per endpoint.
    pub fn sessions_per_endpoint(mut self, n: usize) -> Self {
        self.cfg.sessions_per_endpoint = n;
        self
    }

    /// Heartbeat interval of idle sessions.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.cfg.heartbeat = every;
        self
    }

    /// TLS for `tls://` and `wss://` endpoints.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Starts connecting to every endpoint (in the background: calls wait for a connection up
    /// to their deadline).
    pub async fn start(self) -> Result<RpcClient, Error> {
        let fixed = self.endpoints.into_iter().collect::<Result<Vec<_>, _>>()?;
        let is_static = self.source.is_none();
        let source: Arc<dyn Endpoints> = match self.source {
            Some(s) => s,
            None if fixed.is_empty() => {
                return Err(Error::Config(
                    "an rpc client needs at least one endpoint".into(),
                ))
            }
            None => Arc::new(StaticEndpoints(fixed)),
        };
        if self.cfg.heartbeat.is_zero() || self.cfg.udp_max_in_flight == 0 {
            return Err(Error::Config(
                "heartbeat and udp_max_in_flight must be non-zero".into(),
            ));
        }
        let inner = Arc::new(Inner {
            pool: Arc::new(Pool {
                live: Mutex::new(Vec::new()),
                changed: Notify::new(),
                next: AtomicUsize::new(0),
            }),
            cfg: self.cfg,
            clients: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            stop: tokio_util::sync::CancellationToken::new(),
        });
        let client = RpcClient { inner };
        #[cfg(feature = "tls")]
        let tls = self.tls;
        #[cfg(not(feature = "tls"))]
        let tls = None::<()>;
        sync_endpoints(&client, &source.current(), &tls).await?;
        if is_static {
            return Ok(client);
        }
        // Follow the source: connect to new endpoints, close removed ones — until the client
        // is closed or dropped.
        let weak = Arc::downgrade(&client.inner);
        let stop = client.inner.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = source.changed() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let client = RpcClient { inner };
                if client.inner.closed.load(Ordering::Relaxed) {
                    return;
                }
                if let Err(e) = sync_endpoints(&client, &source.current(), &tls).await {
                    tracing::warn!(error = %e, "rpc client: cannot use new endpoints");
                }
            }
        });
        Ok(client)
    }
}

#[cfg(feature = "tls")]
type TlsOpt = Option<Arc<rustls::ClientConfig>>;
#[cfg(not(feature = "tls"))]
type TlsOpt = Option<()>;

/// Makes the client's sessions match `wanted`.
async fn sync_endpoints(
    client: &RpcClient,
    wanted: &[Endpoint],
    tls: &TlsOpt,
) -> Result<(), Error> {
    let inner = &client.inner;
    let (removed, missing) = {
        let mut clients = inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (keep, removed): (Vec<_>, Vec<_>) = std::mem::take(&mut *clients)
            .into_iter()
            .partition(|(e, _, _)| wanted.contains(e));
        *clients = keep;
        let missing: Vec<Endpoint> = wanted
            .iter()
            .filter(|w| !clients.iter().any(|(e, _, _)| e == *w))
            .cloned()
            .collect();
        (removed, missing)
    };
    for (_, c, pending) in removed {
        c.close(Duration::from_secs(5)).await;
        pending.stop.cancel();
    }
    let cfg = &inner.cfg;
    for ep in missing {
        let udp = ep.transport() == Transport::Udp;
        let pool = inner.pool.clone();
        let (heartbeat, udp_cap) = (cfg.heartbeat, cfg.udp_max_in_flight);
        let pending = Arc::new(Pending::new(inner.stop.child_token()));
        let codec = ClientCodec {
            frames: FrameCodec::new(cfg.limits),
            pending: pending.clone(),
        };
        let listener_pending = pending.clone();
        let factory = move || RpcClientListener {
            pool: pool.clone(),
            pending: listener_pending.clone(),
            state: Arc::new(ConnState {
                draining: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                permits: udp.then(|| Arc::new(Semaphore::new(udp_cap))),
            }),
            heartbeat,
        };
        let mut session_cfg = cfg.session.clone();
        session_cfg.cron_period = Some(cfg.heartbeat);
        session_cfg.session_timeout = Some(cfg.heartbeat.saturating_mul(3));
        session_cfg.max_frame_len = session_cfg.max_frame_len.max(cfg.limits.max_frame());
        session_cfg.session_budget = session_cfg.session_budget.max(session_cfg.min_budget());
        let b = Client::builder(&ep.to_string(), codec, factory)
            .sessions(cfg.sessions_per_endpoint)
            .config(session_cfg);
        #[cfg(feature = "tls")]
        let b = match tls {
            Some(t) => b.tls(t.clone()),
            None => b,
        };
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        let c = b.start().await?;
        let mut clients = inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        if inner.closed.load(Ordering::Relaxed) {
            drop(clients);
            c.close(Duration::from_secs(1)).await;
            continue;
        }
        // The sweeper only once the endpoint is in: a failed start leaves nothing behind.
        tokio::spawn(sweep(pending.clone()));
        clients.push((ep, c, pending));
    }
    Ok(())
}

/// One call being prepared (see [`RpcClient::request`]).
pub struct Call<'a> {
    client: &'a RpcClient,
    service: &'a str,
    method: &'a str,
    deadline: Option<Instant>,
    codec: Codec,
    metadata: Vec<u8>,
    metadata_error: Option<Status>,
}

/// Removes a call from its pending table if it ends without a response (dropped, timed out)
/// and tells the server, which may then stop working on it.
struct CallGuard<'a> {
    conn: &'a Conn,
    id: u64,
    /// Still in the pending table.
    armed: bool,
    /// The request was queued on the connection (so the server may be working on it).
    written: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.armed && self.conn.pending.remove(self.id) && self.written {
            let _ = self
                .conn
                .session
                .try_send(control_frame_mut(kind::CANCEL, 0, self.id));
        }
        // The last call on a connection the server asked us to leave closes it.
        let state = &self.conn.state;
        if state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && state.draining.load(Ordering::Acquire)
        {
            self.conn.session.close();
        }
    }
}

impl Call<'_> {
    /// Bounds the call by `timeout` from now.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(crate::session::deadline_after(Instant::now(), timeout));
        self
    }

    /// Bounds the call by an absolute deadline.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The body codec of this call.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Adds a metadata entry (e.g. a trace id).
    pub fn metadata(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        if let Err(e) = put_metadata(&mut self.metadata, key, value.as_ref()) {
            self.metadata_error = Some(Status::invalid_argument(e.to_string()));
        }
        self
    }

    fn effective_deadline(&self, now: Instant) -> Instant {
        let own = self
            .deadline
            .unwrap_or_else(|| crate::session::deadline_after(now, self.client.inner.cfg.timeout));
        match current_deadline() {
            Some(inherited) if inherited < own => inherited,
            _ => own,
        }
    }

    /// Sends the request and waits for the response.
    pub async fn call<Req: Message, Resp: Message>(self, req: &Req) -> Result<Resp, Status> {
        let frame = self.send(req, false).await?;
        let frame = frame.ok_or_else(|| Status::internal("no response"))?;
        let yes = |st: Status| st.with_sent(Sent::Yes);
        if frame.status != 0 {
            let msg = String::from_utf8_lossy(&frame.body()).into_owned();
            return Err(yes(Status::new(Code::from_u16(frame.status), msg)));
        }
        let codec = Codec::from_id(frame.codec).ok_or_else(|| {
            yes(Status::internal(format!(
                "response in unknown codec {}",
                frame.codec
            )))
        })?;
        Resp::decode_body(codec, frame.body())
            .map_err(|e| yes(Status::internal(format!("response: {}", e.message()))))
    }

    /// Sends the request without waiting for any response (a oneway call). Returns once the
    /// request is queued on a connection.
    pub async fn oneway<Req: Message>(self, req: &Req) -> Result<(), Status> {
        self.send(req, true).await.map(|_| ())
    }

    async fn send<Req: Message>(self, req: &Req, oneway: bool) -> Result<Option<Frame>, Status> {
        if let Some(e) = self.metadata_error {
            return Err(e);
        }
        // One clock read per call: the deadline and the time remaining both come from it.
        let mut now = Instant::now();
        let deadline = self.effective_deadline(now);
        let cfg = &self.client.inner.cfg;
        let conn = self.client.conn(deadline).await?;
        let udp = conn.session.transport() == Transport::Udp;
        let _permit: Option<OwnedSemaphorePermit> = match &conn.state.permits {
            Some(sem) => {
                match tokio::time::timeout_at(deadline.into(), sem.clone().acquire_owned()).await {
                    Ok(Ok(p)) => {
                        now = Instant::now();
                        Some(p)
                    }
                    Ok(Err(_)) => return Err(Status::unavailable("connection closed")),
                    Err(_) => {
                        return Err(Status::deadline_exceeded(
                            "deadline passed waiting for a udp call slot",
                        ))
                    }
                }
            }
            None => None,
        };
        let (id, guard) = if oneway {
            (0, None)
        } else {
            let id = conn.pending.insert(conn.session.id(), deadline);
            conn.state.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = CallGuard {
                conn: &conn,
                id,
                armed: true,
                written: false,
            };
            // A session that closed after we picked it has already failed its calls (or is
            // about to, under the closed flag): do not wait on it.
            if conn.session.is_closed() {
                return Err(Status::unavailable("connection closed"));
            }
            (id, Some(guard))
        };
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return Err(Status::deadline_exceeded(
                "deadline passed before the request was sent",
            ));
        }
        // Whole milliseconds, rounded up, so a sub-millisecond remainder is not "no deadline".
        let timeout_ms = u32::try_from(remaining.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
        let h = Header {
            kind: if oneway { kind::ONEWAY } else { kind::REQUEST },
            codec: self.codec.id(),
            id,
            timeout_ms,
            service: self.service,
            method: self.method,
            metadata: &self.metadata,
            ..Header::default()
        };
        let mut buf = BytesMut::with_capacity(
            HEADER_LEN
                + self.service.len()
                + self.method.len()
                + self.metadata.len()
                + req.size_hint(self.codec),
        );
        encode_frame(&mut buf, &h, &cfg.limits, |b| {
            req.encode_body(self.codec, b)
        })
        .map_err(|e| match e {
            EncodeError::Body(st) => st,
            EncodeError::Frame(e) => Status::invalid_argument(format!("request: {e}")),
        })?;
        if udp && buf.len() > MAX_DATAGRAM {
            return Err(Status::resource_exhausted(format!(
                "request of {} bytes does not fit in a UDP datagram ({} max)",
                buf.len(),
                MAX_DATAGRAM
            )));
        }
        let closed = || Status::unavailable("connection closed before the request was sent");
        // Queue without a timer when there is room (the usual case); wait, bounded by the
        // deadline, only when the connection is behind.
        match conn.session.try_send(buf) {
            Ok(()) => {}
            Err(crate::session::TrySendError::Closed(_)) => return Err(closed()),
            Err(crate::session::TrySendError::Full(frame)) => {
                match tokio::time::timeout_at(deadline.into(), conn.session.send(frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(closed()),
                    Err(_) => {
                        return Err(Status::deadline_exceeded(
                            "deadline passed before the request was sent",
                        ))
                    }
                }
            }
        }
        let Some(mut guard) = guard else {
            return Ok(None);
        };
        guard.written = true;
        // No timer per call: the endpoint's sweeper ends calls whose deadline has passed.
        let outcome = std::future::poll_fn(|cx| conn.pending.poll_outcome(id, cx)).await;
        // The slot is free once the outcome is taken.
        guard.armed = false;
        let result = match outcome {
            Err(st) if st.code() == Code::DeadlineExceeded && st.sent() == Sent::Maybe => {
                // Tell the server it may stop working on it.
                let _ = conn
                    .session
                    .try_send(control_frame_mut(kind::CANCEL, 0, id));
                Err(st)
            }
            r => r.map(Some),
        };
        drop(guard);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;
    use tokio_util::codec::Decoder;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn response(id: u64) -> Frame {
        let mut buf = BytesMut::new();
        let h = Header {
            kind: kind::RESPONSE,
            id,
            ..Header::default()
        };
        encode_frame(&mut buf, &h, &Limits::default(), |_| Ok::<_, ()>(())).expect("encode");
        FrameCodec::new(Limits::default())
            .decode(&mut buf)
            .expect("decode")
            .expect("whole frame")
    }

    #[tokio::test]
    async fn a_sweeper_expires_late_calls_and_ends_with_its_endpoint() {
        let p = Arc::new(Pending::new(tokio_util::sync::CancellationToken::new()));
        let sweeper = tokio::spawn(sweep(p.clone()));
        let id = p.insert(1, Instant::now());
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            std::future::poll_fn(|cx| p.poll_outcome(id, cx)),
        )
        .await
        .expect("expired by the sweeper");
        let st = outcome.expect_err("deadline exceeded");
        assert_eq!(st.code(), Code::DeadlineExceeded);
        p.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), sweeper)
            .await
            .expect("sweeper ends when its endpoint goes")
            .expect("join");
    }

    #[test]
    fn a_slot_takes_one_outcome_wakes_its_caller_and_ignores_stale_ids() {
        let p = Pending::new(tokio_util::sync::CancellationToken::new());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let far = Instant::now() + Duration::from_secs(60);

        let id = p.insert(7, far);
        assert!(p.poll_outcome(id, &mut cx).is_pending());
        p.complete(id, Ok(response(id)));
        p.complete(id, Err(Status::internal("second outcome is ignored")));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        match p.poll_outcome(id, &mut cx) {
            Poll::Ready(Ok(f)) => assert_eq!(f.id, id),
            other => panic!("expected the response, got {other:?}"),
        }
        assert_eq!(p.len(), 0, "slot free once taken");

        // The slot is reused with a new generation: the old id no longer reaches it.
        let id2 = p.insert(7, far);
        assert_eq!(id2 as u32, id as u32);
        assert_ne!(id2, id);
        p.complete(id, Ok(response(id)));
        assert!(
            p.poll_outcome(id2, &mut cx).is_pending(),
            "stale id ignored"
        );

        // A closing session fails its waiting calls; giving up a call frees its slot.
        let other = p.insert(8, far);
        p.fail_session(7, &Status::unavailable("gone"));
        match p.poll_outcome(id2, &mut cx) {
            Poll::Ready(Err(st)) => assert_eq!(st.code(), Code::Unavailable),
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert!(p.remove(other), "still waiting when given up");
        assert_eq!(p.len(), 0);
        p.expire(Instant::now() + Duration::from_secs(120));
        assert_eq!(p.len(), 0);
    }
}
