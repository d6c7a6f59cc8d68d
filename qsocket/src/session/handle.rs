//! The [`Session`] handle: identity, sending, closing, active time, counters, attributes.

use super::budget::Mem;
use super::endpoint::Transport;
use super::queue;
use crate::Error;
use std::any::{Any, TypeId};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The process-wide time base for active times (milliseconds since the first session).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(crate) fn instant_of(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms)
}

pub(crate) fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A handle to one session. Cheap to clone; every clone refers to the same session.
///
/// Sending goes through a bounded queue to the session's handler task, which writes everything
/// queued in one write call. Code running *inside* a listener callback should use
/// [`Ctx::send`](super::Ctx::send) instead, which never waits.
pub struct Session<O> {
    inner: Arc<Inner<O>>,
}

impl<O> Clone for Session<O> {
    fn clone(&self) -> Self {
        Session {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<O> {
    id: u64,
    transport: Transport,
    local: SocketAddr,
    peer: SocketAddr,
    tx: queue::Sender<O>,
    closed: AtomicBool,
    token: CancellationToken,
    pub(crate) stats: Stats,
    mem: Mem,
    attrs: Mutex<Vec<(TypeId, Box<dyn Any + Send + Sync>)>>,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) active_ms: AtomicU64,
    pub(crate) packets_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) packets_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl Stats {
    pub(crate) fn add_in(&self, packets: u64, bytes: u64) {
        if packets > 0 {
            self.packets_in.fetch_add(packets, Ordering::Relaxed);
        }
        if bytes > 0 {
            self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_out(&self, packets: u64, bytes: u64) {
        self.packets_out.fetch_add(packets, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Marks activity now; returns the time stored.
    pub(crate) fn touch(&self) -> u64 {
        let now = now_ms();
        self.active_ms.store(now, Ordering::Relaxed);
        now
    }

    pub(crate) fn active_ms(&self) -> u64 {
        self.active_ms.load(Ordering::Relaxed)
    }
}

/// A snapshot of a session's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames decoded from the peer.
    pub packets_in: u64,
    /// Bytes read from the peer (after TLS / WebSocket framing is removed).
    pub bytes_in: u64,
    /// Frames written to the peer.
    pub packets_out: u64,
    /// Bytes written to the peer (before TLS / WebSocket framing is added).
    pub bytes_out: u64,
}

/// Why [`Session::try_send`] did not queue a message; holds the message.
#[derive(Debug)]
pub enum TrySendError<O> {
    /// The queue is full: the peer or the handler is behind.
    Full(O),
    /// The session is closed.
    Closed(O),
}

impl<O> TrySendError<O> {
    /// The message that was not sent.
    pub fn into_inner(self) -> O {
        match self {
            TrySendError::Full(o) | TrySendError::Closed(o) => o,
        }
    }
}

impl<O> fmt::Display for TrySendError<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("session send queue is full"),
            TrySendError::Closed(_) => f.write_str("session closed"),
        }
    }
}

impl<O: fmt::Debug> std::error::Error for TrySendError<O> {}

impl<O> Session<O> {
    pub(crate) fn new(
        transport: Transport,
        local: SocketAddr,
        peer: SocketAddr,
        queue: usize,
        token: CancellationToken,
        mem: Mem,
    ) -> (Self, queue::Receiver<O>) {
        let (tx, rx) = queue::channel(queue);
        let stats = Stats::default();
        stats.touch();
        let inner = Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            transport,
            local,
            peer,
            tx,
            closed: AtomicBool::new(false),
            token,
            stats,
            mem,
            attrs: Mutex::new(Vec::new()),
        };
        (
            Session {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// The session's id, unique within the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The transport the session runs over.
    pub fn transport(&self) -> Transport {
        self.inner.transport
    }

    /// The local address of the connection (for a UDP server session: the server socket's).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// Queues a message for the peer, waiting while the queue is full (backpressure).
    ///
    /// Returns [`Error::SessionClosed`] if the session is closed or closes while waiting; never
    /// waits on a closed session. A message accepted before the session closes is written
    /// before the connection is shut down (unless it is closed by force).
    ///
    /// Do not await this from inside the session's own listener callbacks (a full queue would
    /// wait for the very task that empties it): use [`Ctx::send`](super::Ctx::send) there.
    pub async fn send(&self, msg: O) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::SessionClosed);
        }
        self.inner
            .tx
            .send(msg)
            .await
            .map_err(|_| Error::SessionClosed)
    }

    /// Queues a message without waiting; gives it back if the queue is full or the session is
    /// closed.
    pub fn try_send(&self, msg: O) -> Result<(), TrySendError<O>> {
        if self.is_closed() {
            return Err(TrySendError::Closed(msg));
        }
        self.inner.tx.try_send(msg).map_err(|e| match e {
            queue::TrySendError::Full(m) => TrySendError::Full(m),
            queue::TrySendError::Closed(m) => TrySendError::Closed(m),
        })
    }

    /// Queues what `write` makes, without waiting. `write` is given the last message still
    /// queued for the writer, when there is one (the writer has not taken it yet): it may add
    /// to that message and return `None`, or return a message of its own. Senders of small
    /// messages on a byte stream can thus share one buffer, written out in one go, instead of
    /// queuing one message each; on a transport that carries each message on its own (UDP,
    /// WebSocket) adding to a queued message joins the two into one datagram or message.
    ///
    /// Fails with the message `write` made (`None` if it was not called: the session is
    /// closed) when the queue is full or the session closed.
    pub fn try_send_with(
        &self,
        write: impl FnOnce(Option<&mut O>) -> Option<O>,
    ) -> Result<(), TrySendError<Option<O>>> {
        if self.is_closed() {
            return Err(TrySendError::Closed(None));
        }
        self.inner.tx.push_with(write).map_err(|(m, full)| {
            if full {
                TrySendError::Full(m)
            } else {
                TrySendError::Closed(m)
            }
        })
    }

    /// Starts closing the session: no more messages are read or accepted for sending; what is
    /// already queued is written, then the connection is shut down and `on_close` runs once.
    /// Closing twice is harmless.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.token.cancel();
    }

