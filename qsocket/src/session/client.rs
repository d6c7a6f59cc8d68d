//! [`Client`]: N sessions to one endpoint (getty's "connection number"), each slot reconnecting
//! on its own — one attempt at a time, capped exponential backoff with jitter, optional attempt
//! limit — and a way to get a live session.

use super::config::{Backoff, SessionConfig};
use super::conn::{run_conn, Conn, Io};
use super::endpoint::{Endpoint, Transport};
use super::framing::Framing;
use super::handle::Session;
use super::listener::EventListener;
use crate::Error;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client: keeps `sessions` sessions to one endpoint alive. Cheap to clone. When the last
/// clone is dropped its sessions are closed; [`close`](Client::close) does it and waits.
pub struct Client<O> {
    ctl: Arc<Control<O>>,
}

impl<O> Clone for Client<O> {
    fn clone(&self) -> Self {
        Client {
            ctl: self.ctl.clone(),
        }
    }
}

struct Control<O> {
    endpoint: Endpoint,
    slots: Arc<Slots<O>>,
    token: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
}

impl<O> Drop for Control<O> {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

enum Slot<O> {
    Connecting,
    Live(Session<O>),
    Ended,
}

struct Slots<O> {
    state: Mutex<Vec<Slot<O>>>,
    changed: Notify,
    next: AtomicUsize,
}

impl<O> Slots<O> {
    fn set(&self, i: usize, slot: Slot<O>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = st.get_mut(i) {
            *s = slot;
        }
        drop(st);
        self.changed.notify_waiters();
    }
}

/// Builds a [`Client`]: `Client::builder(url, codec, factory)….start().await`.
pub struct ClientBuilder<L, C, F> {
    endpoint: Result<Endpoint, Error>,
    codec: C,
    factory: F,
    cfg: SessionConfig,
    sessions: usize,
    backoff: Backoff,
    connect_timeout: Duration,
    on_connect_error: Option<ConnectErrorHook>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
    #[cfg(feature = "tls")]
    server_name: Option<String>,
    _listener: PhantomData<fn() -> L>,
}

/// Called with the error of each failed connection attempt.
type ConnectErrorHook = Arc<dyn Fn(&Error) + Send + Sync>;

impl<O: Send + 'static> Client<O> {
    /// Starts building a client of `url` (`tcp://`, `udp://`, `ws://…/path`, with `tls`:
    /// `tls://`, `wss://`) whose sessions frame with `codec` and whose listener is made by
    /// `factory` for every new connection.
    pub fn builder<L, C, F>(url: &str, codec: C, factory: F) -> ClientBuilder<L, C, F>
    where
        L: EventListener<Out = O>,
        C: Framing<L::In, O>,
        F: Fn() -> L + Send + Sync + 'static,
    {
        ClientBuilder {
            endpoint: Endpoint::parse(url),
            codec,
            factory,
            cfg: SessionConfig::default(),
            sessions: 1,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            on_connect_error: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            server_name: None,
            _listener: PhantomData,
        }
    }

