//! Load balancing: a [`Balancer`] picks, for each call, one of the live instances a client is
//! connected to. It sees each instance with its state ([`Node`]: calls in flight, recent
//! latency, weight, recent failures) and the call ([`Pick`]: service, method, hash key, and the
//! instances to exclude — those a failover already tried).
//!
//! Shipped: [`Random`], [`RoundRobin`], [`WeightedRoundRobin`] (smooth, as nginx),
//! [`WeightedRandom`], [`LeastActive`], [`P2c`] (power of two choices on latency) and
//! [`HashRing`] (consistent hashing with virtual nodes). A user's own is any type that
//! implements [`Balancer`].

use super::instance::Instance;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod hash_ring;
mod least_active;
mod p2c;
mod random;
mod round_robin;
mod weighted;

pub use hash_ring::{HashRing, DEFAULT_REPLICAS};
pub use least_active::LeastActive;
pub use p2c::P2c;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::{WeightedRandom, WeightedRoundRobin};

/// Picks an instance for a call.
///
/// The client calls [`rebuild`](Self::rebuild) with the live set whenever it changes (an
/// instance connects, dies, joins or leaves) and [`pick`](Self::pick) with that same set for
/// every call, so a balancer may keep state built from the set (a ring, weights). `pick` runs
/// on every call, while the client holds the lock of its live set: keep it cheap, lock-free
/// where the algorithm allows, and never call back into the client from it.
pub trait Balancer: Send + Sync + 'static {
    /// The live set changed: `nodes` is what the next [`pick`](Self::pick) calls will get.
    fn rebuild(&self, nodes: &[Node]) {
        let _ = nodes;
    }

    /// The index in `nodes` (never empty) of the instance to call, or `None` to fail the call
    /// with `unavailable`. An instance in [`Pick::exclude`] is picked only when every live
    /// instance is excluded (use [`Pick::is_excluded`]); the shipped balancers then fall back
    /// to their choice among all.
    fn pick(&self, call: &Pick<'_>, nodes: &[Node]) -> Option<usize>;

    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Whether this balancer reads [`Node::latency`]: the client times calls (a clock read per
    /// call) only when one of its balancers does. Default `false`.
    fn wants_latency(&self) -> bool {
        false
    }

    /// Whether this balancer reads [`Node::in_flight`]: the client counts calls in flight per
    /// instance (two atomic operations per call) only when one of its balancers does. Default
    /// `false`.
    fn wants_in_flight(&self) -> bool {
        false
    }
}

/// What a balancer knows about the call it picks for.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    /// The service called.
    pub service: &'a str,
    /// The method called.
    pub method: &'a str,
    /// The call's hash key (see [`hash_key`]), for balancers that keep a key on one instance.
    pub hash_key: Option<u64>,
    /// Keys ([`Node::key`]) of instances not to pick if another is live.
    pub exclude: &'a [u64],
}

impl Pick<'_> {
    /// Whether `node` is one to avoid.
    pub fn is_excluded(&self, node: &Node) -> bool {
        !self.exclude.is_empty() && self.exclude.contains(&node.key())
    }

    /// Whether every node of `nodes` is excluded.
    pub fn all_excluded(&self, nodes: &[Node]) -> bool {
        !self.exclude.is_empty() && nodes.iter().all(|n| self.is_excluded(n))
    }
}

/// A stable 64-bit hash of a key (FNV-1a, then a final mix), the same in every process and
/// version, so clients agree on where a key goes.
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// A 64-bit finaliser (splitmix64's), spreading close inputs apart.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small, fast, non-cryptographic random number per thread (xorshift64*), for the random
/// balancers.
pub(crate) fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9);
            let local = 0u8;
            mix64(t ^ (&local as *const u8 as u64)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A uniform index below `n` (> 0).
pub(crate) fn random_below(n: usize) -> usize {
    ((u128::from(random_u64()) * n as u128) >> 64) as usize
}

/// A uniform random index among the nodes `call` does not exclude (among all of them when it
/// excludes every one). No allocation; one pass over `nodes` only when there are exclusions.
pub(crate) fn random_allowed(call: &Pick<'_>, nodes: &[Node]) -> usize {
    if !call.exclude.is_empty() {
        let allowed = nodes.iter().filter(|n| !call.is_excluded(n)).count();
        if allowed > 0 {
            return nth_allowed(call, nodes, random_below(allowed));
        }
    }
    random_below(nodes.len())
}

/// The index of the `k`-th (from 0) node of `nodes` that `call` does not exclude; 0 if there
/// are not that many.
pub(crate) fn nth_allowed(call: &Pick<'_>, nodes: &[Node], k: usize) -> usize {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| !call.is_excluded(n))
        .nth(k)
        .map_or(0, |(i, _)| i)
}

/// Whether `a` and `b` hold the same nodes in the same order, as far as a balancer's state
/// goes: the same [`Node`]s, or nodes of the same key, weight and endpoint. Compares the `Arc`s
/// first, so a balancer that keeps clones of the nodes of its last rebuild checks a slice of
/// those very nodes without reading them (a kept clone keeps its address from being reused).
pub(crate) fn same_nodes(a: &[Node], b: &[Node]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            Arc::ptr_eq(&x.0, &y.0)
                || (x.key() == y.key()
                    && x.weight() == y.weight()
                    && x.instance().endpoint() == y.instance().endpoint())
        })
}