    /// Whether the session is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) || self.inner.tx.is_closed()
    }

    /// Resolves once the session starts closing.
    pub async fn closed(&self) {
        self.inner.token.cancelled().await
    }

    /// The last time the session was active: when something was last read from the peer
    /// (including WebSocket pongs), or when [`update_active`](Self::update_active) was last
    /// called.
    pub fn active(&self) -> Instant {
        epoch() + Duration::from_millis(self.inner.stats.active_ms.load(Ordering::Relaxed))
    }

    /// How long ago the session was last active.
    pub fn idle_for(&self) -> Duration {
        let last = self.inner.stats.active_ms.load(Ordering::Relaxed);
        Duration::from_millis(now_ms().saturating_sub(last))
    }

    /// Marks the session active now (e.g. when the listener sees an application heartbeat).
    pub fn update_active(&self) {
        self.inner.stats.touch();
    }

    /// The session's counters.
    pub fn stats(&self) -> SessionStats {
        let s = &self.inner.stats;
        SessionStats {
            packets_in: s.packets_in.load(Ordering::Relaxed),
            bytes_in: s.bytes_in.load(Ordering::Relaxed),
            packets_out: s.packets_out.load(Ordering::Relaxed),
            bytes_out: s.bytes_out.load(Ordering::Relaxed),
        }
    }

    /// Stores a typed attribute on the session, returning the previous value of that type.
    pub fn set_attr<T: Any + Send + Sync>(&self, value: T) -> Option<T> {
        let mut attrs = self.lock_attrs();
        let id = TypeId::of::<T>();
        let boxed: Box<dyn Any + Send + Sync> = Box::new(value);
        if let Some(slot) = attrs.iter_mut().find(|(t, _)| *t == id) {
            let old = std::mem::replace(&mut slot.1, boxed);
            return old.downcast::<T>().ok().map(|b| *b);
        }
        attrs.push((id, boxed));
        None
    }

    /// A clone of the attribute of type `T`, if one is set.
    pub fn attr<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        self.with_attr(|v: Option<&mut T>| v.cloned())
    }

    /// Runs `f` with mutable access to the attribute of type `T` (or `None`).
    pub fn with_attr<T: Any + Send + Sync, R>(&self, f: impl FnOnce(Option<&mut T>) -> R) -> R {
        let mut attrs = self.lock_attrs();
        let id = TypeId::of::<T>();
        let v = attrs
            .iter_mut()
            .find(|(t, _)| *t == id)
            .and_then(|(_, b)| b.downcast_mut::<T>());
        f(v)
    }

    /// Removes and returns the attribute of type `T`.
    pub fn remove_attr<T: Any + Send + Sync>(&self) -> Option<T> {
        let mut attrs = self.lock_attrs();
        let id = TypeId::of::<T>();
        let i = attrs.iter().position(|(t, _)| *t == id)?;
        attrs.swap_remove(i).1.downcast::<T>().ok().map(|b| *b)
    }

    fn lock_attrs(&self) -> std::sync::MutexGuard<'_, Vec<(TypeId, Box<dyn Any + Send + Sync>)>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.inner
            .attrs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes the session holds on its peer's behalf now: the partial frame being read, decoded
    /// frames not yet handled, frames the listener keeps while working on them, and output a
    /// slow peer has not taken yet. The session stops reading once this reaches
    /// [`SessionConfig::session_budget`](super::SessionConfig::session_budget); answers
    /// being written to a slow peer can take it past the budget by one write (their requests
    /// stay counted until they are written).
    pub fn buffered_bytes(&self) -> usize {
        self.inner.mem.held()
    }

    pub(crate) fn mem(&self) -> &Mem {
        &self.inner.mem
    }

    /// A handle on the session's byte gauge that does not name its message type (for the
    /// transport layers under it).
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    pub(crate) fn gauge(&self) -> Gauge
    where
        O: Send + 'static,
    {
        Gauge(self.inner.clone())
    }

    /// The peer hung up while the session was not reading: the session ends at once (its work
    /// in flight is dropped, nothing more is written).
    pub(crate) fn peer_gone(&self) {
        tracing::debug!(session = self.id(), peer = %self.peer_addr(), "peer hung up while the session was paused");
        self.inner.mem.set_gone();
        self.close();
    }

    pub(crate) fn stats_ref(&self) -> &Stats {
        &self.inner.stats
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    pub(crate) fn mark_closed(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

/// What the transport layers under a session need of it, whatever its message type.
trait Gauged: Send + Sync {
    fn mem(&self) -> &Mem;
    fn id(&self) -> u64;
    fn close(&self);
}

impl<O: Send + 'static> Gauged for Inner<O> {
    fn mem(&self) -> &Mem {
        &self.mem
    }
    fn id(&self) -> u64 {
        self.id
    }
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.token.cancel();
    }
}

