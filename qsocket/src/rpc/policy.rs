//! What a call's cluster policy says: the [`Strategy`] and its numbers. Plain data, below
//! both the client (a call carries its policy) and the cluster layer (which applies it).

use std::time::Duration;

/// How a call is tried across a cluster of instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// One try; an error comes back at once.
    Failfast,
    /// On a retryable error, try *another* instance (up to `retries` more times, within the
    /// call's deadline).
    Failover,
    /// On a retryable error, try the *same* instance again (for sticky sessions), up to
    /// `retries` more times; another one only if it is no longer live.
    Failtry,
    /// An error becomes an empty result (the message decoded from an empty body: its
    /// default), logged and counted.
    Failsafe,
    /// A failed oneway call is queued and sent again in the background with backoff (up to
    /// `retries` times). The queue is bounded; what it drops is counted. A call that expects
    /// a response behaves as [`Failfast`](Strategy::Failfast).
    Failback,
    /// Sends to `forks` instances at once; the first success wins and the other attempts are
    /// cancelled. The method may run on several instances: for idempotent methods (reads).
    Forking,
    /// If no answer came within the hedge delay, sends one more attempt to another instance
    /// (up to `retries` extra attempts); the first success wins, the rest are cancelled. The
    /// method may run on several instances: for idempotent methods (reads).
    Hedging,
}

impl Strategy {
    /// Its name, as the `strategy` attribute spells it (`"failover"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Failfast => "failfast",
            Strategy::Failover => "failover",
            Strategy::Failtry => "failtry",
            Strategy::Failsafe => "failsafe",
            Strategy::Failback => "failback",
            Strategy::Forking => "forking",
            Strategy::Hedging => "hedging",
        }
    }

    /// The strategy named `name` (as [`name`](Self::name) spells it).
    pub fn from_name(name: &str) -> Option<Strategy> {
        Some(match name {
            "failfast" => Strategy::Failfast,
            "failover" => Strategy::Failover,
            "failtry" => Strategy::Failtry,
            "failsafe" => Strategy::Failsafe,
            "failback" => Strategy::Failback,
            "forking" => Strategy::Forking,
            "hedging" => Strategy::Hedging,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When a hedging call sends its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// After this long without an answer.
    Fixed(Duration),
    /// After the method's observed 95th percentile latency (of its last successful calls
    /// through this layer), but never sooner than `floor`; `floor` alone until 20 calls
    /// were seen.
    P95 {
        /// The shortest delay.
        floor: Duration,
    },
}

/// A call's cluster policy: its [`Strategy`] and the numbers the strategy reads.
///
/// ```
/// use qsocket::rpc::{Policy, Strategy};
/// use std::time::Duration;
/// let p = Policy::failover(2)
///     .idempotent()
///     .attempt_timeout(Duration::from_millis(200));
/// assert_eq!(p.strategy, Strategy::Failover);
/// assert_eq!(p.retries, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// How the call is tried.
    pub strategy: Strategy,
    /// Failover, failtry and failback: tries after the first. Hedging: extra attempts.
    pub retries: u32,
    /// Forking: attempts sent at once.
    pub forks: u32,
    /// Hedging: when the next attempt goes out.
    pub hedge: HedgeDelay,
    /// Each attempt's own time limit (within the call's deadline); `None`: the call's
    /// deadline only. An attempt that runs out of it is retried only if the method is
    /// idempotent.
    pub attempt_timeout: Option<Duration>,
    /// Whether the method may run more than once: a timeout, or a connection lost after the
    /// request was written, is then retried as well.
    pub idempotent: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::failfast()
    }
}

impl Policy {
    const fn with(strategy: Strategy, retries: u32) -> Policy {
        Policy {
            strategy,
            retries,
            forks: 2,
            hedge: HedgeDelay::P95 {
                floor: Duration::from_millis(10),
            },
            attempt_timeout: None,
            idempotent: false,
        }
    }

    /// One try.
    pub const fn failfast() -> Policy {
        Policy::with(Strategy::Failfast, 0)
    }

    /// Up to `retries` more tries, each on another instance.
    pub const fn failover(retries: u32) -> Policy {
        Policy::with(Strategy::Failover, retries)
    }

    /// Up to `retries` more tries on the same instance.
    pub const fn failtry(retries: u32) -> Policy {
        Policy::with(Strategy::Failtry, retries)
    }

    /// An error becomes an empty result.
    pub const fn failsafe() -> Policy {
        Policy::with(Strategy::Failsafe, 0)
    }

    /// A failed oneway call is sent again in the background, up to `retries` times.
    pub const fn failback(retries: u32) -> Policy {
        Policy::with(Strategy::Failback, retries)
    }

    /// `forks` attempts at once (at least 1); the first success wins.
    pub const fn forking(forks: u32) -> Policy {
        let mut p = Policy::with(Strategy::Forking, 0);
        p.forks = if forks == 0 { 1 } else { forks };
        p
    }

    /// One more attempt after `delay` without an answer (see [`retries`](Self::retries) for
    /// more).
    pub const fn hedging(delay: HedgeDelay) -> Policy {
        let mut p = Policy::with(Strategy::Hedging, 1);
        p.hedge = delay;
        p
    }

    /// The same policy with `retries` (failover, failtry, failback: tries after the first;
    /// hedging: extra attempts).
    pub const fn retries(mut self, retries: u32) -> Policy {
        self.retries = retries;
        self
    }

    /// The same policy for an idempotent method.
    pub const fn idempotent(mut self) -> Policy {
        self.idempotent = true;
        self
    }

    /// The same policy with a time limit per attempt.
    pub const fn attempt_timeout(mut self, timeout: Duration) -> Policy {
        self.attempt_timeout = Some(timeout);
        self
    }
}
