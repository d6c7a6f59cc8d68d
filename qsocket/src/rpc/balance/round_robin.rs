//! Round robin: each call takes the next live instance in turn.

use super::{Balancer, Node, Pick};
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
        let n = nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if call.exclude.is_empty() || call.all_excluded(nodes) {
            return Some(start % n);
        }
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !call.is_excluded(&nodes[i]))
    }

    fn name(&self) -> &'static str {
        "round_robin"
    }
}
