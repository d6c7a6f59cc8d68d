//! The live set of a client: its instances ([`Node`]s), the connections each has, and the
//! snapshot that calls pick from. Connections join and leave it through their session
//! listener; a dead, draining or removed instance leaves the pick set at once.

use super::super::balance::{now_ms, Admits, Balancer, Breaker, Node, Pick};
use super::super::frame::{control_frame_mut, kind, Frame, FLAG_REPLY};
use super::super::instance::Instance;
use super::super::status::{Sent, Status};
use super::conn::{Conn, ConnParts, ConnState};
use super::pending::Pending;
use super::request::Request;
use crate::session::{Ctx, EventListener, Session};
use crate::Error;
use bytes::BytesMut;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// One instance of the client and what is known of its connections.
struct Member {
    node: Node,
    conns: Vec<Conn>,
    /// Why the last connection attempt failed (cleared when a connection opens).
    error: Option<String>,
}

/// What calls pick from: the instances with a usable connection, and those connections.
#[derive(Default)]
struct LiveSet {
    nodes: Vec<Node>,
    conns: Vec<Box<[Conn]>>,
    /// Round robin over the connections of an instance that has several.
    next: AtomicUsize,
}

/// The balancers of a client: one for every service, and overrides per service.
pub(crate) struct Balancers {
    pub(crate) default: Arc<dyn Balancer>,
    pub(crate) per_service: Vec<(String, Arc<dyn Balancer>)>,
}

impl Balancers {
    fn for_service(&self, service: &str) -> &Arc<dyn Balancer> {
        if self.per_service.is_empty() {
            return &self.default;
        }
        self.per_service
            .iter()
            .find(|(s, _)| s == service)
            .map_or(&self.default, |(_, b)| b)
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn Balancer>> {
        std::iter::once(&self.default).chain(self.per_service.iter().map(|(_, b)| b))
    }
}

/// The live set and the members it is made from, shared by the call path, the session
/// listeners and the task that follows the instance source.
pub(crate) struct Live {
    members: Mutex<Vec<Member>>,
    set: Mutex<Arc<LiveSet>>,
    /// Notified whenever the live set or a member's error changes.
    pub(crate) changed: Notify,
    balancers: Balancers,
    pub(crate) closed: AtomicBool,
    /// Whether calls are timed for the balancers.
    pub(crate) wants_latency: bool,
    /// Whether calls in flight are counted per instance for the balancers.
    pub(crate) wants_in_flight: bool,
    /// The circuit breaker per instance, if the client has one.
    pub(crate) breaker: Option<Breaker>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    pub(crate) fn new(balancers: Balancers, breaker: Option<Breaker>) -> Self {
        let wants_latency = balancers.all().any(|b| b.wants_latency());
        let wants_in_flight = balancers.all().any(|b| b.wants_in_flight());
        Live {
            members: Mutex::new(Vec::new()),
            set: Mutex::new(Arc::new(LiveSet::default())),
            changed: Notify::new(),
            balancers,
            closed: AtomicBool::new(false),
            wants_latency,
            wants_in_flight,
            breaker,
        }
    }

    /// Adds an instance (not live until a connection opens).
    pub(crate) fn add(&self, node: Node) {
        lock(&self.members).push(Member {
            node,
            conns: Vec::new(),
            error: None,
        });
    }

    /// Removes instance `key` from the pick set at once; whether it was there.
    pub(crate) fn remove(&self, key: u64) -> bool {
        let mut members = lock(&self.members);
        let before = members.len();
        members.retain(|m| m.node.key() != key);
        let removed = members.len() != before;
        if removed {
            self.refresh(&members);
        }
        removed
    }

    /// Instance `key` changed its weight, group, version or tags.
    pub(crate) fn update(&self, key: u64, instance: Instance) {
        let mut members = lock(&self.members);
        if let Some(m) = members.iter_mut().find(|m| m.node.key() == key) {
            m.node = m.node.with_instance(instance);
            self.refresh(&members);
        }
    }

    /// A connection attempt to instance `key` failed.
    pub(crate) fn failed(&self, key: u64, why: String) {
        let mut members = lock(&self.members);
        if let Some(m) = members.iter_mut().find(|m| m.node.key() == key) {
            m.error = Some(why);
        }
        drop(members);
        self.changed.notify_waiters();
    }

    fn opened(&self, key: u64, conn: Conn) {
        let mut members = lock(&self.members);
        if let Some(m) = members.iter_mut().find(|m| m.node.key() == key) {
            m.conns.push(conn);
            m.error = None;
            self.refresh(&members);
        }
    }

    fn closed_conn(&self, key: u64, session: u64) {
        let mut members = lock(&self.members);
        if let Some(m) = members.iter_mut().find(|m| m.node.key() == key) {
            m.conns.retain(|c| c.session.id() != session);
            self.refresh(&members);
        }
    }

