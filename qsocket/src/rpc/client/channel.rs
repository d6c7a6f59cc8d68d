//! The transport at the bottom of every client: it follows an instance source, keeps
//! connections per instance, picks one through the balancer for each call, and sends the
//! request as a frame on it.

use super::super::balance::{Breaker, Node};
use super::super::codec::Codec;
use super::super::frame::{control_frame_mut, kind, Frame, FrameCodec, FrameError, Header, Limits};
use super::super::instance::{InstanceSource, Snapshot};
use super::super::metadata::MetadataMap;
use super::super::status::{Code, Sent, Status};
use super::conn::{ClientCodec, Conn};
use super::layer::Invoke;
use super::live::{ListenerParts, Live};
use super::pending::{sweep, Pending};
use super::request::{Request, Response};
use super::scratch;
use super::RpcClientConfig;
use crate::session::{Client, Endpoint, Session, Transport, TrySendError, MAX_DATAGRAM};
use crate::Error;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "tls")]
pub(crate) type TlsOpt = Option<Arc<rustls::ClientConfig>>;
#[cfg(not(feature = "tls"))]
pub(crate) type TlsOpt = Option<()>;

/// How long a removed instance's connections may take to finish the calls they carry.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// The transport of a client: connections per instance and the call path over them. It is the
/// innermost [`Invoke`] of every [`RpcClient`](super::RpcClient). Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChanInner>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

pub(crate) struct ChanInner {
    pub(crate) live: Arc<Live>,
    pub(crate) cfg: RpcClientConfig,
    endpoints: Mutex<Vec<EndpointConns>>,
    /// Ends the task that follows the instance source, and the sweepers.
    stop: CancellationToken,
    tls: TlsOpt,
    next_key: AtomicU64,
}