    /// The endpoint this client connects to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.ctl.endpoint
    }

    /// A live session (round robin over the live ones), waiting until one is connected.
    /// Fails with [`Error::ClientClosed`] once the client is closed or every slot gave up.
    /// Bound the wait with `tokio::time::timeout` if needed.
    pub async fn session(&self) -> Result<Session<O>, Error> {
        let slots = &self.ctl.slots;
        loop {
            let mut changed = pin!(slots.changed.notified());
            changed.as_mut().enable();
            if self.ctl.token.is_cancelled() {
                return Err(Error::ClientClosed);
            }
            match self.pick() {
                Some(s) => return Ok(s),
                None if self.all_ended() => return Err(Error::ClientClosed),
                None => changed.await,
            }
        }
    }

    /// A live session if one is connected now.
    pub fn try_session(&self) -> Option<Session<O>> {
        self.pick()
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<Session<O>> {
        let st = self
            .ctl
            .slots
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.iter()
            .filter_map(|s| match s {
                Slot::Live(s) if !s.is_closed() => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn pick(&self) -> Option<Session<O>> {
        let slots = &self.ctl.slots;
        let st = slots.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = st.len();
        let start = slots.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|k| match &st[(start + k) % n] {
            Slot::Live(s) if !s.is_closed() => Some(s.clone()),
            _ => None,
        })
    }

    fn all_ended(&self) -> bool {
        let st = self
            .ctl
            .slots
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.iter().all(|s| matches!(s, Slot::Ended))
    }

    /// Closes every session gracefully (queued messages are written) and stops reconnecting;
    /// returns when all are closed. Sessions still open after `grace` are closed by force.
    pub async fn close(&self, grace: Duration) {
        let ctl = &self.ctl;
        ctl.token.cancel();
        ctl.tracker.close();
        if tokio::time::timeout(grace, ctl.tracker.wait())
            .await
            .is_err()
        {
            ctl.force.cancel();
            ctl.tracker.wait().await;
        }
    }
}

impl<L, C, F> ClientBuilder<L, C, F>
where
    L: EventListener,
    C: Framing<L::In, L::Out>,
    F: Fn() -> L + Send + Sync + 'static,
{
    /// How many sessions to keep open to the endpoint. Default 1.
    pub fn sessions(mut self, n: usize) -> Self {
        self.sessions = n;
        self
    }

    /// The reconnect policy.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Calls `hook` with the error of every failed connection attempt (refused, timed out,
    /// handshake failed) — e.g. to fail calls fast instead of waiting for a reconnect. It runs
    /// on the reconnecting task: keep it short.
    pub fn on_connect_error(mut self, hook: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_connect_error = Some(Arc::new(hook));
        self
    }

    /// Bounds connecting plus the TLS / WebSocket handshake. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Replaces the whole session configuration.
    pub fn config(mut self, cfg: SessionConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Runs `on_cron` every `period` (e.g. to send heartbeats).
    pub fn cron_period(mut self, period: Duration) -> Self {
        self.cfg.cron_period = Some(period);
        self
    }

    /// Closes sessions whose `active()` time is older than `timeout` (they then reconnect).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.session_timeout = Some(timeout);
        self
    }

    /// The largest frame accepted (see [`SessionConfig::max_frame_len`]).
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.cfg.max_frame_len = len;
        self
    }

    /// The TLS configuration for `tls://` and `wss://` endpoints (see [`crate::session::tls`]).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The name checked against the server's certificate. Default: the endpoint's host.
    #[cfg(feature = "tls")]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Starts the client: every slot begins connecting in the background. Use
    /// [`Client::session`] to wait for a live session.
    pub async fn start(self) -> Result<Client<L::Out>, Error> {
        self.cfg.validate()?;
        self.backoff.validate()?;
        let endpoint = self.endpoint?;
        if self.sessions == 0 {
            return Err(Error::Config("a client needs at least 1 session".into()));
        }
        #[cfg(feature = "tls")]
        let tls = match (endpoint.transport().is_tls(), self.tls) {
            (true, None) => {
                return Err(Error::Config(format!(
                    "{endpoint} needs a TLS configuration: call tls(..)"
                )))
            }
            (_, cfg) => cfg.map(tokio_rustls::TlsConnector::from),
        };
        #[cfg(not(feature = "tls"))]
        if endpoint.transport().is_tls() {
            return Err(Error::Config(format!(
                "{endpoint} needs the `tls` cargo feature"
            )));
        }
        #[cfg(not(feature = "ws"))]
        if endpoint.transport().is_ws() {
            return Err(Error::Config(format!(
                "{endpoint} needs the `ws` cargo feature"
            )));
        }
        let slots = Arc::new(Slots {
            state: Mutex::new((0..self.sessions).map(|_| Slot::Connecting).collect()),
            changed: Notify::new(),
            next: AtomicUsize::new(0),
        });
        let ctl = Arc::new(Control {
            endpoint: endpoint.clone(),
            slots: slots.clone(),
            token: CancellationToken::new(),
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let shared = Arc::new(Shared {
            #[cfg(feature = "tls")]
            server_name: self
                .server_name
                .unwrap_or_else(|| endpoint.host().to_string()),
            endpoint,
            codec: self.codec,
            factory: self.factory,
            cfg: self.cfg,
            backoff: self.backoff,
            connect_timeout: self.connect_timeout,
            on_connect_error: self.on_connect_error,
            #[cfg(feature = "tls")]
            tls,
            _listener: PhantomData,
        });
        for i in 0..self.sessions {
            ctl.tracker.spawn(supervise(
                i,
                shared.clone(),
                slots.clone(),
                ctl.token.clone(),
                ctl.force.clone(),
            ));
        }
        Ok(Client { ctl })
    }
}

struct Shared<L, C, F> {
    endpoint: Endpoint,
    codec: C,
    factory: F,
    cfg: SessionConfig,
    backoff: Backoff,
    connect_timeout: Duration,
    on_connect_error: Option<ConnectErrorHook>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
    #[cfg(feature = "tls")]
    server_name: String,
    _listener: PhantomData<fn() -> L>,
}

/// A small xorshift generator for backoff jitter (no need for a cryptographic one).
struct Jitter(u64);

impl Jitter {
    fn new(seed: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        Jitter((nanos ^ (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One slot: connect, run the session, reconnect — one attempt at a time.
async fn supervise<L, C, F>(
    i: usize,
    shared: Arc<Shared<L, C, F>>,
    slots: Arc<Slots<L::Out>>,
    token: CancellationToken,
    force: CancellationToken,
) where
    L: EventListener,
    C: Framing<L::In, L::Out>,
    F: Fn() -> L + Send + Sync + 'static,
{
    let ep = &shared.endpoint;
    let mut jitter = Jitter::new(i);
    // Failures in a row: the backoff grows with them.
    let mut failures: u32 = 0;
    // Failed attempts in a row, for the attempt limit: a session that lasted a moment or
    // received anything was not one.
    let mut attempts: u32 = 0;
    let healthy_after = Duration::from_secs(1).min(shared.backoff.max);
    loop {
        let limit = shared.connect_timeout;
        let connected = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            r = tokio::time::timeout(limit, connect(&shared)) => r.unwrap_or_else(|_| {
                Err(Error::ConnectTimeout { addr: ep.to_string(), after: limit })
            }),
        };
        match connected {
            Ok(conn) => {
                let started = Instant::now();
                let listener = (shared.factory)();
                let mut live = None;
                let opened = run_conn(
                    conn,
                    listener,
                    shared.codec.clone(),
                    &shared.cfg,
                    (token.child_token(), None),
                    &force,
                    |s| {
                        live = Some(s.clone());
                        slots.set(i, Slot::Live(s.clone()));
                    },
                )
                .await;
                slots.set(i, Slot::Connecting);
                if token.is_cancelled() {
                    break; // closed by the client itself
                }
                let lasted = started.elapsed();
                let was_opened = opened.is_ok();
                match opened {
                    // A session that lasted resets the backoff; one that ended at once (a server
                    // that accepts and drops) keeps growing it, so it cannot cause a storm.
                    Ok(()) if lasted >= shared.backoff.max => failures = 0,
                    Ok(()) => failures = failures.saturating_add(1),
                    Err(e) => {
                        tracing::debug!(endpoint = %ep, error = %e, "session refused by on_open");
                        failures = failures.saturating_add(1);
                    }
                }
                let received = live.is_some_and(|s| s.stats().bytes_in > 0);
                if was_opened && (received || lasted >= healthy_after) {
                    attempts = 0;
                } else {
                    attempts = attempts.saturating_add(1);
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                attempts = attempts.saturating_add(1);
                tracing::debug!(endpoint = %ep, error = %e, failures, "connect failed");
                if let Some(hook) = &shared.on_connect_error {
                    hook(&e);
                }
            }
        }
        // Failed attempts: a refused connection, a session refused by `on_open`, one that
        // ended at once without receiving anything (a server that accepts and drops).
        if attempts > 0
            && shared
                .backoff
                .max_attempts
                .is_some_and(|max| attempts >= max)
        {
            tracing::warn!(endpoint = %ep, attempts, "giving up reconnecting");
            break;
        }
        let delay = shared
            .backoff
            .delay(failures.saturating_sub(1), jitter.next());
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    slots.set(i, Slot::Ended);
}

async fn connect<L, C, F>(shared: &Shared<L, C, F>) -> Result<Conn, Error> {
    let ep = &shared.endpoint;
    let addr = ep.resolve().await?;
    let transport = ep.transport();
    if transport == Transport::Udp {
        let bind: SocketAddr = match (addr.is_ipv4(), addr.ip().is_loopback()) {
            (true, true) => ([127, 0, 0, 1], 0).into(),
            (true, false) => ([0, 0, 0, 0], 0).into(),
            (false, true) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
            (false, false) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(addr).await?;
        let local = socket.local_addr()?;
        return Ok(Conn {
            io: Io::Udp(Arc::new(socket)),
            transport,
            local,
            peer: addr,
        });
    }
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr()?;
    let io = match transport {
        Transport::Tcp => Io::Tcp(tcp),
        #[cfg(feature = "tls")]
        Transport::Tls => Io::Tls(tls_connect(shared, tcp).await?),
        #[cfg(feature = "ws")]
        Transport::Ws => {
            let s = super::io::Stream::Plain(tcp);
            Io::Ws(Box::new(
                super::ws::connect(s, &ep.to_string(), &shared.cfg).await?,
            ))
        }
        #[cfg(all(feature = "ws", feature = "tls"))]
        Transport::Wss => {
            let s = super::io::Stream::Tls(tls_connect(shared, tcp).await?);
            Io::Ws(Box::new(
                super::ws::connect(s, &ep.to_string(), &shared.cfg).await?,
            ))
        }
        other => {
            return Err(Error::Config(format!(
                "transport {other} is not available in this build"
            )))
        }
    };
    Ok(Conn {
        io,
        transport,
        local,
        peer: addr,
    })
}

#[cfg(feature = "tls")]
async fn tls_connect<L, C, F>(
    shared: &Shared<L, C, F>,
    tcp: TcpStream,
) -> Result<Box<tokio_rustls::TlsStream<TcpStream>>, Error> {
    let connector = shared
        .tls
        .as_ref()
        .ok_or_else(|| Error::Config("no TLS configuration".into()))?;
    let name = rustls::pki_types::ServerName::try_from(shared.server_name.clone())
        .map_err(|e| Error::Tls(format!("invalid server name {:?}: {e}", shared.server_name)))?;
    let s = connector
        .connect(name, tcp)
        .await
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Box::new(tokio_rustls::TlsStream::Client(s)))
}