/// A session's byte gauge, for the layers under it (see [`Session::gauge`]).
#[derive(Clone)]
pub(crate) struct Gauge(Arc<dyn Gauged>);

#[cfg_attr(not(feature = "ws"), allow(dead_code))]
impl Gauge {
    pub(crate) fn mem(&self) -> &Mem {
        self.0.mem()
    }

    /// See [`Session::peer_gone`].
    pub(crate) fn peer_gone(&self) {
        tracing::debug!(
            session = self.0.id(),
            "peer hung up while the session was paused"
        );
        self.0.mem().set_gone();
        self.0.close();
    }
}

impl<O> fmt::Debug for Session<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("transport", &self.inner.transport)
            .field("local", &self.inner.local)
            .field("peer", &self.inner.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Session<u32>, queue::Receiver<u32>) {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let mem = Mem::new(1024, 1024, None);
        Session::new(Transport::Tcp, a, a, 2, CancellationToken::new(), mem)
    }

    #[test]
    fn attributes_are_typed() {
        let (s, _rx) = session();
        assert_eq!(s.attr::<u32>(), None);
        assert_eq!(s.set_attr(5u32), None);
        assert_eq!(s.set_attr(String::from("x")), None);
        assert_eq!(s.set_attr(6u32), Some(5));
        s.with_attr(|v: Option<&mut u32>| *v.expect("set") += 1);
        assert_eq!(s.attr::<u32>(), Some(7));
        assert_eq!(s.attr::<String>().as_deref(), Some("x"));
        assert_eq!(s.remove_attr::<u32>(), Some(7));
        assert_eq!(s.attr::<u32>(), None);
    }

    #[tokio::test]
    async fn send_after_close_errors() {
        let (s, mut rx) = session();
        s.try_send(1).expect("queued");
        s.try_send(2).expect("queued");
        assert!(matches!(s.try_send(3), Err(TrySendError::Full(3))));
        s.close();
        assert!(s.is_closed());
        assert!(matches!(s.send(4).await, Err(Error::SessionClosed)));
        assert!(matches!(s.try_send(5), Err(TrySendError::Closed(5))));
        assert_eq!(rx.recv().await, Some(1));
    }
}