impl Drop for ChanInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sessions to one instance and the calls pending on them.
struct EndpointConns {
    key: u64,
    instance: super::super::instance::Instance,
    client: Option<Client<BytesMut>>,
    pending: Arc<Pending>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Channel {
    pub(crate) fn new(live: Arc<Live>, cfg: RpcClientConfig, tls: TlsOpt) -> Self {
        Channel {
            inner: Arc::new(ChanInner {
                live,
                cfg,
                endpoints: Mutex::new(Vec::new()),
                stop: CancellationToken::new(),
                tls,
                next_key: AtomicU64::new(1),
            }),
        }
    }

    /// Follows `source`: takes its current snapshot now, and every later one in the
    /// background (when `background`) until the client is closed or dropped.
    pub(crate) async fn follow(&self, source: &dyn InstanceSource, background: bool) {
        let mut rx = source.subscribe();
        let first = rx.borrow_and_update().clone();
        self.sync(&first).await;
        if !background {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
                let Some(inner) = weak.upgrade() else { return };
                let snapshot = rx.borrow_and_update().clone();
                Channel { inner }.sync(&snapshot).await;
            }
        });
    }

    /// Makes the instances match `snapshot`: removed ones leave the pick set at once and drain
    /// in the background; new ones start connecting; changed ones are updated in place. One
    /// instance that cannot start does not stop the others.
    async fn sync(&self, snapshot: &Snapshot) {
        let inner = &self.inner;
        let wanted = snapshot.instances();
        let mut added = Vec::new();
        {
            let mut endpoints = lock(&inner.endpoints);
            if inner.live.closed.load(Ordering::Relaxed) {
                return;
            }
            let (keep, removed): (Vec<_>, Vec<_>) = std::mem::take(&mut *endpoints)
                .into_iter()
                .partition(|e| wanted.iter().any(|w| w.endpoint() == e.instance.endpoint()));
            *endpoints = keep;
            for gone in removed {
                inner.live.remove(gone.key);
                tokio::spawn(drain(gone));
            }
            for w in wanted {
                if let Some(e) = endpoints
                    .iter_mut()
                    .find(|e| e.instance.endpoint() == w.endpoint())
                {
                    if &e.instance != w {
                        e.instance = w.clone();
                        inner.live.update(e.key, w.clone());
                    }
                    continue;
                }
                let key = inner.next_key.fetch_add(1, Ordering::Relaxed);
                inner.live.add(Node::new(key, w.clone()));
                let pending = Arc::new(Pending::new(inner.stop.child_token()));
                endpoints.push(EndpointConns {
                    key,
                    instance: w.clone(),
                    client: None,
                    pending: pending.clone(),
                });
                added.push((key, w.endpoint().clone(), pending));
            }
        }
        for (key, ep, pending) in added {
            match self.start_instance(key, &ep, &pending).await {
                Ok(client) => {
                    let unused = {
                        let mut endpoints = lock(&inner.endpoints);
                        match endpoints.iter_mut().find(|e| e.key == key) {
                            Some(e) if !inner.live.closed.load(Ordering::Relaxed) => {
                                tokio::spawn(sweep(pending.clone()));
                                e.client = Some(client);
                                None
                            }
                            // Removed (or the client closed) while it started.
                            _ => Some(client),
                        }
                    };
                    if let Some(client) = unused {
                        pending.stop.cancel();
                        client.close(Duration::from_secs(1)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %ep, error = %e, "rpc client: cannot use instance");
                    inner.live.failed(key, format!("cannot use {ep}: {e}"));
                }
            }
        }
    }

    async fn start_instance(
        &self,
        key: u64,
        ep: &Endpoint,
        pending: &Arc<Pending>,
    ) -> Result<Client<BytesMut>, Error> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let udp = ep.transport() == Transport::Udp;
        let codec = ClientCodec {
            frames: FrameCodec::new(cfg.limits),
            pending: pending.clone(),
            completed: 0,
        };
        let parts = ListenerParts {
            live: inner.live.clone(),
            key,
            pending: pending.clone(),
            heartbeat: cfg.heartbeat,
            udp_cap: udp.then_some(cfg.udp_max_in_flight),
        };
        let mut session_cfg = cfg.session.clone();
        session_cfg.cron_period = Some(cfg.heartbeat);
        session_cfg.session_timeout = Some(cfg.heartbeat.saturating_mul(3));
        session_cfg.max_frame_len = session_cfg.max_frame_len.max(cfg.limits.max_frame());
        session_cfg.session_budget = session_cfg.session_budget.max(session_cfg.min_budget());
        let live = Arc::downgrade(&inner.live);
        let target = ep.to_string();
        let b = Client::builder(&target, codec, move || parts.listener())
            .sessions(cfg.sessions_per_endpoint)
            .config(session_cfg)
            .on_connect_error(move |e| {
                if let Some(live) = live.upgrade() {
                    live.failed(key, connect_failure(&target, e));
                }
            });
        #[cfg(feature = "tls")]
        let b = match &inner.tls {
            Some(t) => b.tls(t.clone()),
            None => b,
        };
        #[cfg(not(feature = "tls"))]
        let _ = &inner.tls;
        b.start().await
    }

    /// Waits until some instance is connected, up to the client's default timeout; fails with
    /// `unavailable` and the causes if none is by then.
    pub async fn ready(&self) -> Result<(), Status> {
        let deadline = Instant::now() + self.inner.cfg.timeout;
        self.wait_live(deadline, false, |live| Ok(live.any_live().then_some(())))
            .await
            .map_err(|st| {
                st.or_else(|| self.inner.live.failure())
                    .unwrap_or_else(|| {
                        Status::unavailable("no connection to any instance within the timeout")
                    })
                    .with_sent(Sent::No)
            })
    }

    /// Waits, up to `deadline`, until `get` finds what it looks for in the live set, looking
    /// again whenever the set changes. Fails with the status of a closed client or of `get`, or
    /// (when `fail_fast`) with the causes once every instance has failed; with `None` when the
    /// deadline passes.
    async fn wait_live<T>(
        &self,
        deadline: Instant,
        fail_fast: bool,
        mut get: impl FnMut(&Live) -> Result<Option<T>, Status>,
    ) -> Result<T, Option<Status>> {
        let live = &self.inner.live;
        loop {
            let changed = live.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = get(live).map_err(Some)? {
                return Ok(found);
            }
            if live.closed.load(Ordering::Relaxed) {
                return Err(Some(
                    Status::unavailable("client closed").with_sent(Sent::No),
                ));
            }
            if fail_fast {
                if let Some(st) = live.failure() {
                    return Err(Some(st));
                }
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return Err(None);
            }
        }
    }

    /// How many instances are live now (connected, not draining).
    pub fn live_instances(&self) -> usize {
        self.inner.live.live_count()
    }

    /// The live instances with their state (calls in flight, latency, failures, circuit), as
    /// the balancer sees them now.
    pub fn live_nodes(&self) -> Vec<Node> {
        self.inner.live.live_nodes()
    }

    /// Calls in flight on all connections.
    pub fn in_flight(&self) -> usize {
        lock(&self.inner.endpoints)
            .iter()
            .map(|e| e.pending.len())
            .sum()
    }

    /// Closes every connection (calls pending on them fail) and stops following the source.
    pub async fn close(&self) {
        let inner = &self.inner;
        inner.live.closed.store(true, Ordering::Relaxed);
        inner.stop.cancel();
        let endpoints = std::mem::take(&mut *lock(&inner.endpoints));
        for e in endpoints {
            inner.live.remove(e.key);
            if let Some(c) = e.client {
                c.close(Duration::from_secs(5)).await;
            }
        }
        inner.live.changed.notify_waiters();
    }

    /// A live instance and connection for `req`, waiting for one (up to the deadline) only
    /// while some instance is still connecting for the first time, or when the call asks to.
    async fn conn(&self, req: &Request<'_>) -> Result<(Node, Conn), Status> {
        let wait = req.options.wait_for_connection || self.inner.cfg.wait_for_connection;
        self.wait_live(req.deadline, !wait, |live| live.pick(req))
            .await
            .map_err(|st| {
                st.unwrap_or_else(|| {
                    let why = self
                        .inner
                        .live
                        .failure()
                        .map(|s| format!(": {}", s.message()))
                        .unwrap_or_default();
                    Status::unavailable(format!(
                        "no connection to any instance before the deadline{why}"
                    ))
                    .with_sent(Sent::No)
                })
            })
    }
}