/// One live instance as a balancer sees it: the instance and its running state. Cheap to
/// clone (one `Arc`).
#[derive(Clone)]
pub struct Node(Arc<NodeInner>);

struct NodeInner {
    key: u64,
    instance: Instance,
    /// Shared with the nodes that replace this one when its instance changes.
    state: Arc<NodeState>,
}

/// The running state of an instance, updated by the client around every call.
#[derive(Default)]
pub struct NodeState {
    in_flight: AtomicUsize,
    /// Exponentially weighted moving average of latency, in nanoseconds (0: none yet).
    ewma_ns: AtomicU64,
    /// Failures since the last success.
    failures: AtomicU32,
    /// Circuit breaker: 0 while closed; otherwise when the open circuit may be probed, in
    /// [`now_ms`] time.
    open_until: AtomicU64,
    /// Circuit breaker: when the half-open probe went out ([`now_ms`] time; 0: none). A probe
    /// out for longer than a cool-down is taken as lost, and another may go.
    probing: AtomicU64,
}

/// Milliseconds since this process first asked (never 0).
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A circuit breaker per instance: after `failures` failed calls in a row an instance is
/// skipped for `cooldown`; then one call probes it (half-open): success closes the circuit,
/// failure opens it for another `cooldown`. While open (or probing) balancers do not see the
/// instance as live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Breaker {
    /// Failures in a row that open the circuit (at least 1).
    pub failures: u32,
    /// How long an open circuit skips the instance before probing it.
    pub cooldown: Duration,
}

impl Breaker {
    /// Opens after `failures` failures in a row, for `cooldown`.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Breaker {
            failures: failures.max(1),
            cooldown,
        }
    }
}

impl Default for Breaker {
    /// 5 failures in a row, 5 s of cool-down.
    fn default() -> Self {
        Breaker::new(5, Duration::from_secs(5))
    }
}

/// Whether a call may go to an instance, under its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admits {
    /// Its circuit is closed.
    Yes,
    /// Its circuit is open, or another call is probing it.
    No,
    /// Its circuit is half-open and this call is the probe.
    Probe,
}

/// Where an instance's circuit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Calls go to it.
    Closed,
    /// Skipped until the cool-down ends.
    Open,
    /// The cool-down ended: the next call probes it (and until that call ends, no other).
    HalfOpen,
}

impl Node {
    /// A node for `instance`, with `key` unique among the nodes of one client.
    pub fn new(key: u64, instance: Instance) -> Self {
        Node(Arc::new(NodeInner {
            key,
            instance,
            state: Arc::default(),
        }))
    }

    /// The same node (key and running state) with a changed instance (weight, tags …).
    pub fn with_instance(&self, instance: Instance) -> Node {
        Node(Arc::new(NodeInner {
            key: self.0.key,
            instance,
            state: self.0.state.clone(),
        }))
    }

    /// Its key: unique among the nodes of one client, stable while the instance stays.
    pub fn key(&self) -> u64 {
        self.0.key
    }

    /// The instance.
    pub fn instance(&self) -> &Instance {
        &self.0.instance
    }

