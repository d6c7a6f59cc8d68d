//! Consistent hashing: calls with the same hash key go to the same live instance, and a change
//! in the set moves only the keys of the instances that came or went.

use super::{mix64, random_allowed, same_nodes, Balancer, Node, Pick};
use crate::rpc::DEFAULT_WEIGHT;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

/// The virtual nodes (points on the ring) of an instance of the default weight.
pub const DEFAULT_REPLICAS: u32 = 160;

/// Weights above this count as this many when scaling an instance's points, which keeps a
/// huge weight from making a huge ring.
const MAX_SCALED_WEIGHT: u64 = 100 * DEFAULT_WEIGHT as u64;

/// Consistent hashing with virtual nodes (a "ketama" ring): a call with a hash key
/// ([`Pick::hash_key`]) goes to the instance owning the first point on the ring at or after
/// the key, wrapping around. The same key keeps going to the same instance while it lives, and
/// when one instance leaves only its keys move (about 1/N of them, spread over the others);
/// when it comes back they return.
///
/// Each instance gets `replicas × weight / 100` points (default [`DEFAULT_REPLICAS`] = 160 for
/// the default weight 100; at least 1, weights above 10 000 count as 10 000), so an instance's
/// share of keys follows its weight. Its points come from its endpoint
/// (`instance().endpoint().to_string()`) only, not from the node's key or its place in the set:
/// clients with the same instances agree on where every key goes, and an instance that leaves
/// and comes back gets the same points.
///
/// A call excluding the key's instance (a failover) goes on clockwise to the next point of an
/// instance not excluded: the instance the key would move to if its own left. A call without
/// a hash key goes to a live instance at random.
///
/// The ring is built by [`rebuild`](Balancer::rebuild) (or by the first pick that gets a set
/// not rebuilt) and shared behind a read-write lock; a pick holds the lock only to clone an
/// `Arc`, then binary-searches the ring.
pub struct HashRing {
    replicas: u32,
    ring: RwLock<Arc<Ring>>,
}

/// The ring for the nodes of the last rebuild: sorted points and, for each, the index of the
/// node owning it.
#[derive(Default)]
struct Ring {
    nodes: Vec<Node>,
    points: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    fn new(nodes: &[Node], replicas: u32) -> Self {
        let mut points: Vec<(u64, u64, u32)> = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let id = super::hash_key(node.instance().endpoint().to_string().as_bytes());
            let count = points_for(replicas, node.weight());
            points.reserve(count as usize);
            // The point of virtual node r: splitmix64's r-th output seeded with the identity.
            let mut state = id;
            for _ in 0..count {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                points.push((mix64(state), id, i as u32));
            }
        }
        // Two instances on one point (rare): the one of the lower identity first, the same in
        // every client.
        points.sort_unstable();
        Ring {
            nodes: nodes.to_vec(),
            points: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.2).collect(),
        }
    }

    /// The index of the node owning the first point at or after `key` whose node `call` does
    /// not exclude (or just the first point's, when it excludes every node).
    fn find(&self, key: u64, call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let mut at = self.points.partition_point(|&p| p < key);
        if at == n {
            at = 0;
        }
        let owner = self.owners[at] as usize;
        if call.exclude.is_empty() || !call.is_excluded(&nodes[owner]) || call.all_excluded(nodes) {
            return Some(owner);
        }
        (1..n)
            .map(|k| self.owners[(at + k) % n] as usize)
            .find(|&o| !call.is_excluded(&nodes[o]))
            .or(Some(owner))
    }
}

/// The points of an instance of weight `weight`.
fn points_for(replicas: u32, weight: u32) -> u32 {
    let scaled =
        u64::from(replicas) * u64::from(weight).min(MAX_SCALED_WEIGHT) / u64::from(DEFAULT_WEIGHT);
    scaled.clamp(1, u64::from(u32::MAX)) as u32
}

impl HashRing {
    /// A ring of [`DEFAULT_REPLICAS`] points per instance of the default weight.
    pub fn new() -> Self {
        HashRing::with_replicas(DEFAULT_REPLICAS)
    }