/// The cause of a failed connection attempt, as calls report it.
fn connect_failure(target: &str, e: &Error) -> String {
    if let Error::Io(io) = e {
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return format!("connection refused to {target}");
        }
    }
    format!("cannot connect to {target}: {e}")
}

/// Lets a removed instance's connections finish the calls they carry, then closes them.
async fn drain(gone: EndpointConns) {
    let until = Instant::now() + DRAIN_GRACE;
    while gone.pending.len() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(c) = gone.client {
        c.close(Duration::from_secs(1)).await;
    }
    gone.pending.stop.cancel();
}

/// One call on a connection, from its pick to its outcome. The call's future keeps only this
/// across its waits (the work between them is done by plain functions), so the future stays
/// small: every caller that awaits it moves it.
///
/// Dropped before an outcome (the caller gave up, the deadline passed), it removes the call
/// from its pending table and tells the server, which may then stop working on it. Either way
/// it reports how the call ended to the instance's state.
struct CallGuard<'a> {
    conn: Conn,
    node: &'a Node,
    /// The client's circuit breaker, fed the call's outcome.
    breaker: Option<&'a Breaker>,
    /// When the call started: its latency and the time remaining it sends count from here.
    started: Instant,
    /// A UDP call's slot, held until the call ends (a UDP session bounds its calls in
    /// flight).
    _permit: Option<OwnedSemaphorePermit>,
    id: u64,
    /// Still in the pending table.
    armed: bool,
    /// The request was queued on the connection (so the server may be working on it).
    written: bool,
    /// Whether the waker given to the pending table is still this task's (no wait since).
    registered: bool,
    /// Whether the call is counted in its node's calls in flight.
    counted: bool,
    /// Whether the instance did its part (`None`: given up by its caller, which counts as
    /// neither), and the latency when it answered.
    ok: Option<bool>,
    latency: Option<Duration>,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.armed && self.conn.pending.remove(self.id) && self.written {
            let _ = self
                .conn
                .session
                .try_send(control_frame_mut(kind::CANCEL, 0, self.id));
        }
        match self.ok {
            Some(ok) => {
                if self.counted {
                    self.node.end_call(self.latency, ok);
                } else {
                    self.node.record(self.latency, ok);
                }
                if let Some(b) = self.breaker {
                    self.node.breaker_outcome(ok, b);
                }
            }
            // Given up by its caller (a race's loser, a cancelled task): the instance did
            // nothing wrong, nor proved anything.
            None => self.node.abandon_call(self.counted),
        }
        // The last call on a connection the server asked us to leave closes it.
        if self.conn.state.draining.load(Ordering::Acquire)
            && !self.conn.pending.has_calls_on(self.conn.session.id())
        {
            self.conn.session.close();
        }
    }
}

