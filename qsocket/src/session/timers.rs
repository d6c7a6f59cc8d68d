//! Time in a session: deadline arithmetic that cannot overflow ([`deadline_after`]) and the
//! session's timers — cron tick, WebSocket ping, timeout check — all served by one `Sleep` in the
//! handler.

use super::config::SessionConfig;
use std::time::{Duration, Instant};

/// Timers of one session: cron, WebSocket ping, timeout check, all served by one `Sleep`.
/// Each is its period and when it is next due.
pub(super) struct Timers {
    pub(super) cron: Option<(Duration, Instant)>,
    pub(super) ping: Option<(Duration, Instant)>,
    pub(super) check: Option<(Duration, Instant)>,
}

impl Timers {
    /// The timers `cfg` asks for (the ping and its timeout check only for WebSocket).
    pub(super) fn new(cfg: &SessionConfig, ws: bool) -> Self {
        let now = Instant::now();
        let timeout = cfg
            .session_timeout
            .or(ws.then(|| cfg.ws_ping_period.saturating_mul(3)));
        let every = |p: Duration| (p, deadline_after(now, p));
        Timers {
            cron: cfg.cron_period.map(every),
            ping: ws.then_some(cfg.ws_ping_period).map(every),
            // Checked when the session would time out if nothing arrived meanwhile (then
            // re-armed from the last activity): an idle session wakes once per timeout, not
            // periodically.
            check: timeout.map(every),
        }
    }

    /// When the first timer is due (`None`: no timers).
    pub(super) fn next(&self) -> Option<Instant> {
        [self.cron, self.ping, self.check]
            .into_iter()
            .flatten()
            .map(|(_, at)| at)
            .min()
    }

    /// Whether the timer `t` is due at `now`; if so, moves it one period on.
    pub(super) fn due(t: &mut Option<(Duration, Instant)>, now: Instant) -> bool {
        match t {
            Some((period, at)) if *at <= now => {
                *at = deadline_after(now, *period);
                true
            }
            _ => false,
        }
    }
}

/// The instant `t` after `since`, saturating: when `since + t` does not fit in an [`Instant`]
/// (`t` is [`Duration::MAX`], say, for "no deadline"), an instant about 30 years after `since`
/// (or `since` itself, should even that not fit). Never panics, unlike `since + t`.
///
/// Deadlines and timers throughout the session layer are computed with it, so a protocol layer
/// that keeps its own deadlines (an RPC client's per-call timeout, a deadline received as "time
/// remaining") can compute them the same way, from [`Ctx::received_at`](super::Ctx::received_at)
/// or `Instant::now()`.
///
/// ```
/// use qsocket::session::deadline_after;
/// use std::time::{Duration, Instant};
///
/// let now = Instant::now();
/// assert_eq!(deadline_after(now, Duration::from_secs(2)), now + Duration::from_secs(2));
/// assert!(deadline_after(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
/// ```
pub fn deadline_after(since: Instant, t: Duration) -> Instant {
    since
        .checked_add(t)
        .or_else(|| since.checked_add(FAR))
        .unwrap_or(since)
}

/// How far ahead [`deadline_after`] puts a deadline that does not fit in an `Instant`.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
