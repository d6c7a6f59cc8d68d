//! [`Server`]: binds any mix of TCP, TLS, UDP and WebSocket addresses (or serves on TCP
//! listeners bound elsewhere) and runs a session per connection (per peer address for UDP),
//! with a session limit and graceful shutdown.

use super::budget::Pool;
use super::config::SessionConfig;
use super::conn::{run_conn, stream_session, Conn, Io};
use super::endpoint::{Endpoint, Transport};
use super::framing::Framing;
use super::handle::Session;
use super::handler::{drive, Parts};
use super::listener::EventListener;
use super::reader::Inbound;
use super::udp::{decode_datagram, UdpSink, MAX_DATAGRAM};
use crate::Error;
use bytes::BytesMut;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running server. Dropping it stops accepting and closes every session (without waiting);
/// [`shutdown`](Server::shutdown) does the same gracefully and waits.
pub struct Server {
    endpoints: Vec<Endpoint>,
    ctl: Arc<Control>,
}

struct Control {
    accept: CancellationToken,
    sessions: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
    limit: Arc<Semaphore>,
    max_sessions: usize,
    udp_limit: Arc<Semaphore>,
    udp_max_sessions: usize,
    pool: Arc<Pool>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.accept.cancel();
        self.sessions.cancel();
    }
}

/// Builds a [`Server`]: `Server::builder(codec, factory).bind(url)….start().await`.
///
/// Where it serves: addresses it binds when it starts ([`bind`](Self::bind)), and TCP
/// listeners bound elsewhere and handed over ([`tcp_listener`](Self::tcp_listener),
/// `ws_listener`, `tls_listener`, `wss_listener`), in any mix.
pub struct ServerBuilder<L, C, F> {
    codec: C,
    factory: F,
    binds: Vec<Result<Bind, Error>>,
    cfg: SessionConfig,
    max_sessions: usize,
    udp_max_sessions: usize,
    shared_budget: usize,
    backlog: u32,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    _listener: PhantomData<fn() -> L>,
}

/// Where a server serves: an address to bind when it starts, or a listener bound by the caller
/// (with the endpoint it serves there).
enum Bind {
    Addr(Endpoint),
    Listener(Endpoint, TcpListener),
}

/// The default of [`ServerBuilder::shared_budget`]: 256 MiB.
pub const DEFAULT_SHARED_BUDGET: usize = 256 * 1024 * 1024;

/// A listening TCP socket with address reuse and the given accept backlog (tokio's
/// `TcpListener::bind` uses 128, too few for bursts of connections).
fn listen(addr: SocketAddr, backlog: u32) -> Result<TcpListener, Error> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(backlog)?)
}

impl Server {
    /// Starts building a server whose sessions frame with `codec` (cloned per session) and
    /// whose listener is made by `factory`, once per new session.
    pub fn builder<L, C, F>(codec: C, factory: F) -> ServerBuilder<L, C, F>
    where
        L: EventListener,
        C: Framing<L::In, L::Out>,
        F: Fn() -> L + Send + Sync + 'static,
    {
        ServerBuilder {
            codec,
            factory,
            binds: Vec::new(),
            cfg: SessionConfig::default(),
            max_sessions: 100_000,
            udp_max_sessions: 10_000,
            shared_budget: DEFAULT_SHARED_BUDGET,
            backlog: 1024,
            #[cfg(feature = "tls")]
            tls: None,
            _listener: PhantomData,
        }
    }

    /// The endpoints the server listens on, with the ports actually bound (port 0 resolved).
    pub fn local_endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The bound address of the first endpoint of `transport`.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.endpoints
            .iter()
            .find(|e| e.transport() == transport)
            .and_then(|e| e.authority().parse().ok())
    }

    /// The bound endpoint of `transport` (e.g. to hand to a client).
    pub fn endpoint(&self, transport: Transport) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.transport() == transport)
    }

    /// Sessions open now (connections and UDP peers).
    pub fn session_count(&self) -> usize {
        self.ctl.max_sessions - self.ctl.limit.available_permits() + self.udp_session_count()
    }

    /// Bytes of the shared budget (see [`ServerBuilder::shared_budget`]) that sessions hold
    /// now.
    pub fn shared_budget_used(&self) -> usize {
        self.ctl.pool.used()
    }

    /// UDP peers with a session now.
    pub fn udp_session_count(&self) -> usize {
        self.ctl.udp_max_sessions - self.ctl.udp_limit.available_permits()
    }

    /// Graceful shutdown: stop accepting, close every session (each writes what was already
    /// queued, then shuts down its connection and runs `on_close`), and return when all are
    /// closed. Sessions still open after `grace` are closed by force.
    pub async fn shutdown(self, grace: Duration) {
        let ctl = &self.ctl;
        ctl.accept.cancel();
        ctl.sessions.cancel();
        ctl.tracker.close();
        if tokio::time::timeout(grace, ctl.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.session_count(),
                "shutdown grace period over, closing by force"
            );
            ctl.force.cancel();
            ctl.tracker.wait().await;
        }
    }
}