    /// A connection of instance `key` started draining (GOAWAY).
    fn draining(&self) {
        let members = lock(&self.members);
        self.refresh(&members);
    }

    /// Rebuilds the pick set from `members` (called with the members locked, so rebuilds
    /// happen in order) and wakes calls waiting for a connection.
    fn refresh(&self, members: &[Member]) {
        let mut set = LiveSet::default();
        for m in members {
            let usable: Box<[Conn]> = m.conns.iter().filter(|c| c.usable()).cloned().collect();
            if !usable.is_empty() {
                set.nodes.push(m.node.clone());
                set.conns.push(usable);
            }
        }
        for b in self.balancers.all() {
            b.rebuild(&set.nodes);
        }
        *lock(&self.set) = Arc::new(set);
        self.changed.notify_waiters();
    }

    /// Picks an instance and one of its connections for `req`: `Ok(None)` when no instance
    /// is live now.
    pub(crate) fn pick(&self, req: &Request<'_>) -> Result<Option<(Node, Conn)>, Status> {
        // The balancer picks under the lock (no clone of the set per call): keep picks short.
        let set = lock(&self.set);
        let nodes = &set.nodes[..];
        if nodes.is_empty() {
            return Ok(None);
        }
        let i = match req
            .affinity
            .and_then(|k| nodes.iter().position(|n| n.key() == k))
        {
            Some(i) => i,
            None => self.balance(req, nodes)?,
        };
        let (Some(node), Some(conns)) = (nodes.get(i), set.conns.get(i)) else {
            return Err(Status::internal(format!(
                "balancer picked instance {i} of {}",
                nodes.len()
            ))
            .with_sent(Sent::No));
        };
        if let Some(spread) = &req.spread {
            lock(&spread.taken).push(node.key());
        }
        let conn = match &conns[..] {
            [one] => Some(one).filter(|c| c.usable()),
            _ => {
                let n = conns.len();
                let start = set.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| &conns[(start + k) % n]).find(|c| c.usable())
            }
        };
        Ok(conn.map(|c| (node.clone(), c.clone())))
    }

    /// The balancer's pick among `nodes` for `req`.
    #[inline]
    fn balance(&self, req: &Request<'_>, nodes: &[Node]) -> Result<usize, Status> {
        let balancer = self.balancers.for_service(req.service);
        let call = Pick {
            service: req.service,
            method: req.method,
            hash_key: req.hash_key,
            exclude: &req.exclude,
        };
        // The usual call: no open circuit, no sibling attempts, some instance not excluded.
        let tripped = self.breaker.is_some() && nodes.iter().any(Node::tripped);
        if !tripped && req.spread.is_none() && !call.all_excluded(nodes) {
            return balancer
                .pick(&call, nodes)
                .ok_or_else(|| no_pick(balancer, &call));
        }
        self.balance_avoiding(req, nodes, balancer, call)
    }

    /// [`balance`](Self::balance) when some instances are to be avoided beyond the call's
    /// exclusions. They are avoided while another is live; when every live one is excluded,
    /// only the last exclusion holds (a retry never goes to the instance that just failed
    /// while another is live).
    #[inline(never)]
    fn balance_avoiding(
        &self,
        req: &Request<'_>,
        nodes: &[Node],
        balancer: &Arc<dyn Balancer>,
        call: Pick<'_>,
    ) -> Result<usize, Status> {
        // (Rebound: its exclusions may borrow from here.)
        let mut call = call;
        // Instances an open circuit skips (none without a breaker: no look at the nodes).
        let mut blocked = Vec::new();
        if let Some(b) = self
            .breaker
            .as_ref()
            .filter(|_| nodes.iter().any(Node::tripped))
        {
            let now = now_ms();
            for (i, n) in nodes.iter().enumerate() {
                match n.admits(now, b) {
                    Admits::Yes => {}
                    Admits::No => blocked.push(n.key()),
                    // This call probes a half-open circuit: it goes there.
                    Admits::Probe => return Ok(i),
                }
            }
            if blocked.len() == nodes.len() {
                return Err(Status::unavailable(format!(
                    "circuit open for every instance of {}",
                    req.service
                ))
                .with_sent(Sent::No));
            }
        }
        // Attempts of one call sent at once avoid each other's instances too (rare: a copy).
        let taken = req.spread.as_ref().map(|s| lock(&s.taken).clone());
        let avoid: Vec<u64>;
        let extra = taken.as_deref().unwrap_or_default();
        if !extra.is_empty() || !blocked.is_empty() {
            avoid = req
                .exclude
                .iter()
                .chain(extra)
                .chain(&blocked)
                .copied()
                .collect();
            call.exclude = &avoid;
        }
        if call.all_excluded(nodes) {
            // Every live instance is excluded: only the last exclusion (and open circuits)
            // still hold.
            let soft = req.exclude.iter().chain(extra).last().copied();
            let fallback: Vec<u64> = blocked.iter().copied().chain(soft).collect();
            let call = Pick {
                exclude: &fallback,
                ..call
            };
            return pick_unblocked(balancer, &call, nodes, &blocked);
        }
        pick_unblocked(balancer, &call, nodes, &blocked)
    }