impl CallGuard<'_> {
    /// Registers the call (with the caller's waker, so the first wait for the outcome needs
    /// no look at the table) and queues its request. `Ok(Some(frame))`: the connection is
    /// behind; the caller waits for room to send `frame`.
    fn start(
        &mut self,
        req: &Request<'_>,
        inner: &ChanInner,
        cx: &mut Context<'_>,
    ) -> Result<Option<BytesMut>, Status> {
        let oneway = req.options.oneway;
        if inner.live.wants_in_flight {
            self.node.start_call();
            self.counted = true;
        }
        self.ok = Some(false);
        if !oneway {
            let session = self.conn.session.id();
            let waker = Some(cx.waker().clone());
            self.id = self.conn.pending.insert(session, req.deadline, waker);
            self.armed = true;
            self.registered = true;
            // A session that closed after we picked it has already failed its calls (or is
            // about to, under the closed flag): do not wait on it.
            if self.conn.session.is_closed() {
                return Err(Status::unavailable("connection closed").with_sent(Sent::No));
            }
        }
        let limits = &inner.cfg.limits;
        send_request(
            &self.conn.session,
            req,
            self.id,
            self.started,
            oneway,
            limits,
        )
    }

    fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, Status>> {
        if std::mem::replace(&mut self.registered, false) {
            // An outcome that arrives now wakes the waker registered with the call.
            return Poll::Pending;
        }
        self.conn.pending.poll_outcome(self.id, cx)
    }

    /// The response of the call from its outcome.
    fn finish(
        &mut self,
        outcome: Result<Frame, Status>,
        wants_latency: bool,
    ) -> Result<Response, Status> {
        // The slot is free once the outcome is taken.
        self.armed = false;
        let frame = match outcome {
            Ok(frame) => frame,
            Err(st) => {
                self.ok = Some(false);
                if st.code() == Code::DeadlineExceeded && st.sent() == Sent::Maybe {
                    // Tell the server it may stop working on it.
                    let _ = self
                        .conn
                        .session
                        .try_send(control_frame_mut(kind::CANCEL, 0, self.id));
                }
                return Err(st);
            }
        };
        self.latency = wants_latency.then(|| self.started.elapsed());
        let yes = |st: Status| st.with_sent(Sent::Yes);
        let metadata = if frame.metadata_bytes().is_empty() {
            MetadataMap::new()
        } else {
            MetadataMap::from_wire(&frame.metadata_bytes())
                .ok_or_else(|| yes(Status::internal("malformed metadata in the response")))?
        };
        if frame.status != 0 {
            let code = Code::from_u16(frame.status);
            // The instance answered; it did its part unless it says it cannot.
            let failed = matches!(
                code,
                Code::Unavailable | Code::Internal | Code::Unknown | Code::DeadlineExceeded
            );
            self.ok = Some(!failed);
            let msg = String::from_utf8_lossy(&frame.body()).into_owned();
            return Err(yes(Status::new(code, msg)));
        }
        let codec = Codec::from_id(frame.codec).ok_or_else(|| {
            yes(Status::internal(format!(
                "response in unknown codec {}",
                frame.codec
            )))
        })?;
        self.ok = Some(true);
        Ok(Response {
            codec,
            body: frame.body(),
            metadata,
        })
    }
}

