//! Least active: each call takes the live instance with the fewest calls in flight.

use super::{random_u64, Balancer, Node, Pick};

/// Takes the live instance with the fewest calls in flight ([`Node::in_flight`]); among those
/// tied, one at random in proportion to weight (as Dubbo's `leastactive`). At most two passes
/// over the nodes; no lock, no allocation.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastActive;

impl LeastActive {
    /// A least-active balancer.
    pub fn new() -> Self {
        LeastActive
    }
}

/// The least active of `nodes` (skipping those `call` excludes when `skip_excluded`), or
/// `None` when every one is skipped.
fn least_active(call: &Pick<'_>, nodes: &[Node], skip_excluded: bool) -> Option<usize> {
    let skip = |node: &Node| skip_excluded && call.is_excluded(node);
    // First pass: the fewest calls in flight, and the nodes tied at it.
    let mut first = None;
    let mut least = usize::MAX;
    let mut tied = 0usize;
    let mut tied_weight: u64 = 0;
    for (i, node) in nodes.iter().enumerate() {
        if skip(node) {
            continue;
        }
        let active = node.in_flight();
        if active < least {
            least = active;
            first = Some(i);
            tied = 1;
            tied_weight = u64::from(node.weight());
        } else if active == least {
            tied += 1;
            tied_weight += u64::from(node.weight());
        }
    }
    let first = first?;
    if tied == 1 {
        return Some(first);
    }
    // Second pass: one of the tied at random, in proportion to weight.
    let mut r = ((u128::from(random_u64()) * u128::from(tied_weight)) >> 64) as u64;
    for (i, node) in nodes.iter().enumerate().skip(first) {
        if skip(node) || node.in_flight() != least {
            continue;
        }
        let weight = u64::from(node.weight());
        if r < weight {
            return Some(i);
        }
        r -= weight;
    }
    // Calls started or ended between the passes: the first found will do.
    Some(first)
}

impl Balancer for LeastActive {
    fn pick(&self, call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        let skip = !call.exclude.is_empty();
        least_active(call, nodes, skip).or_else(|| least_active(call, nodes, false))
    }

    fn wants_in_flight(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "least_active"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_shares, call, counts, nodes};
    use super::*;

    #[test]
    fn prefers_the_idle_node() {
        let set = nodes(&[100, 100, 100]);
        set[0].start_call();
        set[0].start_call();
        set[2].start_call();
        let c = counts(&LeastActive::new(), &set, 1000);
        assert_eq!(c, vec![0, 1000, 0]);
        // Once node 1 is the busiest, the others share the calls.
        for _ in 0..3 {
            set[1].start_call();
        }
        let c = counts(&LeastActive::new(), &set, 1000);
        assert_eq!(c, vec![0, 0, 1000]);
        set[0].end_call(None, true);
        set[0].end_call(None, true);
        set[2].end_call(None, true);
        let c = counts(&LeastActive::new(), &set, 10_000);
        assert_eq!(c[1], 0);
        assert_shares(&[c[0], c[2]], &[1, 1], 0.05);
    }

    #[test]
    fn ties_go_by_weight() {
        let weights = [1, 2, 7];
        let set = nodes(&weights);
        let c = counts(&LeastActive::new(), &set, 10_000);
        assert_shares(&c, &weights, 0.05);
    }

    #[test]
    fn excluded_idle_node_is_skipped() {
        let set = nodes(&[100, 100, 100]);
        set[1].start_call();
        set[2].start_call();
        set[2].start_call();
        let b = LeastActive::new();
        for _ in 0..100 {
            assert_eq!(b.pick(&call(None, &[0]), &set), Some(1));
            assert_eq!(b.pick(&call(None, &[0, 1]), &set), Some(2));
            assert_eq!(b.pick(&call(None, &[0, 1, 2]), &set), Some(0));
        }
    }
}
