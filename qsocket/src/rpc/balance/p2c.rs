//! Power of two choices: each call compares two live instances drawn at random and takes the
//! one that looks faster now.

use super::{nth_allowed, random_below, Balancer, Node, Pick};

/// Power of two choices on latency: draws two distinct live instances at random and takes the
/// one of lower cost, cost = [`Node::latency`] × ([`Node::in_flight`] + 1). An instance with no
/// latency yet costs 0, so a new instance gets tried at once; equal costs go to the one with
/// fewer calls in flight, then to the first drawn. With one live instance, that one. No lock,
/// no allocation.
///
/// Unlike always taking the cheapest, drawing two keeps a burst of calls from all landing on
/// the one instance that looked best when they started.
#[derive(Debug, Default, Clone, Copy)]
pub struct P2c;

impl P2c {
    /// A power-of-two-choices balancer.
    pub fn new() -> Self {
        P2c
    }
}

/// The cost of calling `node` now: its latency in nanoseconds (0 when unknown) times its calls
/// in flight plus one, then its calls in flight for ties.
fn cost(node: &Node) -> (u128, usize) {
    let active = node.in_flight();
    let latency = node.latency().map_or(0, |l| l.as_nanos());
    (latency.saturating_mul(active as u128 + 1), active)
}

/// Two distinct indices below `n` (≥ 2), uniformly at random.
fn two_below(n: usize) -> (usize, usize) {
    let a = random_below(n);
    let mut b = random_below(n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

impl Balancer for P2c {
    fn pick(&self, call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        let allowed = if call.exclude.is_empty() {
            nodes.len()
        } else {
            nodes.iter().filter(|n| !call.is_excluded(n)).count()
        };
        let (a, b) = if allowed == nodes.len() || allowed == 0 {
            // No exclusion applies (or every node is excluded: then all are candidates).
            if nodes.len() < 2 {
                return Some(0);
            }
            two_below(nodes.len())
        } else if allowed == 1 {
            return Some(nth_allowed(call, nodes, 0));
        } else {
            let (a, b) = two_below(allowed);
            (nth_allowed(call, nodes, a), nth_allowed(call, nodes, b))
        };
        Some(if cost(&nodes[b]) < cost(&nodes[a]) {
            b
        } else {
            a
        })
    }

    fn wants_latency(&self) -> bool {
        true
    }

    fn wants_in_flight(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "p2c"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_shares, call, counts, nodes};
    use super::*;
    use std::time::Duration;

    fn answer(node: &Node, ms: u64, times: usize) {
        for _ in 0..times {
            node.start_call();
            node.end_call(Some(Duration::from_millis(ms)), true);
        }
    }

    #[test]
    fn prefers_the_fast_node() {
        let set = nodes(&[100, 100, 100]);
        answer(&set[0], 1, 20);
        answer(&set[1], 50, 20);
        answer(&set[2], 50, 20);
        let c = counts(&P2c::new(), &set, 10_000);
        // The fast node wins every draw it is in: 2 draws of 3.
        assert!(c[0] > 6_000, "{c:?}");
        assert_shares(&c, &[4, 1, 1], 0.05);

        // With two, it wins every time.
        let c = counts(&P2c::new(), &set[..2], 1000);
        assert_eq!(c, vec![1000, 0]);
    }

    #[test]
    fn calls_in_flight_count() {
        let set = nodes(&[100, 100]);
        answer(&set[0], 1, 20);
        answer(&set[1], 50, 20);
        // 1 ms × 100 in flight costs more than 50 ms idle.
        for _ in 0..99 {
            set[0].start_call();
        }
        assert_eq!(counts(&P2c::new(), &set, 1000), vec![0, 1000]);
    }

    #[test]
    fn new_node_gets_tried() {
        let set = nodes(&[100, 100]);
        answer(&set[0], 1, 20);
        assert_eq!(counts(&P2c::new(), &set, 100), vec![0, 100]);
    }

    #[test]
    fn equal_state_is_even() {
        let set = nodes(&[100, 100, 100, 100]);
        let c = counts(&P2c::new(), &set, 10_000);
        assert_shares(&c, &[1, 1, 1, 1], 0.05);
        for n in &set {
            answer(n, 10, 5);
        }
        let c = counts(&P2c::new(), &set, 10_000);
        assert_shares(&c, &[1, 1, 1, 1], 0.05);
    }

    #[test]
    fn draws_among_the_allowed() {
        let set = nodes(&[100, 100, 100, 100]);
        answer(&set[0], 1, 5);
        answer(&set[1], 5, 5);
        answer(&set[2], 50, 5);
        answer(&set[3], 50, 5);
        let b = P2c::new();
        for _ in 0..200 {
            assert_eq!(b.pick(&call(None, &[0, 2]), &set), Some(1));
            assert_eq!(b.pick(&call(None, &[0, 2, 3]), &set), Some(1));
        }
        let mut c = [0usize; 4];
        for _ in 0..10_000 {
            c[b.pick(&call(None, &[0, 1]), &set).expect("a pick")] += 1;
        }
        assert_eq!(c[0] + c[1], 0);
        assert_shares(&[c[2], c[3]], &[1, 1], 0.05);
    }
}
