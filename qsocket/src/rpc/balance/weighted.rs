//! Weighted balancers: [`WeightedRoundRobin`] (smooth, as nginx) and [`WeightedRandom`]. Both
//! give each live instance a share of the calls proportional to its weight
//! ([`Instance::weight`](crate::rpc::Instance::weight)).

use super::{random_u64, same_nodes, Balancer, Node, Pick};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// A uniform number below `n` (> 0).
fn random_below_u64(n: u64) -> u64 {
    ((u128::from(random_u64()) * u128::from(n)) >> 64) as u64
}

/// Smooth weighted round robin, as nginx: every pick adds each instance's weight to its
/// current weight, takes the instance of the highest current weight (the first of those
/// tied) and takes the total weight off it. Each instance gets exactly its share of every
/// run of total-weight calls, spread out rather than in bursts: weights 5, 1, 1 give
/// `a a b a c a a`.
///
/// The current weights are kept per instance under a lock, built by
/// [`rebuild`](Balancer::rebuild) (an instance that stays keeps its current weight; a new one
/// starts at 0) or, when a pick gets a set that is not the last one rebuilt, by that pick.
/// An excluded instance sits the pick out: its current weight does not change.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    state: Mutex<Smooth>,
}

/// The current weights of the nodes of the last rebuild.
#[derive(Debug, Default)]
struct Smooth {
    nodes: Vec<Node>,
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl Smooth {
    fn rebuild(&mut self, nodes: &[Node]) {
        if same_nodes(&self.nodes, nodes) {
            return;
        }
        let old: HashMap<u64, i64> = self
            .nodes
            .iter()
            .map(Node::key)
            .zip(self.current.iter().copied())
            .collect();
        self.current = nodes
            .iter()
            .map(|n| old.get(&n.key()).copied().unwrap_or(0))
            .collect();
        self.weights = nodes.iter().map(|n| i64::from(n.weight())).collect();
        self.nodes = nodes.to_vec();
    }
}

impl WeightedRoundRobin {
    /// A smooth weighted round-robin balancer.
    pub fn new() -> Self {
        WeightedRoundRobin::default()
    }
}

impl Balancer for WeightedRoundRobin {
    fn rebuild(&self, nodes: &[Node]) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rebuild(nodes);
    }

    fn pick(&self, call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        let skip = !call.exclude.is_empty() && !call.all_excluded(nodes);
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *guard;
        st.rebuild(nodes);
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, (current, &weight)) in st.current.iter_mut().zip(&st.weights).enumerate() {
            if skip && call.is_excluded(&nodes[i]) {
                continue;
            }
            *current += weight;
            total += weight;
            if best.is_none_or(|(_, max)| *current > max) {
                best = Some((i, *current));
            }
        }
        let (i, _) = best?;
        st.current[i] -= total;
        Some(i)
    }

    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }
}

/// Sets up to this size are weighed on every pick (one pass, no lock); larger ones through a
/// table of prefix sums built by [`rebuild`](Balancer::rebuild) and a binary search.
const SMALL_SET: usize = 16;

/// Takes a live instance at random with a probability proportional to its weight.
///
/// A set of up to 16 instances, or a call with instances to exclude, is weighed on the spot
/// (one pass over the nodes; no lock, no allocation). A larger set uses prefix sums of the
/// weights built by [`rebuild`](Balancer::rebuild) (or by the first pick that gets a set not
/// rebuilt) and a binary search, or a plain uniform pick when all weights are equal.
#[derive(Debug, Default)]
pub struct WeightedRandom {
    table: RwLock<Arc<Prefix>>,
}

/// The prefix sums of the weights of the nodes of the last rebuild.
#[derive(Debug, Default)]
struct Prefix {
    nodes: Vec<Node>,
    /// `ends[i]`: the sum of the weights of nodes `0..=i`.
    ends: Vec<u64>,
    /// Whether all weights are equal.
    uniform: bool,
}

impl Prefix {
    fn new(nodes: &[Node]) -> Self {
        let mut sum = 0u64;
        let ends = nodes
            .iter()
            .map(|n| {
                sum += u64::from(n.weight());
                sum
            })
            .collect();
        let uniform = nodes.windows(2).all(|w| w[0].weight() == w[1].weight());
        Prefix {
            nodes: nodes.to_vec(),
            ends,
            uniform,
        }
    }

    /// Its pick (`nodes` not empty).
    fn pick(&self) -> usize {
        let n = self.ends.len();
        if self.uniform {
            return super::random_below(n);
        }
        let total = self.ends[n - 1];
        let r = random_below_u64(total);
        // The first node whose range `[end - weight, end)` holds `r`.
        self.ends.partition_point(|&end| end <= r).min(n - 1)
    }
}

impl WeightedRandom {
    /// A weighted random balancer.
    pub fn new() -> Self {
        WeightedRandom::default()
    }

    /// The prefix table for `nodes`, built now if the last is for another set.
    fn table(&self, nodes: &[Node]) -> Arc<Prefix> {
        let table = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if same_nodes(&table.nodes, nodes) {
            return table;
        }
        let table = Arc::new(Prefix::new(nodes));
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table.clone();
        table
    }
}

/// A weighted pick among `nodes`, skipping those `call` excludes when `skip_excluded` (then
/// not all of them).
fn weigh(call: &Pick<'_>, nodes: &[Node], skip_excluded: bool) -> usize {
    let allowed = |n: &&Node| !(skip_excluded && call.is_excluded(n));
    let total: u64 = nodes
        .iter()
        .filter(allowed)
        .map(|n| u64::from(n.weight()))
        .sum();
    let mut r = random_below_u64(total.max(1));
    let mut last = 0;
    for (i, node) in nodes.iter().enumerate() {
        if !allowed(&node) {
            continue;
        }
        let weight = u64::from(node.weight());
        if r < weight {
            return i;
        }
        r -= weight;
        last = i;
    }
    last
}