    /// Its weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.0.instance.weight_value()
    }

    /// Calls in flight to it now — counted only when one of the client's balancers
    /// [wants it](Balancer::wants_in_flight) (always 0 otherwise).
    pub fn in_flight(&self) -> usize {
        self.0.state.in_flight.load(Ordering::Relaxed)
    }

    /// Its recent latency (a moving average over the last calls, weighing the last one 1/8),
    /// `None` before its first answer — and always `None` unless one of the client's balancers
    /// [wants it](Balancer::wants_latency).
    pub fn latency(&self) -> Option<Duration> {
        match self.0.state.ewma_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Calls that failed since its last success.
    pub fn failures(&self) -> u32 {
        self.0.state.failures.load(Ordering::Relaxed)
    }

    /// Where its circuit breaker is ([`Circuit::Closed`] when the client has none).
    pub fn circuit(&self) -> Circuit {
        match self.0.state.open_until.load(Ordering::Acquire) {
            0 => Circuit::Closed,
            t if now_ms() < t => Circuit::Open,
            _ => Circuit::HalfOpen,
        }
    }

    /// Whether a call may go to it now under breaker `b`: closed, or half-open and this call
    /// takes the one probe.
    pub(crate) fn admits(&self, now: u64, b: &Breaker) -> Admits {
        let st = &self.0.state;
        match st.open_until.load(Ordering::Acquire) {
            0 => Admits::Yes,
            t if now < t => Admits::No,
            _ => {
                let out = st.probing.load(Ordering::Acquire);
                if out != 0 && now < out.saturating_add(b.cooldown.as_millis() as u64) {
                    return Admits::No;
                }
                match st
                    .probing
                    .compare_exchange(out, now, Ordering::AcqRel, Ordering::Relaxed)
                {
                    Ok(_) => Admits::Probe,
                    Err(_) => Admits::No,
                }
            }
        }
    }

    /// Whether its circuit is not closed (one load).
    pub(crate) fn tripped(&self) -> bool {
        self.0.state.open_until.load(Ordering::Relaxed) != 0
    }

    /// Feeds a call's outcome to the breaker `b` (after [`end_call`](Self::end_call) or
    /// [`record`](Self::record) counted it).
    pub(crate) fn breaker_outcome(&self, ok: bool, b: &Breaker) {
        let st = &self.0.state;
        let open = st.open_until.load(Ordering::Acquire) != 0;
        if ok {
            if open {
                st.open_until.store(0, Ordering::Release);
                st.probing.store(0, Ordering::Release);
                tracing::info!(endpoint = %self.instance().endpoint(), "circuit closed");
            }
            return;
        }
        if open || st.failures.load(Ordering::Relaxed) >= b.failures {
            let until = now_ms() + b.cooldown.as_millis() as u64;
            st.open_until.store(until, Ordering::Release);
            st.probing.store(0, Ordering::Release);
            if !open {
                tracing::warn!(endpoint = %self.instance().endpoint(), failures = b.failures, cooldown = ?b.cooldown, "circuit opened");
            }
        }
    }

    /// A call given up by its caller: no longer in flight (when `counted`), no outcome; a
    /// half-open probe it was is given back for another call to make.
    pub(crate) fn abandon_call(&self, counted: bool) {
        let st = &self.0.state;
        if counted {
            st.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if st.probing.load(Ordering::Relaxed) != 0 {
            st.probing.store(0, Ordering::Release);
        }
    }

    /// Marks a call as started on this node.
    pub fn start_call(&self) {
        self.0.state.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a call as ended without counting it in flight (for a client whose balancers do
    /// not read [`in_flight`](Self::in_flight)): records `latency` and the outcome only.
    pub fn record(&self, latency: Option<Duration>, ok: bool) {
        self.record_outcome(latency, ok);
    }

    /// Marks a call as ended: `latency` when it was answered (by a response or a status from
    /// the server), and whether it succeeded.
    pub fn end_call(&self, latency: Option<Duration>, ok: bool) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.record_outcome(latency, ok);
    }

    fn record_outcome(&self, latency: Option<Duration>, ok: bool) {
        let st = &self.0.state;
        if let Some(l) = latency {
            let sample = (l.as_nanos() as u64).max(1);
            let old = st.ewma_ns.load(Ordering::Relaxed);
            let new = if old == 0 {
                sample
            } else {
                // old + (sample - old) / 8, in signed arithmetic.
                (old as i64 + (sample as i64 - old as i64) / 8).max(1) as u64
            };
            st.ewma_ns.store(new, Ordering::Relaxed);
        }
        if ok {
            if st.failures.load(Ordering::Relaxed) != 0 {
                st.failures.store(0, Ordering::Relaxed);
            }
        } else {
            st.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("key", &self.key())
            .field("endpoint", &self.instance().endpoint().to_string())
            .field("weight", &self.weight())
            .field("in_flight", &self.in_flight())
            .field("latency", &self.latency())
            .field("failures", &self.failures())
            .field("circuit", &self.circuit())
            .finish()
    }
}

/// Helpers for the balancers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Balancer, Instance, Node, Pick};

    /// A node with `key`, at `127.0.0.1:(7000 + key)`, of weight `weight`.
    pub(crate) fn node(key: u64, weight: u32) -> Node {
        let url = format!("tcp://127.0.0.1:{}", 7000 + key);
        Node::new(key, Instance::parse(&url).expect("endpoint").weight(weight))
    }

    /// Nodes with keys 0.. and the weights `weights`.
    pub(crate) fn nodes(weights: &[u32]) -> Vec<Node> {
        (0u64..).zip(weights).map(|(k, &w)| node(k, w)).collect()
    }

    /// A call with `hash_key` that excludes `exclude`.
    pub(crate) fn call<'a>(hash_key: Option<u64>, exclude: &'a [u64]) -> Pick<'a> {
        Pick {
            service: "svc",
            method: "m",
            hash_key,
            exclude,
        }
    }

    /// How many of `picks` plain calls went to each node.
    pub(crate) fn counts(b: &dyn Balancer, nodes: &[Node], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; nodes.len()];
        for _ in 0..picks {
            let i = b.pick(&call(None, &[]), nodes).expect("a pick");
            counts[i] += 1;
        }
        counts
    }

    /// Asserts every count is within `tolerance` (a fraction of `total`) of its expected share
    /// `total * weight / sum(weights)`.
    pub(crate) fn assert_shares(counts: &[usize], weights: &[u32], tolerance: f64) {
        let total: usize = counts.iter().sum();
        let sum: u32 = weights.iter().sum();
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let expected = f64::from(w) / f64::from(sum);
            let got = c as f64 / total as f64;
            assert!(
                (got - expected).abs() <= tolerance,
                "node {i}: share {got:.4}, expected {expected:.4} ± {tolerance} ({counts:?})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{call, node, nodes};
    use super::*;

    fn all() -> Vec<Box<dyn Balancer>> {
        vec![
            Box::new(Random::new()),
            Box::new(RoundRobin::new()),
            Box::new(WeightedRoundRobin::new()),
            Box::new(WeightedRandom::new()),
            Box::new(LeastActive::new()),
            Box::new(P2c::new()),
            Box::new(HashRing::new()),
        ]
    }

    #[test]
    fn one_of_two_excluded_picks_the_other() {
        for b in all() {
            let set = nodes(&[100, 300]);
            b.rebuild(&set);
            for i in 0..200u64 {
                let key = Some(hash_key(&i.to_le_bytes()));
                let hash = if i % 2 == 0 { key } else { None };
                assert_eq!(b.pick(&call(hash, &[0]), &set), Some(1), "{}", b.name());
                assert_eq!(b.pick(&call(hash, &[1]), &set), Some(0), "{}", b.name());
            }
        }
    }

    #[test]
    fn all_excluded_falls_back_to_a_pick() {
        for b in all() {
            let set = nodes(&[100, 200, 300]);
            b.rebuild(&set);
            let mut seen = [false; 3];
            for i in 0..600u64 {
                let hash = (i % 2 == 0).then(|| hash_key(&i.to_le_bytes()));
                let got = b.pick(&call(hash, &[0, 1, 2]), &set);
                let got = got.unwrap_or_else(|| panic!("{} picked none", b.name()));
                assert!(got < 3, "{}", b.name());
                seen[got] = true;
            }
            // Only the fall back: every balancer still spreads calls over all of them.
            assert!(seen.iter().all(|&s| s), "{}: {seen:?}", b.name());
        }
    }

    #[test]
    fn a_single_node_is_always_picked() {
        for b in all() {
            let set = vec![node(9, 100)];
            b.rebuild(&set);
            for i in 0..50u64 {
                assert_eq!(b.pick(&call(Some(i), &[]), &set), Some(0), "{}", b.name());
                assert_eq!(b.pick(&call(None, &[9]), &set), Some(0), "{}", b.name());
            }
        }
    }

    #[test]
    fn picks_without_a_rebuild() {
        // A balancer never rebuilt, or rebuilt with another set, still picks within range.
        for b in all() {
            let set = nodes(&[100, 100, 100, 100]);
            for i in 0..100u64 {
                let got = b.pick(&call(Some(i), &[]), &set).expect("a pick");
                assert!(got < set.len(), "{}", b.name());
            }
            b.rebuild(&set[..2]);
            for i in 0..100u64 {
                let got = b.pick(&call(Some(i), &[]), &set).expect("a pick");
                assert!(got < set.len(), "{}", b.name());
            }
        }
    }

    #[test]
    fn same_nodes_compares_keys() {
        let a = nodes(&[1, 2, 3]);
        let b = nodes(&[1, 2, 3]);
        assert!(same_nodes(&a, &a));
        assert!(same_nodes(&a, &b));
        assert!(!same_nodes(&a, &b[..2]));
        assert!(!same_nodes(&a, &[a[0].clone(), a[2].clone(), a[1].clone()]));
        assert!(!same_nodes(&a, &nodes(&[1, 2, 4])));
    }

    #[test]
    fn random_allowed_skips_excluded() {
        let set = nodes(&[1, 1, 1, 1]);
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[random_allowed(&call(None, &[1, 3]), &set)] += 1;
        }
        assert_eq!(seen[1] + seen[3], 0);
        assert!(seen[0] > 1500 && seen[2] > 1500, "{seen:?}");
        assert_eq!(nth_allowed(&call(None, &[0]), &set, 0), 1);
        assert_eq!(nth_allowed(&call(None, &[0]), &set, 2), 3);
    }
}