    /// Whether some instance is live.
    pub(crate) fn any_live(&self) -> bool {
        self.live_count() > 0
    }

    /// The live instances, as the balancer sees them.
    pub(crate) fn live_nodes(&self) -> Vec<Node> {
        lock(&self.set).nodes.clone()
    }

    /// How many instances are live.
    pub(crate) fn live_count(&self) -> usize {
        lock(&self.set).nodes.len()
    }

    /// Why no call can be sent now: every instance's last connection attempt failed (the
    /// causes, by instance), or there are no instances. `None` while some instance has not
    /// failed yet (it is connecting).
    pub(crate) fn failure(&self) -> Option<Status> {
        let members = lock(&self.members);
        if members.is_empty() {
            return Some(Status::unavailable("the client has no instances").with_sent(Sent::No));
        }
        if members.iter().any(|m| m.error.is_none()) {
            return None;
        }
        let causes: Vec<&str> = members.iter().filter_map(|m| m.error.as_deref()).collect();
        let shown = causes.len().min(3);
        let mut msg = causes[..shown].join("; ");
        if causes.len() > shown {
            msg.push_str(&format!("; and {} more", causes.len() - shown));
        }
        Some(Status::unavailable(msg).with_sent(Sent::No))
    }
}

/// Builds a connection's listener for instance `key`.
pub(crate) struct ListenerParts {
    pub(crate) live: Arc<Live>,
    pub(crate) key: u64,
    pub(crate) pending: Arc<Pending>,
    pub(crate) heartbeat: Duration,
    pub(crate) udp_cap: Option<usize>,
}

impl ListenerParts {
    pub(crate) fn listener(&self) -> RpcClientListener {
        RpcClientListener {
            live: self.live.clone(),
            key: self.key,
            pending: self.pending.clone(),
            state: Arc::new(ConnState {
                draining: AtomicBool::new(false),
                permits: self
                    .udp_cap
                    .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            }),
            heartbeat: self.heartbeat,
        }
    }
}

/// The session listener of an RPC client connection.
pub(crate) struct RpcClientListener {
    live: Arc<Live>,
    key: u64,
    pending: Arc<Pending>,
    state: Arc<ConnState>,
    heartbeat: Duration,
}

impl EventListener for RpcClientListener {
    type In = Frame;
    type Out = BytesMut;

    async fn on_open(&mut self, session: &Session<BytesMut>) -> Result<(), Error> {
        let conn = Conn(Arc::new(ConnParts {
            session: session.clone(),
            pending: self.pending.clone(),
            state: self.state.clone(),
        }));
        self.live.opened(self.key, conn);
        Ok(())
    }

    async fn on_message(&mut self, ctx: &mut Ctx<'_, BytesMut>, frame: Frame) {
        match frame.kind {
            // Responses are completed by the codec; heartbeat replies only prove life.
            kind::HEARTBEAT if frame.flags & FLAG_REPLY == 0 => {
                ctx.send(control_frame_mut(kind::HEARTBEAT, FLAG_REPLY, frame.id));
            }
            kind::GOAWAY => {
                tracing::debug!(session = ctx.session().id(), "server sent goaway");
                self.state.draining.store(true, Ordering::Release);
                self.live.draining();
                if !self.pending.has_calls_on(ctx.session().id()) {
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
        self.live.closed_conn(self.key, session.id());
        let status = Status::unavailable("connection closed").with_sent(Sent::Maybe);
        self.pending.fail_session(session.id(), &status);
    }
}

/// The balancer's pick for `call`, never an instance in `blocked` (a balancer may fall back
/// to an excluded one).
fn pick_unblocked(
    balancer: &Arc<dyn Balancer>,
    call: &Pick<'_>,
    nodes: &[Node],
    blocked: &[u64],
) -> Result<usize, Status> {
    let i = balancer
        .pick(call, nodes)
        .ok_or_else(|| no_pick(balancer, call))?;
    match nodes.get(i) {
        Some(n) if !blocked.is_empty() && blocked.contains(&n.key()) => nodes
            .iter()
            .position(|n| !blocked.contains(&n.key()))
            .ok_or_else(|| {
                Status::unavailable("circuit open for every instance").with_sent(Sent::No)
            }),
        _ => Ok(i),
    }
}

/// The status of a call the balancer found no instance for.
#[cold]
fn no_pick(balancer: &Arc<dyn Balancer>, call: &Pick<'_>) -> Status {
    Status::unavailable(format!(
        "balancer {} found no instance for {}.{}",
        balancer.name(),
        call.service,
        call.method
    ))
    .with_sent(Sent::No)
}
