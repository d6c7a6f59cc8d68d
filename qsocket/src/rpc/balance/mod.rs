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
use std::sync::Arc;
use std::time::Duration;

mod round_robin;
// BALANCERS: hash_ring, least_active, p2c, random, weighted (WeightedRandom,
// WeightedRoundRobin) are added here.

pub use round_robin::RoundRobin;

/// Picks an instance for a call.
///
/// The client calls [`rebuild`](Self::rebuild) with the live set whenever it changes (an
/// instance connects, dies, joins or leaves) and [`pick`](Self::pick) with that same set for
/// every call, so a balancer may keep state built from the set (a ring, weights). `pick` runs
/// on every call: keep it cheap, and lock-free where the algorithm allows.
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

/// One live instance as a balancer sees it: the instance and its running state. Cheap to
/// clone (one `Arc`).
#[derive(Clone)]
pub struct Node(Arc<NodeInner>);

struct NodeInner {
    key: u64,
    instance: Instance,
    state: NodeState,
}

/// The running state of an instance, updated by the client around every call.
#[derive(Default)]
pub struct NodeState {
    in_flight: AtomicUsize,
    /// Exponentially weighted moving average of latency, in nanoseconds (0: none yet).
    ewma_ns: AtomicU64,
    /// Failures since the last success.
    failures: AtomicU32,
}

impl Node {
    /// A node for `instance`, with `key` unique among the nodes of one client.
    pub fn new(key: u64, instance: Instance) -> Self {
        Node(Arc::new(NodeInner {
            key,
            instance,
            state: NodeState::default(),
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

    /// Calls in flight to it now.
    pub fn in_flight(&self) -> usize {
        self.0.state.in_flight.load(Ordering::Relaxed)
    }

    /// Its recent latency (a moving average over the last calls, weighing the last one 1/8),
    /// `None` before its first answer.
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

    /// Marks a call as started on this node.
    pub fn start_call(&self) {
        self.0.state.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a call as ended: `latency` when it was answered (by a response or a status from
    /// the server), and whether it succeeded.
    pub fn end_call(&self, latency: Option<Duration>, ok: bool) {
        let st = &self.0.state;
        st.in_flight.fetch_sub(1, Ordering::Relaxed);
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
            .finish()
    }
}