    /// A ring of `replicas` (at least 1) points per instance of the default weight. More
    /// points spread keys more evenly and cost memory and rebuild time.
    pub fn with_replicas(replicas: u32) -> Self {
        HashRing {
            replicas: replicas.max(1),
            ring: RwLock::new(Arc::new(Ring::default())),
        }
    }

    /// The points per instance of the default weight.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The ring for `nodes`, built now if the last is for another set.
    fn ring(&self, nodes: &[Node]) -> Arc<Ring> {
        let ring = self
            .ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if same_nodes(&ring.nodes, nodes) {
            return ring;
        }
        let ring = Arc::new(Ring::new(nodes, self.replicas));
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = ring.clone();
        ring
    }
}

impl Default for HashRing {
    fn default() -> Self {
        HashRing::new()
    }
}

impl fmt::Debug for HashRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self
            .ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        f.debug_struct("HashRing")
            .field("replicas", &self.replicas)
            .field("nodes", &ring.nodes.len())
            .field("points", &ring.points.len())
            .finish()
    }
}

impl Balancer for HashRing {
    fn rebuild(&self, nodes: &[Node]) {
        self.ring(nodes);
    }

    fn pick(&self, call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        match call.hash_key {
            None => Some(random_allowed(call, nodes)),
            Some(key) => self.ring(nodes).find(key, call, nodes),
        }
    }

    fn name(&self) -> &'static str {
        "hash_ring"
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash_key;
    use super::super::testing::{assert_shares, call, counts, node, nodes};
    use super::*;

    const KEYS: u64 = 10_000;

    fn key(i: u64) -> u64 {
        hash_key(format!("user-{i}").as_bytes())
    }

    /// Where each of the keys goes, as node keys.
    fn placement(b: &HashRing, set: &[Node]) -> Vec<u64> {
        (0..KEYS)
            .map(|i| set[b.pick(&call(Some(key(i)), &[]), set).expect("a pick")].key())
            .collect()
    }

    #[test]
    fn same_key_same_node() {
        let set = nodes(&[100; 5]);
        let b = HashRing::new();
        b.rebuild(&set);
        for i in 0..100 {
            let first = b.pick(&call(Some(key(i)), &[]), &set);
            for _ in 0..10 {
                assert_eq!(b.pick(&call(Some(key(i)), &[]), &set), first);
            }
        }
    }