impl<L, C, F> ServerBuilder<L, C, F>
where
    L: EventListener,
    C: Framing<L::In, L::Out>,
    F: Fn() -> L + Send + Sync + 'static,
{
    /// Adds an address to listen on: `tcp://`, `udp://`, `ws://host:port/path`, and with the
    /// `tls` feature `tls://` and `wss://`. Port 0 picks a free port; read it back with
    /// [`Server::local_endpoints`].
    pub fn bind(mut self, url: &str) -> Self {
        self.binds.push(Endpoint::parse(url).map(Bind::Addr));
        self
    }

    /// Serves plain TCP (`tcp://`) on `listener`, a socket bound and listening already: one
    /// handed over by a process manager (socket activation), bound before privileges were
    /// dropped, or bound by a test that needs the port first. The server accepts on it until
    /// it shuts down, then drops it (closing the socket); [`Server::local_endpoints`] lists it
    /// with its address. [`backlog`](Self::backlog) does not apply: the listener's own is
    /// kept. A `std::net::TcpListener` becomes one with `set_nonblocking(true)` and
    /// [`TcpListener::from_std`] (inside the runtime).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), qsocket::Error> {
    /// # use qsocket::session::{Ctx, EventListener, Server};
    /// # use bytes::{Bytes, BytesMut};
    /// # #[derive(Default)] struct Echo;
    /// # impl EventListener for Echo {
    /// #     type In = BytesMut; type Out = Bytes;
    /// #     async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, m: BytesMut) { ctx.send(m.freeze()) }
    /// # }
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = listener.local_addr()?; // known before the server starts
    /// let server = Server::builder(tokio_util::codec::LengthDelimitedCodec::new(), Echo::default)
    ///     .tcp_listener(listener)
    ///     .start()
    ///     .await?;
    /// # let _ = (addr, server); Ok(()) }
    /// ```
    pub fn tcp_listener(self, listener: TcpListener) -> Self {
        self.listener(Transport::Tcp, listener, "/")
    }

    /// Serves WebSocket (`ws://`) on `listener`, a socket bound and listening already, taking
    /// upgrades for `path` only (others get 404): as [`tcp_listener`](Self::tcp_listener),
    /// with the WebSocket handshake. `path` must start with `/` (else [`start`](Self::start)
    /// fails).
    #[cfg(feature = "ws")]
    pub fn ws_listener(self, listener: TcpListener, path: &str) -> Self {
        self.listener(Transport::Ws, listener, path)
    }

    /// Serves TLS over TCP (`tls://`) on `listener`, a socket bound and listening already: as
    /// [`tcp_listener`](Self::tcp_listener), with the TLS configuration given to
    /// [`tls`](Self::tls).
    #[cfg(feature = "tls")]
    pub fn tls_listener(self, listener: TcpListener) -> Self {
        self.listener(Transport::Tls, listener, "/")
    }

    /// Serves WebSocket over TLS (`wss://`) on `listener`, a socket bound and listening
    /// already, for `path` only: as [`ws_listener`](Self::ws_listener), with the TLS
    /// configuration given to [`tls`](Self::tls).
    #[cfg(all(feature = "ws", feature = "tls"))]
    pub fn wss_listener(self, listener: TcpListener, path: &str) -> Self {
        self.listener(Transport::Wss, listener, path)
    }

    /// Adds a listener bound by the caller, to serve `transport` on (`path`: WebSocket only).
    fn listener(mut self, transport: Transport, listener: TcpListener, path: &str) -> Self {
        let bind = if transport.is_ws() && !path.starts_with('/') {
            Err(Error::Config(format!(
                "the WebSocket path {path:?} must start with '/'"
            )))
        } else {
            match listener.local_addr() {
                Ok(addr) => Ok(Bind::Listener(
                    Endpoint::from_addr(transport, addr, path),
                    listener,
                )),
                Err(e) => Err(e.into()),
            }
        };
        self.binds.push(bind);
        self
    }

    /// Replaces the whole session configuration.
    pub fn config(mut self, cfg: SessionConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Runs `on_cron` every `period`.
    pub fn cron_period(mut self, period: Duration) -> Self {
        self.cfg.cron_period = Some(period);
        self
    }

    /// Closes sessions whose `active()` time is older than `timeout`.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.session_timeout = Some(timeout);
        self
    }

    /// Bounds how long a started frame may take to arrive whole.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.read_timeout = Some(timeout);
        self
    }

    /// Bounds how long one write may take.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.write_timeout = Some(timeout);
        self
    }

    /// The largest frame accepted (see [`SessionConfig::max_frame_len`]).
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.cfg.max_frame_len = len;
        self
    }

    /// The most connection sessions open at once (TCP, TLS, WebSocket); connections beyond it
    /// are closed at once. Default 100,000.
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// The most UDP peers with a session at once; datagrams from further new peers are
    /// dropped. Counted apart from [`max_sessions`](Self::max_sessions), so datagrams from
    /// many (possibly forged) source addresses cannot take the connections' places.
    /// Default 10,000.
    pub fn udp_max_sessions(mut self, n: usize) -> Self {
        self.udp_max_sessions = n;
        self
    }

    /// The server's shared byte budget: what all its sessions together may hold beyond their
    /// [`session_allowance`](SessionConfig::session_allowance)s (partial frames, frames
    /// waiting to be handled or kept by listeners, output waiting for slow peers). While it is
    /// spent, sessions past their allowance stop reading — their large frames wait — and
    /// sessions within it keep reading. Must be at least the largest frame
    /// ([`max_frame_len`](Self::max_frame_len)) + 64 KiB. Default 256 MiB
    /// ([`DEFAULT_SHARED_BUDGET`]).
    ///
    /// With the defaults, 10,000 sessions hold at most this plus 10,000 × (16 KiB allowance +
    /// about 4 KiB of session state), plus read and write buffers of sessions busy at that
    /// moment (up to 64 KiB each): see the README's "Memory under attack".
    pub fn shared_budget(mut self, bytes: usize) -> Self {
        self.shared_budget = bytes;
        self
    }

    /// The TLS configuration for `tls://` and `wss://` endpoints (see [`crate::session::tls`]).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The accept backlog of TCP and WebSocket listeners (the kernel caps it at
    /// `net.core.somaxconn`). Default 1024.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Binds every address and starts serving there and on every listener handed over.
    pub async fn start(self) -> Result<Server, Error> {
        self.cfg.validate()?;
        for (name, n) in [
            ("max_sessions", self.max_sessions),
            ("udp_max_sessions", self.udp_max_sessions),
        ] {
            if n == 0 || n > Semaphore::MAX_PERMITS {
                return Err(Error::Config(format!(
                    "{name} must be between 1 and {}",
                    Semaphore::MAX_PERMITS
                )));
            }
        }
        if self.binds.is_empty() {
            return Err(Error::Config(
                "nothing to serve on: call bind(url) or hand over a listener".into(),
            ));
        }
        if self.shared_budget < self.cfg.min_budget() {
            return Err(Error::Config(format!(
                "shared_budget ({}) must be at least max_frame_len ({}) + 64 KiB: a largest frame could never arrive whole",
                self.shared_budget, self.cfg.max_frame_len
            )));
        }
        let binds = self.binds.into_iter().collect::<Result<Vec<_>, _>>()?;
        #[cfg(feature = "tls")]
        let tls = self.tls.map(tokio_rustls::TlsAcceptor::from);
        for bind in &binds {
            let e = match bind {
                Bind::Addr(e) | Bind::Listener(e, _) => e,
            };
            if e.transport().is_tls() {
                #[cfg(feature = "tls")]
                if tls.is_none() {
                    return Err(Error::Config(format!(
                        "{e} needs a TLS configuration: call tls(..)"
                    )));
                }
                #[cfg(not(feature = "tls"))]
                return Err(Error::Config(format!("{e} needs the `tls` cargo feature")));
            }
            #[cfg(not(feature = "ws"))]
            if e.transport().is_ws() {
                return Err(Error::Config(format!("{e} needs the `ws` cargo feature")));
            }
        }
        let mut udp_cfg = self.cfg.clone();
        udp_cfg.session_timeout = udp_cfg.session_timeout.or(Some(udp_cfg.udp_idle_timeout));
        let ctl = Arc::new(Control {
            accept: CancellationToken::new(),
            sessions: CancellationToken::new(),
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
            limit: Arc::new(Semaphore::new(self.max_sessions)),
            max_sessions: self.max_sessions,
            udp_limit: Arc::new(Semaphore::new(self.udp_max_sessions)),
            udp_max_sessions: self.udp_max_sessions,
            pool: Pool::new(self.shared_budget),
        });
        let shared = Arc::new(Shared {
            factory: self.factory,
            codec: self.codec,
            cfg: self.cfg,
            udp_cfg,
            accept: ctl.accept.clone(),
            sessions: ctl.sessions.clone(),
            force: ctl.force.clone(),
            tracker: ctl.tracker.clone(),
            limit: ctl.limit.clone(),
            udp_limit: ctl.udp_limit.clone(),
            udp_max_sessions: self.udp_max_sessions,
            pool: ctl.pool.clone(),
            #[cfg(feature = "tls")]
            tls,
            _listener: PhantomData,
        });
        let backlog = self.backlog;
        let mut endpoints = Vec::with_capacity(binds.len());
        for bind in binds {
            let (bound, listener) = match bind {
                Bind::Listener(bound, listener) => (bound, listener),
                Bind::Addr(ep) => {
                    let addr = ep.resolve().await?;
                    if ep.transport() == Transport::Udp {
                        let socket = Arc::new(UdpSocket::bind(addr).await?);
                        let local = socket.local_addr()?;
                        endpoints.push(Endpoint::from_addr(Transport::Udp, local, "/"));
                        ctl.tracker
                            .spawn(udp_dispatch(socket, local, shared.clone()));
                        continue;
                    }
                    let listener = listen(addr, backlog)?;
                    let local = listener.local_addr()?;
                    let bound = Endpoint::from_addr(ep.transport(), local, ep.path());
                    (bound, listener)
                }
            };
            endpoints.push(bound.clone());
            ctl.tracker
                .spawn(accept_loop(listener, bound, shared.clone()));
        }
        tracing::info!(endpoints = ?endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(), "server started");
        Ok(Server { endpoints, ctl })
    }
}

