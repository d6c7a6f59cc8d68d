//! The retry budget: retries and hedges are capped to a fraction of recent calls (gRPC's
//! retry throttling, finagle's retry budget), so a failing fleet is not hit by a retry storm.

use crate::rpc::balance::now_ms;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// How many retries and hedges a client may send: every call adds `ratio` of a token, and
/// the clock `per_second` tokens a second (so a client with little traffic can still retry),
/// up to `max_tokens`; every retry or hedge takes one whole token, and none is sent without
/// one. The bucket starts full.
///
/// With the default (a fifth of a token per call, 10 a second, at most 100) a fleet where
/// everything fails gets about 1.2 tries per call, however many retries the policy allows,
/// once the first 100 are spent.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryBudget {
    /// Tokens added per call.
    pub ratio: f64,
    /// Tokens added per second.
    pub per_second: u32,
    /// Tokens the bucket holds at most (and at the start).
    pub max_tokens: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            per_second: 10,
            max_tokens: 100,
        }
    }
}

impl RetryBudget {
    /// A budget of `ratio` tokens per call, at most `max_tokens` (none added by the clock:
    /// see [`per_second`](Self::per_second)).
    pub fn new(ratio: f64, max_tokens: u32) -> Self {
        RetryBudget {
            ratio,
            per_second: 0,
            max_tokens,
        }
    }

    /// The same budget with `n` tokens added every second.
    pub fn per_second(mut self, n: u32) -> Self {
        self.per_second = n;
        self
    }

    /// No cap: every retry the policy allows is sent.
    pub fn unlimited() -> Self {
        RetryBudget {
            ratio: f64::INFINITY,
            per_second: 0,
            max_tokens: u32::MAX,
        }
    }
}

/// Thousandths of a token per whole one.
const MILLI: i64 = 1000;

/// The bucket of a [`RetryBudget`].
#[derive(Debug)]
pub(crate) struct Bucket {
    /// In thousandths of a token.
    milli: AtomicI64,
    deposit: i64,
    cap: i64,
    unlimited: bool,
    /// Tokens (thousandths) the clock adds per millisecond.
    per_ms: i64,
    /// When the clock last added tokens ([`now_ms`] time).
    refilled: AtomicU64,
}

impl Bucket {
    pub(crate) fn new(b: RetryBudget) -> Self {
        let unlimited = !b.ratio.is_finite() || b.max_tokens == u32::MAX;
        let cap = i64::from(b.max_tokens) * MILLI;
        Bucket {
            milli: AtomicI64::new(cap),
            deposit: (b.ratio.max(0.0) * MILLI as f64).min(cap as f64) as i64,
            cap,
            unlimited,
            per_ms: i64::from(b.per_second),
            refilled: AtomicU64::new(now_ms()),
        }
    }

    /// A call was made. Free while the bucket is full (one load, no write): the usual case.
    #[inline]
    pub(crate) fn deposit(&self) {
        if self.unlimited || self.deposit == 0 {
            return;
        }
        let now = self.milli.load(Ordering::Relaxed);
        if now >= self.cap {
            return;
        }
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + self.deposit).min(self.cap))
            });
    }

    /// Takes a token for a retry or a hedge; `false` when none is left.
    pub(crate) fn withdraw(&self) -> bool {
        if self.unlimited {
            return true;
        }
        if self.per_ms > 0 {
            // What the clock added since the last retry (only retries read the clock).
            let now = now_ms();
            let last = self.refilled.swap(now, Ordering::Relaxed);
            let add = (now.saturating_sub(last) as i64).saturating_mul(self.per_ms);
            if add > 0 {
                let _ = self
                    .milli
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        Some(v.saturating_add(add).min(self.cap))
                    });
            }
        }
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v >= MILLI).then_some(v - MILLI)
            })
            .is_ok()
    }

    /// Whole tokens left.
    pub(crate) fn tokens(&self) -> u64 {
        (self.milli.load(Ordering::Relaxed) / MILLI).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::{Bucket, RetryBudget};

    #[test]
    fn starts_full_drains_and_refills_by_the_ratio() {
        let b = Bucket::new(RetryBudget::new(0.5, 3));
        assert_eq!(b.tokens(), 3);
        assert!(b.withdraw() && b.withdraw() && b.withdraw());
        assert!(!b.withdraw(), "empty");
        b.deposit();
        assert!(!b.withdraw(), "half a token is not enough");
        b.deposit();
        assert!(b.withdraw(), "two calls at 0.5 pay for one retry");
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.tokens(), 3, "capped");
    }

    #[test]
    fn unlimited_never_refuses() {
        let b = Bucket::new(RetryBudget::unlimited());
        assert!((0..10_000).all(|_| b.withdraw()));
    }
}