/// Waits for room on a connection that is behind and sends `frame`, up to `deadline`.
async fn send_behind(
    session: Session<BytesMut>,
    frame: BytesMut,
    deadline: Instant,
) -> Result<(), Status> {
    match tokio::time::timeout_at(deadline.into(), session.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(closed_unsent()),
        Err(_) => Err(late_unsent()),
    }
}

/// The status of a request whose connection closed before it was queued.
fn closed_unsent() -> Status {
    Status::unavailable("connection closed before the request was sent").with_sent(Sent::No)
}

/// The status of a request whose deadline passed before it was queued.
fn late_unsent() -> Status {
    Status::deadline_exceeded("deadline passed before the request was sent").with_sent(Sent::No)
}

/// A call slot on a UDP connection, waiting up to `deadline`.
async fn udp_slot(sem: Arc<Semaphore>, deadline: Instant) -> Result<OwnedSemaphorePermit, Status> {
    match tokio::time::timeout_at(deadline.into(), sem.acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(_)) => Err(Status::unavailable("connection closed").with_sent(Sent::No)),
        Err(_) => Err(
            Status::deadline_exceeded("deadline passed waiting for a udp call slot")
                .with_sent(Sent::No),
        ),
    }
}

impl Invoke for Channel {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        let inner = &*self.inner;
        // No instance until this attempt has one (a retried request names the last one).
        req.instance = None;
        // (Each temporary in its own scope, so none stays in the future's state.)
        let (node, conn) = 'pick: {
            if let Some(c) = inner.live.pick(req)? {
                break 'pick c;
            }
            // Rare (no live connection now): boxed, so its state does not enlarge every call's.
            Box::pin(self.conn(req)).await?
        };
        // One clock read for a first attempt: the typed front's.
        let mut started = req.now.take().unwrap_or_else(Instant::now);
        // The request keeps the instance; the call borrows it from there.
        req.instance = Some(node);
        let req: &Request<'_> = req;
        let Some(node) = req.instance.as_ref() else {
            return Err(Status::internal("instance lost").with_sent(Sent::No));
        };
        // A call that never gets a UDP slot never starts: the instance hears nothing of it.
        let permit = match &conn.state.permits {
            Some(sem) => {
                // UDP only: boxed, so its state does not enlarge every call's.
                let permit = Box::pin(udp_slot(sem.clone(), req.deadline)).await?;
                started = Instant::now();
                Some(permit)
            }
            None => None,
        };
        let mut call = CallGuard {
            conn,
            node,
            breaker: inner.live.breaker.as_ref(),
            started,
            _permit: permit,
            id: 0,
            armed: false,
            written: false,
            registered: false,
            counted: false,
            ok: None,
            latency: None,
        };
        let start = std::future::poll_fn(|cx| Poll::Ready(call.start(req, inner, cx)));
        // Rare (the connection is behind): boxed, so its state does not enlarge every call's.
        let wait = match start.await {
            Ok(None) => None,
            Ok(Some(frame)) => {
                let session = call.conn.session.clone();
                Some(Box::pin(send_behind(session, frame, req.deadline)))
            }
            Err(st) => return Err(st),
        };
        if let Some(wait) = wait {
            // The connection is behind: wait for room.
            call.registered = false;
            // Dropped while waiting for room: given up by its caller.
            call.ok = None;
            let sent = wait.await;
            call.ok = Some(false);
            sent?;
        }
        call.written = true;
        if req.options.oneway {
            call.ok = Some(true);
            return Ok(Response {
                codec: req.codec,
                ..Response::default()
            });
        }
        // Dropped from here on before an outcome, the call was given up by its caller.
        call.ok = None;
        // No timer per call: the instance's sweeper ends calls whose deadline has passed.
        let outcome = std::future::poll_fn(|cx| call.poll_outcome(cx)).await;
        call.finish(outcome, inner.live.wants_latency)
    }
}