impl Balancer for WeightedRandom {
    fn rebuild(&self, nodes: &[Node]) {
        if nodes.len() > SMALL_SET {
            self.table(nodes);
        }
    }

    fn pick(&self, call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        if !call.exclude.is_empty() {
            return Some(weigh(call, nodes, !call.all_excluded(nodes)));
        }
        if nodes.len() <= SMALL_SET {
            return Some(weigh(call, nodes, false));
        }
        Some(self.table(nodes).pick())
    }

    fn name(&self) -> &'static str {
        "weighted_random"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_shares, call, counts, node, nodes};
    use super::*;

    fn sequence(b: &dyn Balancer, nodes: &[Node], picks: usize) -> Vec<usize> {
        (0..picks)
            .map(|_| b.pick(&call(None, &[]), nodes).expect("a pick"))
            .collect()
    }

    #[test]
    fn smooth_sequence_as_nginx() {
        let set = nodes(&[5, 1, 1]);
        let b = WeightedRoundRobin::new();
        b.rebuild(&set);
        let nginx = [0, 0, 1, 0, 2, 0, 0];
        for _ in 0..10 {
            assert_eq!(sequence(&b, &set, 7), nginx);
        }
        // Without a rebuild: the first pick builds the state.
        let b = WeightedRoundRobin::new();
        assert_eq!(sequence(&b, &set, 14), [nginx, nginx].concat());
    }

    #[test]
    fn smooth_exact_shares() {
        let weights = [100, 300, 50, 50];
        let set = nodes(&weights);
        let b = WeightedRoundRobin::new();
        // 500 picks: exactly one run of the total weight.
        assert_eq!(counts(&b, &set, 500), vec![100, 300, 50, 50]);
        assert_eq!(counts(&b, &set, 5000), vec![1000, 3000, 500, 500]);
        // Equal weights: plain round robin.
        let set = nodes(&[1, 1, 1]);
        let b = WeightedRoundRobin::new();
        assert_eq!(sequence(&b, &set, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_state_survives_a_rebuild() {
        let set = nodes(&[5, 1, 1]);
        let b = WeightedRoundRobin::new();
        b.rebuild(&set);
        assert_eq!(sequence(&b, &set, 3), [0, 0, 1]);
        // The same instances as new `Node`s (same keys): the run goes on.
        let again = nodes(&[5, 1, 1]);
        b.rebuild(&again);
        assert_eq!(sequence(&b, &again, 4), [0, 2, 0, 0]);
        // A node joins: after one run of the new total, exact shares again.
        let mut grown = again.clone();
        grown.push(node(3, 3));
        b.rebuild(&grown);
        let c = counts(&b, &grown, 1000);
        for (got, want) in c.iter().zip([500, 100, 100, 300]) {
            assert!(got.abs_diff(want) <= 2, "{c:?}");
        }
    }

    #[test]
    fn smooth_skips_excluded() {
        let set = nodes(&[5, 1, 1]);
        let b = WeightedRoundRobin::new();
        let mut c = [0usize; 3];
        for _ in 0..100 {
            c[b.pick(&call(None, &[0]), &set).expect("a pick")] += 1;
        }
        assert_eq!(c, [0, 50, 50]);
        // The excluded node sat out: plain picks go on with the nginx run.
        assert_eq!(sequence(&b, &set, 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn random_by_weight() {
        let weights = [1, 2, 7];
        let set = nodes(&weights);
        let b = WeightedRandom::new();
        b.rebuild(&set);
        assert_shares(&counts(&b, &set, 10_000), &weights, 0.05);
    }

    #[test]
    fn random_by_weight_excluding() {
        let set = nodes(&[1, 2, 7]);
        let b = WeightedRandom::new();
        let mut c = [0usize; 3];
        for _ in 0..10_000 {
            c[b.pick(&call(None, &[2]), &set).expect("a pick")] += 1;
        }
        assert_eq!(c[2], 0);
        assert_shares(&[c[0], c[1]], &[1, 2], 0.05);
    }

    #[test]
    fn random_by_weight_large_set() {
        let mut weights = vec![100; 20];
        weights[19] = 1900;
        let set = nodes(&weights);
        let b = WeightedRandom::new();
        b.rebuild(&set);
        assert_shares(&counts(&b, &set, 20_000), &weights, 0.02);

        // A set not rebuilt: the table follows it.
        let mut other = vec![100; 20];
        other[0] = 1900;
        let other_set: Vec<Node> = (100u64..).zip(&other).map(|(k, &w)| node(k, w)).collect();
        assert_shares(&counts(&b, &other_set, 20_000), &other, 0.02);

        // All equal.
        let even = nodes(&[7; 20]);
        b.rebuild(&even);
        assert_shares(&counts(&b, &even, 20_000), &[7; 20], 0.02);

        // Excluding in a large set.
        let mut c = [0usize; 20];
        for _ in 0..20_000 {
            c[b.pick(&call(None, &[19, 3]), &set).expect("a pick")] += 1;
        }
        assert_eq!(c[19] + c[3], 0);
        let rest: Vec<usize> = (0..19).filter(|&i| i != 3).map(|i| c[i]).collect();
        assert_shares(&rest, &[1; 18], 0.02);
    }
}
