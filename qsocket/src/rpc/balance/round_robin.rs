//! Round robin: each call takes the next live instance in turn.

use super::{nth_allowed, Balancer, Node, Pick};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Takes the live instances in turn (one atomic counter; no lock).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round-robin balancer.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        if nodes.len() == 1 {
            // The only live instance (picked even if excluded, as every balancer does).
            return Some(0);
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        if !call.exclude.is_empty() {
            // The turn among the nodes not excluded, so that an excluded node's turns are
            // spread over the others rather than all given to the next one.
            let allowed = nodes.iter().filter(|n| !call.is_excluded(n)).count();
            if allowed > 0 {
                return Some(nth_allowed(call, nodes, turn % allowed));
            }
        }
        Some(turn % nodes.len())
    }

    fn name(&self) -> &'static str {
        "round_robin"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{call, counts, nodes};
    use super::*;

    #[test]
    fn takes_each_in_turn() {
        let set = nodes(&[1, 5, 100]);
        let b = RoundRobin::new();
        assert_eq!(counts(&b, &set, 300), vec![100, 100, 100]);
        let seq: Vec<usize> = (0..6)
            .map(|_| b.pick(&call(None, &[]), &set).expect("a pick"))
            .collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_excluded() {
        let set = nodes(&[1, 1, 1]);
        let b = RoundRobin::new();
        let mut c = [0usize; 3];
        for _ in 0..300 {
            c[b.pick(&call(None, &[1]), &set).expect("a pick")] += 1;
        }
        assert_eq!(c, [150, 0, 150]);
    }
}
