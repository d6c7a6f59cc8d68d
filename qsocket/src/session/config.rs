//! Per-session settings shared by servers and clients.

use std::time::Duration;

/// Settings every session of a server or client uses.
///
/// The defaults suit most services. Start from [`SessionConfig::default`] and change what you
/// need, with the setters (one per field, named like it) or by assigning fields, then hand it
/// to the server or client builder:
///
/// ```
/// use qsocket::session::SessionConfig;
/// use std::time::Duration;
///
/// let cfg = SessionConfig::default()
///     .read_timeout(Some(Duration::from_secs(5)))
///     .max_frame_len(1024 * 1024)
///     .session_budget(4 * 1024 * 1024);
/// assert_eq!(cfg.max_frame_len, 1024 * 1024);
///
/// let mut cfg = SessionConfig::default();
/// cfg.session_timeout = Some(Duration::from_secs(60));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// Sets [`cron_period`](field@Self::cron_period): how often `on_cron` runs; `None` never.
    /// Default `None`.
    pub fn cron_period(mut self, cron_period: Option<Duration>) -> Self {
        self.cron_period = cron_period;
        self
    }

    /// Sets [`session_timeout`](field@Self::session_timeout): close a session whose `active()` time
    /// is older than this; `None` never (but see the field's notes on WebSocket and UDP server
    /// sessions). Default `None`.
    pub fn session_timeout(mut self, session_timeout: Option<Duration>) -> Self {
        self.session_timeout = session_timeout;
        self
    }

    /// Sets [`read_timeout`](field@Self::read_timeout): time the rest of a partly received frame
    /// has to arrive; `None` no limit. Default `Some(30 s)`.
    pub fn read_timeout(mut self, read_timeout: Option<Duration>) -> Self {
        self.read_timeout = read_timeout;
        self
    }

    /// Sets [`write_timeout`](field@Self::write_timeout): time a write has to complete before the
    /// session is closed; `None` no limit. Default `Some(30 s)`.
    pub fn write_timeout(mut self, write_timeout: Option<Duration>) -> Self {
        self.write_timeout = write_timeout;
        self
    }

    /// Sets [`handshake_timeout`](field@Self::handshake_timeout): time TLS and WebSocket handshakes
    /// have to complete. Default 10 s.
    pub fn handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }

    /// Sets [`max_frame_len`](field@Self::max_frame_len): the largest frame accepted from the
    /// network, in bytes. Default 8 MiB.
    pub fn max_frame_len(mut self, max_frame_len: usize) -> Self {
        self.max_frame_len = max_frame_len;
        self
    }

    /// Sets [`send_queue`](field@Self::send_queue): capacity of the outgoing queue of
    /// `Session::send` (at least 1). Default 1024.
    pub fn send_queue(mut self, send_queue: usize) -> Self {
        self.send_queue = send_queue;
        self
    }

    /// Sets [`recv_queue`](field@Self::recv_queue): capacity of the queue of decoded messages
    /// waiting for the handler (at least 1). Default 1024.
    pub fn recv_queue(mut self, recv_queue: usize) -> Self {
        self.recv_queue = recv_queue;
        self
    }

    /// Sets [`ws_ping_period`](field@Self::ws_ping_period): the WebSocket ping period. Default 20
    /// s.
    pub fn ws_ping_period(mut self, ws_ping_period: Duration) -> Self {
        self.ws_ping_period = ws_ping_period;
        self
    }

    /// Sets [`udp_idle_timeout`](field@Self::udp_idle_timeout): idle timeout of UDP server
    /// sessions. Default 60 s.
    pub fn udp_idle_timeout(mut self, udp_idle_timeout: Duration) -> Self {
        self.udp_idle_timeout = udp_idle_timeout;
        self
    }

    /// Sets [`session_budget`](field@Self::session_budget): the most bytes one session holds on its
    /// peer's behalf (at least `max_frame_len` + 64 KiB). Default 16 MiB.
    pub fn session_budget(mut self, session_budget: usize) -> Self {
        self.session_budget = session_budget;
        self
    }

    /// Sets [`session_allowance`](field@Self::session_allowance): bytes each session may hold
    /// without drawing on its server's shared budget. Default 16 KiB.
    pub fn session_allowance(mut self, session_allowance: usize) -> Self {
        self.session_allowance = session_allowance;
        self
    }

    /// Sets [`read_buffer`](field@Self::read_buffer): size of the first read buffer of a session.
    /// Default 4 KiB.
    pub fn read_buffer(mut self, read_buffer: usize) -> Self {
        self.read_buffer = read_buffer;
        self
    }

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
///
/// Start from [`Backoff::default`] and change what you need with the setters (one per field,
/// named like it) or by assigning fields:
///
/// ```
/// use qsocket::session::Backoff;
/// use std::time::Duration;
///
/// let backoff = Backoff::default()
///     .initial(Duration::from_millis(50))
///     .max(Duration::from_secs(2))
///     .max_attempts(Some(5));
/// assert_eq!(backoff.max_attempts, Some(5));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// Sets [`initial`](field@Self::initial): wait after the first failure (non-zero). Default 100
    /// ms.
    pub fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Sets [`max`](field@Self::max): largest wait (at least `initial`). Default 10 s.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Sets [`max_attempts`](field@Self::max_attempts): give up after this many consecutive failed
    /// attempts; `None` never give up. Default `None`.
    pub fn max_attempts(mut self, max_attempts: Option<u32>) -> Self {
        self.max_attempts = max_attempts;
        self
    }

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
        let b = Backoff::default()
            .initial(Duration::from_millis(100))
            .max(Duration::from_secs(1))
            .max_attempts(None);
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay(4, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(100, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn zero_periods_are_rejected() {
        let c = SessionConfig::default().cron_period(Some(Duration::ZERO));
        assert!(c.validate().is_err());
        assert!(SessionConfig::default().validate().is_ok());
    }
}
