//! Per-session settings shared by servers and clients.

use std::time::Duration;

/// Settings every session of a server or client uses.
///
/// The defaults suit most services; change them through the server and client builders.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How often `on_cron` runs. `None` (the default): never.
    pub cron_period: Option<Duration>,
    /// Close a session whose [`active()`](super::Session::active) time is older than this.
    /// `None` (the default for TCP and UDP clients): never. WebSocket sessions without a timeout
    /// use three ping periods; UDP server sessions use [`SessionConfig::udp_idle_timeout`].
    pub session_timeout: Option<Duration>,
    /// Once part of a frame has arrived, the rest must arrive within this time (guards against
    /// peers that trickle bytes). Default 30 s.
    pub read_timeout: Option<Duration>,
    /// A write that cannot complete within this time closes the session. Default 30 s.
    pub write_timeout: Option<Duration>,
    /// TLS and WebSocket handshakes must complete within this time. Default 10 s.
    pub handshake_timeout: Duration,
    /// The largest frame accepted from the network, in bytes: a partial frame that grows beyond
    /// it closes the session with [`Error::FrameTooLarge`](crate::Error::FrameTooLarge).
    /// Default 8 MiB. Set your codec's own limit too (e.g.
    /// `LengthDelimitedCodec::builder().max_frame_length(..)`): this one bounds what is
    /// buffered, the codec's bounds what it reserves.
    pub max_frame_len: usize,
    /// Capacity of the outgoing queue of [`Session::send`](super::Session::send): a full queue
    /// makes `send` wait (backpressure) and `try_send` fail. Default 1024.
    pub send_queue: usize,
    /// Capacity of the queue of decoded messages between the reader and the handler: when it is
    /// full the reader stops reading. Default 1024.
    pub recv_queue: usize,
    /// WebSocket ping period. Default 20 s.
    pub ws_ping_period: Duration,
    /// Idle timeout of UDP server sessions (a UDP peer never says goodbye). Default 60 s.
    pub udp_idle_timeout: Duration,
    /// The most bytes one session holds on its peer's behalf: the partial frame being read,
    /// decoded frames waiting for the listener, frames the listener keeps while it works on
    /// them, and output waiting for a slow peer. At the budget the session stops reading
    /// (backpressure) until the listener and the writer catch up. Must be at least
    /// `max_frame_len` + 64 KiB (a largest frame, its framing and one read). Default 16 MiB.
    pub session_budget: usize,
    /// Bytes each session may hold without drawing on its server's shared budget (see
    /// [`ServerBuilder::shared_budget`](super::ServerBuilder::shared_budget)): while that is
    /// spent, sessions within their allowance keep reading, so small traffic flows while large
    /// frames wait. Default 16 KiB.
    pub session_allowance: usize,
    /// Size of the first read buffer of a session; it adapts between 512 bytes and 64 KiB to the
    /// traffic and is released while a TCP session is idle. Default 4 KiB.
    pub read_buffer: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            cron_period: None,
            session_timeout: None,
            read_timeout: Some(Duration::from_secs(30)),
            write_timeout: Some(Duration::from_secs(30)),
            handshake_timeout: Duration::from_secs(10),
            max_frame_len: 8 * 1024 * 1024,
            send_queue: 1024,
            recv_queue: 1024,
            ws_ping_period: Duration::from_secs(20),
            udp_idle_timeout: Duration::from_secs(60),
            read_buffer: 4096,
            session_budget: 16 * 1024 * 1024,
            session_allowance: 16 * 1024,
        }
    }
}

impl SessionConfig {
    /// The least budget that lets a largest frame arrive whole: the frame, its framing (a
    /// length prefix, WebSocket headers) and one read's room.
    pub(crate) fn min_budget(&self) -> usize {
        self.max_frame_len.saturating_add(64 * 1024)
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: &str| Err(crate::Error::Config(what.to_string()));
        if self.send_queue == 0 || self.recv_queue == 0 {
            return bad("queue capacities must be at least 1");
        }
        if self.max_frame_len == 0 {
            return bad("max_frame_len must be at least 1");
        }
        if self.session_budget < self.min_budget() {
            return Err(crate::Error::Config(format!(
                "session_budget ({}) must be at least max_frame_len ({}) + 64 KiB: a largest frame (with its framing) could never arrive whole",
                self.session_budget, self.max_frame_len
            )));
        }
        for (name, d) in [
            ("cron_period", self.cron_period),
            ("session_timeout", self.session_timeout),
            ("ws_ping_period", Some(self.ws_ping_period)),
            ("udp_idle_timeout", Some(self.udp_idle_timeout)),
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            ("handshake_timeout", Some(self.handshake_timeout)),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(crate::Error::Config(format!("{name} must not be zero")));
            }
        }
        Ok(())
    }
}

/// Reconnect policy of a [`Client`](super::Client): capped exponential backoff with jitter.
///
/// The n-th consecutive failed attempt waits `min(initial * 2^n, max)`, scaled by a random
/// factor in `[0.5, 1.0]` so that many clients do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Wait after the first failure. Default 100 ms.
    pub initial: Duration,
    /// Largest wait. Default 10 s.
    pub max: Duration,
    /// Give up after this many consecutive failed attempts — a connection refused or timed
    /// out, a session refused by `on_open`, or one that ended within a second (or `max`, if
    /// shorter) without receiving anything. `None` (default): never give up.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl Backoff {
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err(crate::Error::Config(
                "backoff: initial must be non-zero and max at least initial".into(),
            ));
        }
        Ok(())
    }

    /// The wait before attempt `failures + 1`, with `jitter` in `[0, 1)`.
    pub(crate) fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        capped
            .checked_mul(2)
            .map(|_| capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
            .unwrap_or(capped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_attempts: None,
        };
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay(4, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(100, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn zero_periods_are_rejected() {
        let c = SessionConfig {
            cron_period: Some(Duration::ZERO),
            ..SessionConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(SessionConfig::default().validate().is_ok());
    }
}