struct Shared<L, C, F> {
    factory: F,
    codec: C,
    cfg: SessionConfig,
    udp_cfg: SessionConfig,
    accept: CancellationToken,
    sessions: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
    limit: Arc<Semaphore>,
    udp_limit: Arc<Semaphore>,
    udp_max_sessions: usize,
    pool: Arc<Pool>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
    _listener: PhantomData<fn() -> L>,
}

fn shared_udp_max<L, C, F>(shared: &Shared<L, C, F>) -> usize {
    shared.udp_max_sessions
}

/// Whether an `accept` error means the process or system is out of a resource (then back off
/// instead of spinning).
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if [23, 24, 105, 12].contains(&code)) // ENFILE EMFILE ENOBUFS ENOMEM
}

async fn accept_loop<L, C, F>(listener: TcpListener, ep: Endpoint, shared: Arc<Shared<L, C, F>>)
where
    L: EventListener,
    C: Framing<L::In, L::Out>,
    F: Fn() -> L + Send + Sync + 'static,
{
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.accept.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if is_resource_exhaustion(&e) {
                    tracing::warn!(endpoint = %ep, error = %e, "accept failed, backing off");
                    tokio::select! {
                        _ = shared.accept.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                } else {
                    tracing::debug!(endpoint = %ep, error = %e, "accept failed");
                }
                continue;
            }
        };
        let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
            tracing::warn!(endpoint = %ep, %peer, "session limit reached, refusing connection");
            continue;
        };
        let shared2 = shared.clone();
        let transport = ep.transport();
        if transport == Transport::Tcp {
            // (Only what must outlive the session's start is captured: it stays in the task.)
            // The session's handler is this task itself: no wrapper task, no box.
            shared.tracker.spawn(async move {
                let shared = &shared2;
                let _ = stream.set_nodelay(true);
                let local = match stream.local_addr() {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection lost before its session");
                        return;
                    }
                };
                let (rd, wr) = stream.into_split();
                let what = (
                    (shared.factory)(),
                    shared.codec.clone(),
                    (Transport::Tcp, local, peer),
                    shared.sessions.child_token(),
                    Some(&shared.pool),
                );
                let on_live = |_: &Session<L::Out>| {};
                let _ = stream_session(rd, wr, what, &shared.cfg, &shared.force, on_live).await;
                drop(permit);
            });
            continue;
        }
        let path = ep.path().to_string();
        shared.tracker.spawn(async move {
            if let Err(e) = serve_conn(stream, peer, transport, &path, &shared2, permit).await {
                tracing::debug!(%peer, %transport, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn serve_conn<L, C, F>(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    path: &str,
    shared: &Shared<L, C, F>,
    _permit: OwnedSemaphorePermit,
) -> Result<(), Error>
where
    L: EventListener,
    C: Framing<L::In, L::Out>,
    F: Fn() -> L + Send + Sync + 'static,
{
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr()?;
    let cfg = &shared.cfg;
    // (Plain TCP sessions do not come here: the accept loop spawns them directly.)
    let limit = cfg.handshake_timeout;
    // Boxed: TLS and WebSocket handshake state is large and needed only briefly.
    let handshake = Box::pin(handshake(stream, transport, path, shared));
    let io = tokio::select! {
        _ = shared.sessions.cancelled() => return Ok(()),
        r = tokio::time::timeout(limit, handshake) => r.map_err(|_| Error::HandshakeTimeout(limit))??,
    };
    let conn = Conn {
        io,
        transport,
        local,
        peer,
    };
    let token = shared.sessions.child_token();
    run_conn(
        conn,
        (shared.factory)(),
        shared.codec.clone(),
        cfg,
        (token, Some(&shared.pool)),
        &shared.force,
        |_| {},
    )
    .await
}

#[allow(unused_variables)]
async fn handshake<L, C, F>(
    stream: TcpStream,
    transport: Transport,
    path: &str,
    shared: &Shared<L, C, F>,
) -> Result<Io, Error> {
    #[cfg(feature = "tls")]
    let tls = |stream: TcpStream| async {
        let acceptor = shared
            .tls
            .as_ref()
            .ok_or_else(|| Error::Config("no TLS configuration".into()))?;
        let s = acceptor
            .accept(stream)
            .await
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok::<_, Error>(Box::new(tokio_rustls::TlsStream::Server(s)))
    };
    match transport {
        #[cfg(feature = "tls")]
        Transport::Tls => Ok(Io::Tls(tls(stream).await?)),
        #[cfg(feature = "ws")]
        Transport::Ws => {
            let ws = super::ws::accept(super::io::Stream::Plain(stream), path, &shared.cfg).await?;
            Ok(Io::Ws(Box::new(ws)))
        }
        #[cfg(all(feature = "ws", feature = "tls"))]
        Transport::Wss => {
            let s = super::io::Stream::Tls(tls(stream).await?);
            Ok(Io::Ws(Box::new(
                super::ws::accept(s, path, &shared.cfg).await?,
            )))
        }
        other => Err(Error::Config(format!(
            "transport {other} is not available in this build"
        ))),
    }
}

/// One UDP peer known to the dispatcher.
struct Peer<I, O, C> {
    tx: super::queue::Sender<Inbound<I>>,
    codec: C,
    session: Session<O>,
    /// Datagrams received from it (counted up to 2: one means "on probation").
    datagrams: u8,
    /// Its place among the UDP sessions.
    _permit: OwnedSemaphorePermit,
}

/// Frees a UDP session place when all are taken: the oldest session whose peer has sent only
/// one datagram is closed. Peers that spoof many source addresses (each sending one datagram)
/// thus cannot lock out new ones: they only displace each other. `false` if none could go.
fn evict_one<I, O, C>(
    peers: &mut HashMap<SocketAddr, Peer<I, O, C>>,
    probation: &mut std::collections::VecDeque<(SocketAddr, u64)>,
) -> bool {
    while let Some((addr, id)) = probation.pop_front() {
        if peers
            .get(&addr)
            .is_some_and(|p| p.session.id() == id && p.datagrams == 1)
        {
            if let Some(p) = peers.remove(&addr) {
                tracing::debug!(%addr, "udp session limit reached, ending the oldest session on probation");
                // At once (no graceful drain), so its place is free while it is counted free.
                p.session.peer_gone();
            }
            return true;
        }
    }
    false
}

/// The reader of a UDP server socket: routes each datagram, decoded, to its peer's session.
async fn udp_dispatch<L, C, F>(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    shared: Arc<Shared<L, C, F>>,
) where
    L: EventListener,
    C: Framing<L::In, L::Out>,
    F: Fn() -> L + Send + Sync + 'static,
{
    let mut scratch = vec![0u8; MAX_DATAGRAM + 1];
    let mut peers: HashMap<SocketAddr, Peer<L::In, L::Out, C>> = HashMap::new();
    // Sessions whose peer had sent one datagram when they opened, oldest first (entries of
    // peers gone or proven since are skipped and pruned).
    let mut probation = std::collections::VecDeque::new();
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    loop {
        let (n, addr) = tokio::select! {
            biased;
            _ = shared.accept.cancelled() => break,
            Some((addr, id)) = gone_rx.recv() => {
                if peers.get(&addr).is_some_and(|p| p.session.id() == id) {
                    peers.remove(&addr);
                }
                continue;
            }
            r = socket.recv_from(&mut scratch) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(%local, error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        let live = peers.get(&addr).is_some_and(|p| !p.tx.is_closed());
        if !live {
            peers.remove(&addr);
            let mut permit = shared.udp_limit.clone().try_acquire_owned();
            if permit.is_err() && evict_one(&mut peers, &mut probation) {
                permit = shared.udp_limit.clone().try_acquire_owned();
            }
            let Ok(permit) = permit else {
                tracing::debug!(%addr, "udp session limit reached, dropping datagram");
                continue;
            };
            let cfg = &shared.udp_cfg;
            let token = shared.sessions.child_token();
            let mem = super::conn::mem_of(cfg, Some(&shared.pool));
            let (session, outbound) =
                Session::new(Transport::Udp, local, addr, cfg.send_queue, token, mem);
            let (tx, inbound) = super::queue::channel(cfg.recv_queue);
            let parts = Parts {
                listener: (shared.factory)(),
                codec: shared.codec.clone(),
                session: session.clone(),
                outbound,
                inbound,
            };
            let sink = UdpSink::to_peer(socket.clone(), addr);
            let (shared2, gone, id) = (shared.clone(), gone_tx.clone(), session.id());
            shared.tracker.spawn(async move {
                let cfg = &shared2.udp_cfg;
                let none = None::<fn() -> std::future::Ready<()>>;
                let _ = drive(parts, sink, none, cfg, &shared2.force, |_| {}).await;
                let _ = gone.send((addr, id));
            });
            if probation.len() >= 2 * shared_udp_max(&shared) {
                probation.retain(|(a, i): &(SocketAddr, u64)| {
                    peers
                        .get(a)
                        .is_some_and(|p| p.session.id() == *i && p.datagrams == 1)
                });
            }
            probation.push_back((addr, id));
            peers.insert(
                addr,
                Peer {
                    tx,
                    codec: shared.codec.clone(),
                    session,
                    datagrams: 0,
                    _permit: permit,
                },
            );
        }
        let Some(peer) = peers.get_mut(&addr) else {
            continue;
        };
        peer.datagrams = peer.datagrams.saturating_add(1).min(2);
        let stats = peer.session.stats_ref();
        stats.add_in(0, n as u64);
        let at = stats.touch();
        let max = shared.udp_cfg.max_frame_len;
        let (frames, dropped, err) = if n > max {
            (0, 0, Some(Error::FrameTooLarge { len: n, max }))
        } else {
            let buf = BytesMut::from(&scratch[..n]);
            decode_datagram(&mut peer.codec, buf, &peer.tx, peer.session.mem(), at)
        };
        stats.add_in(frames, 0);
        if dropped > 0 {
            tracing::debug!(%addr, dropped, "udp session queue or budget full, frames dropped");
        }
        if let Some(e) = err {
            // The session reports it and closes; the next datagram from this peer opens anew.
            let _ = peer.tx.try_send(Inbound::Err(e));
            peers.remove(&addr);
        }
    }
}
