//! Random: each call takes a live instance uniformly at random.

use super::{random_allowed, Balancer, Node, Pick};

/// Takes a live instance uniformly at random, ignoring weights (a per-thread generator; no
/// lock, no shared state).
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Random {
    /// A random balancer.
    pub fn new() -> Self {
        Random
    }
}

impl Balancer for Random {
    fn pick(&self, call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        Some(random_allowed(call, nodes))
    }

    fn name(&self) -> &'static str {
        "random"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_shares, call, counts, nodes};
    use super::*;

    #[test]
    fn uniform_ignoring_weights() {
        let set = nodes(&[1, 5, 100, 1000]);
        let c = counts(&Random::new(), &set, 20_000);
        assert_shares(&c, &[1, 1, 1, 1], 0.05);
    }

    #[test]
    fn excluded_never_picked() {
        let set = nodes(&[1, 1, 1, 1]);
        let mut c = [0usize; 4];
        for _ in 0..10_000 {
            c[Random.pick(&call(None, &[2]), &set).expect("a pick")] += 1;
        }
        assert_eq!(c[2], 0);
        assert_shares(&[c[0], c[1], c[3]], &[1, 1, 1], 0.05);
    }
}