/// Requests queued on a byte stream share one buffer up to this size (written out in one
/// go by the connection's writer); a larger frame, or one that would make it larger, starts a
/// buffer of its own.
const SHARED_BUFFER: usize = 64 * 1024;

/// Queues the request frame of `req` on `session`, with call id `id` and the time remaining
/// from `now` (whole milliseconds, rounded up; none for a oneway call). On a byte stream the
/// frame is written straight into the buffer still waiting for the writer, when there is
/// one; otherwise it is a slice of this thread's scratch chunk. `Ok(Some(frame))`: the
/// connection is behind, the caller waits for room to send `frame`. Fails unsent when the
/// deadline has passed, the frame cannot be made, or the connection is closed.
fn send_request(
    session: &Session<BytesMut>,
    req: &Request<'_>,
    id: u64,
    now: Instant,
    oneway: bool,
    limits: &Limits,
) -> Result<Option<BytesMut>, Status> {
    let remaining = req.deadline.saturating_duration_since(now);
    if remaining.is_zero() {
        return Err(late_unsent());
    }
    // Whole milliseconds, rounded up, so a sub-millisecond remainder is not "no deadline".
    // (In 64-bit arithmetic: a 128-bit division costs more than the rest of the header.)
    let ms = remaining
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(remaining.subsec_nanos().div_ceil(1_000_000)));
    // Nobody waits for a oneway call: it carries no deadline, and its handler runs to the
    // end (PROTOCOL.md, Deadlines).
    let timeout_ms = if oneway {
        0
    } else {
        u32::try_from(ms).unwrap_or(u32::MAX)
    };
    let h = Header {
        kind: if oneway { kind::ONEWAY } else { kind::REQUEST },
        codec: req.codec.id(),
        id,
        timeout_ms,
        service: req.service,
        method: req.method,
        metadata: req.metadata.as_wire(),
        ..Header::default()
    };
    let refused = |e: FrameError| Status::invalid_argument(format!("request: {e}"));
    h.check(limits)
        .map_err(|e| refused(e).with_sent(Sent::No))?;
    let body = &req.body[..];
    if body.len() > limits.max_body as usize {
        return Err(refused(FrameError::TooLarge {
            what: "body",
            len: body.len(),
            max: limits.max_body as usize,
        })
        .with_sent(Sent::No));
    }
    let len = h.len() + body.len();
    let transport = session.transport();
    if transport == Transport::Udp && len > MAX_DATAGRAM {
        return Err(Status::resource_exhausted(format!(
            "request of {len} bytes does not fit in a UDP datagram ({MAX_DATAGRAM} max)"
        ))
        .with_sent(Sent::No));
    }
    // Frames on a byte stream may share a buffer; elsewhere each travels on its own.
    let stream = matches!(transport, Transport::Tcp | Transport::Tls);
    let queued = session.try_send_with(|last| match last {
        Some(buf) if stream && buf.len() + len <= SHARED_BUFFER => {
            h.put_frame(body, buf);
            None
        }
        _ => scratch::encode(len, |buf| {
            h.put_frame(body, buf);
            Ok::<_, ()>(())
        })
        .ok(),
    });
    match queued {
        Ok(()) => Ok(None),
        Err(TrySendError::Full(Some(frame))) => Ok(Some(frame)),
        Err(_) => Err(closed_unsent()),
    }
}