    #[test]
    fn clients_agree_whatever_the_order_and_keys() {
        let set = nodes(&[100; 6]);
        // Another client: the same endpoints, other node keys, another order.
        let other: Vec<Node> = set
            .iter()
            .rev()
            .map(|n| Node::new(n.key() + 1000, n.instance().clone()))
            .collect();
        let (a, b) = (HashRing::new(), HashRing::new());
        for i in 0..1000 {
            let x = a.pick(&call(Some(key(i)), &[]), &set).expect("a pick");
            let y = b.pick(&call(Some(key(i)), &[]), &other).expect("a pick");
            assert_eq!(set[x].instance(), other[y].instance());
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let set = nodes(&[100; 10]);
        let placed = placement(&HashRing::new(), &set);
        let mut c = vec![0usize; 10];
        for k in placed {
            c[k as usize] += 1;
        }
        assert_shares(&c, &[1; 10], 0.05);
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let set = nodes(&[100; 10]);
        let b = HashRing::new();
        b.rebuild(&set);
        let before = placement(&b, &set);

        let fewer: Vec<Node> = set.iter().filter(|n| n.key() != 4).cloned().collect();
        b.rebuild(&fewer);
        let after = placement(&b, &fewer);
        let mut moved = 0;
        for (was, now) in before.iter().zip(&after) {
            if *was == 4 {
                assert_ne!(*now, 4);
                moved += 1;
            } else {
                assert_eq!(was, now, "a key not on the removed node moved");
            }
        }
        let share = f64::from(moved) / KEYS as f64;
        assert!((0.05..=0.15).contains(&share), "{share}");
        // Its keys spread over the others rather than all landing on one.
        let takers: std::collections::HashSet<u64> = before
            .iter()
            .zip(&after)
            .filter(|(was, _)| **was == 4)
            .map(|(_, now)| *now)
            .collect();
        assert!(takers.len() >= 5, "{takers:?}");

        // It comes back (a new node, a new key, the same endpoint): its keys come back.
        let mut again = fewer.clone();
        again.insert(2, Node::new(44, set[4].instance().clone()));
        b.rebuild(&again);
        let back: Vec<u64> = placement(&b, &again)
            .into_iter()
            .map(|k| if k == 44 { 4 } else { k })
            .collect();
        assert_eq!(back, before);
    }

    #[test]
    fn adding_a_node_takes_only_keys_for_itself() {
        let set = nodes(&[100; 10]);
        let b = HashRing::new();
        let before = placement(&b, &set);
        let mut more = set.clone();
        more.push(node(10, 100));
        let after = placement(&b, &more);
        let mut moved = 0;
        for (was, now) in before.iter().zip(&after) {
            if was != now {
                assert_eq!(*now, 10);
                moved += 1;
            }
        }
        let share = f64::from(moved) / KEYS as f64;
        assert!((0.04..=0.14).contains(&share), "{share}");
    }

    #[test]
    fn exclusion_goes_where_removal_would() {
        let set = nodes(&[100; 10]);
        let b = HashRing::new();
        let fewer_ring = HashRing::new();
        for i in 0..1000 {
            let k = key(i);
            let owner = b.pick(&call(Some(k), &[]), &set).expect("a pick");
            let excluded = [set[owner].key()];
            let next = b.pick(&call(Some(k), &excluded), &set).expect("a pick");
            assert_ne!(next, owner);
            for _ in 0..3 {
                assert_eq!(b.pick(&call(Some(k), &excluded), &set), Some(next));
            }
            let fewer: Vec<Node> = set
                .iter()
                .filter(|n| n.key() != excluded[0])
                .cloned()
                .collect();
            if i % 100 == 0 {
                let moved = fewer_ring
                    .pick(&call(Some(k), &[]), &fewer)
                    .expect("a pick");
                assert_eq!(fewer[moved].key(), set[next].key());
            }
            // Excluding all: the key's own node.
            let all: Vec<u64> = set.iter().map(Node::key).collect();
            assert_eq!(b.pick(&call(Some(k), &all), &set), Some(owner));
        }
    }

    #[test]
    fn weight_scales_the_share() {
        let weights = [100, 300];
        let set = nodes(&weights);
        let b = HashRing::new();
        let mut c = vec![0usize; 2];
        for k in placement(&b, &set) {
            c[k as usize] += 1;
        }
        assert_shares(&c, &weights, 0.05);
        assert_eq!(points_for(160, 100), 160);
        assert_eq!(points_for(160, 50), 80);
        assert_eq!(points_for(160, 1), 1);
        assert_eq!(points_for(160, u32::MAX), 16_000);
        assert_eq!(points_for(1, 100), 1);
        assert_eq!(Ring::new(&set, 160).points.len(), 640);
        assert_eq!(HashRing::with_replicas(0).replicas(), 1);
    }

    #[test]
    fn without_a_key_random() {
        let set = nodes(&[100, 100, 100]);
        let c = counts(&HashRing::new(), &set, 10_000);
        assert_shares(&c, &[1, 1, 1], 0.05);
    }

    #[test]
    fn a_set_not_rebuilt_is_rebuilt() {
        let set = nodes(&[100; 10]);
        let fewer: Vec<Node> = set.iter().filter(|n| n.key() != 7).cloned().collect();
        let b = HashRing::new();
        b.rebuild(&set);
        let stale = placement(&b, &fewer);
        let fresh = placement(&HashRing::new(), &fewer);
        assert_eq!(stale, fresh);
        assert!(!stale.contains(&7));
    }
}
