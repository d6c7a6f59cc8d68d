//! The RPC server: [`RpcServer::builder`] takes a [`Router`] of services, addresses to bind
//! and [server layers](ServerLayer), and [`start`](RpcServerBuilder::start)s an [`RpcServer`],
//! the handle that reports where it listens and shuts it down.
//!
//! | file | concept |
//! | --- | --- |
//! | `router.rs` | [`Service`], [`Router`], [`NamedService`]: services and methods by name |
//! | `handler.rs` | typed handlers with their types erased; [`IntoReply`] (response metadata) |
//! | `layer.rs` | [`ServerLayer`], [`Admit`], [`ServerStack`]: hooks before the handler and after the outcome |
//! | `dispatch.rs` | the session listener: checks, layers, in-place polling, calls in flight |
//!
//! Every request runs concurrently on its session's own task: it is polled once in place and,
//! only if it is still pending, parked in the session's set of requests in flight, under a
//! per-session limit.

mod dispatch;
mod handler;
mod layer;
mod router;

pub use handler::IntoReply;
pub use layer::{Admit, AdmitFuture, BoxServerLayer, DynServerLayer, ServerLayer, ServerStack};
pub use router::{NamedService, Router, Service};

use super::frame::{FrameCodec, Limits};
use crate::session::{Endpoint, Server, ServerBuilder, SessionConfig, Transport};
use crate::Error;
use dispatch::{RpcServerListener, Shared};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Settings of an RPC server. Start from [`RpcServerConfig::default`] and change what you
/// need, with the setters or by assigning fields.
///
/// ```
/// use qsocket::rpc::RpcServerConfig;
/// let cfg = RpcServerConfig::default().max_in_flight(256).udp_max_in_flight(16);
/// assert_eq!(cfg.max_in_flight, 256);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcServerConfig {
    /// Frame size limits.
    pub limits: Limits,
    /// Requests in flight per session; beyond it the session stops reading (backpressure).
    /// UDP sessions use at most [`RpcServerConfig::udp_max_in_flight`]. Default 1024.
    pub max_in_flight: usize,
    /// In-flight limit of UDP sessions. Default 64.
    pub udp_max_in_flight: usize,
    /// Session settings (timeouts, queues…). The default closes sessions idle for 2 minutes
    /// (clients send heartbeats when otherwise idle).
    pub session: SessionConfig,
}

impl Default for RpcServerConfig {
    fn default() -> Self {
        let limits = Limits::default();
        RpcServerConfig {
            limits,
            max_in_flight: 1024,
            udp_max_in_flight: 64,
            session: SessionConfig::default()
                .session_timeout(Some(Duration::from_secs(120)))
                .max_frame_len(limits.max_frame()),
        }
    }
}

impl RpcServerConfig {
    /// Sets [`limits`](Self::limits).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Sets [`udp_max_in_flight`](Self::udp_max_in_flight).
    pub fn udp_max_in_flight(mut self, n: usize) -> Self {
        self.udp_max_in_flight = n;
        self
    }

    /// Sets [`session`](Self::session).
    pub fn session(mut self, session: SessionConfig) -> Self {
        self.session = session;
        self
    }
}

/// A running RPC server: where it listens, how busy it is, and its shutdown.
///
/// Dropping it stops the server at once: it stops accepting and closes every session without
/// waiting for calls in flight. [`shutdown`](Self::shutdown) stops it gracefully.
///
/// ```no_run
/// use qsocket::rpc::{Router, RpcServer};
/// # async fn run() -> Result<(), qsocket::Error> {
/// let server = RpcServer::builder(Router::new()).bind("tcp://127.0.0.1:0").start().await?;
/// println!("listening on {}", server.local_endpoints()[0]);
/// server.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[must_use = "dropping the server stops serving at once; keep it, or call `shutdown`"]
pub struct RpcServer {
    inner: Server,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::rpc::MetricsServer>,
}

impl RpcServer {
    /// Starts building a server for the services of `router`.
    pub fn builder(router: Router) -> RpcServerBuilder {
        RpcServerBuilder {
            router,
            layer: (),
            cfg: RpcServerConfig::default(),
            binds: Vec::new(),
            max_sessions: None,
            udp_max_sessions: None,
            shared_budget: None,
            backlog: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// The endpoints the server listens on, with the ports actually bound (port 0 resolved),
    /// in the order they were added.
    pub fn local_endpoints(&self) -> &[Endpoint] {
        self.inner.local_endpoints()
    }

    /// The bound address of the first endpoint of `transport`.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.inner.local_addr(transport)
    }

    /// The first bound endpoint of `transport` (e.g. to hand to a client:
    /// `RpcClient::connect(&ep.to_string())`).
    pub fn endpoint(&self, transport: Transport) -> Option<&Endpoint> {
        self.inner.endpoint(transport)
    }

    /// Where [`RpcServerBuilder::metrics`] serves `/metrics`, if it was asked to.
    #[cfg(feature = "metrics")]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(crate::rpc::MetricsServer::local_addr)
    }

    /// Sessions open now (connections and UDP peers).
    pub fn session_count(&self) -> usize {
        self.inner.session_count()
    }

    /// UDP peers with a session now.
    pub fn udp_session_count(&self) -> usize {
        self.inner.udp_session_count()
    }

    /// Bytes of the shared budget (see [`RpcServerBuilder::shared_budget`]) that sessions
    /// hold now: requests being read, waiting or in flight, and responses not yet written.
    pub fn shared_budget_used(&self) -> usize {
        self.inner.shared_budget_used()
    }

    /// Graceful shutdown: stop accepting; on every session, send a `goaway` (clients send no
    /// new calls on it), answer the calls in flight, write what is queued and close. Returns
    /// when every session is closed; sessions still open after `grace` are closed by force
    /// (their calls in flight are dropped, unanswered).
    pub async fn shutdown(self, grace: Duration) {
        self.inner.shutdown(grace).await;
    }
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("endpoints", &self.local_endpoints())
            .field("sessions", &self.session_count())
            .finish()
    }
}

/// Where to listen: an address, or a socket bound already.
enum Bind {
    Url(String),
    /// A listener bound already, its transport, and (WebSocket) its path.
    Listener(
        Transport,
        TcpListener,
        #[cfg_attr(not(feature = "ws"), allow(dead_code))] String,
    ),
}

/// Builds an RPC server (see [`RpcServer::builder`]). `L` is its chain of
/// [server layers](ServerLayer): none (`()`) until [`layer`](Self::layer) adds one.
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct RpcServerBuilder<L = ()> {
    router: Router,
    layer: L,
    cfg: RpcServerConfig,
    binds: Vec<Bind>,
    max_sessions: Option<usize>,
    udp_max_sessions: Option<usize>,
    shared_budget: Option<usize>,
    backlog: Option<u32>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    #[cfg(feature = "metrics")]
    metrics: Option<(String, Vec<crate::rpc::Stats>)>,
}

impl<L> fmt::Debug for RpcServerBuilder<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServerBuilder")
            .field("router", &self.router)
            .field("layer", &std::any::type_name::<L>())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<L: ServerLayer> RpcServerBuilder<L> {
    /// Adds a server layer inside the ones added before: layers added first run first before
    /// the handler and last after it (`builder.layer(auth).layer(stats)`: `auth` admits calls
    /// before `stats` sees them). See [`ServerLayer`].
    pub fn layer<N: ServerLayer>(self, layer: N) -> RpcServerBuilder<ServerStack<L, N>> {
        RpcServerBuilder {
            router: self.router,
            layer: ServerStack::new(self.layer, layer),
            cfg: self.cfg,
            binds: self.binds,
            max_sessions: self.max_sessions,
            udp_max_sessions: self.udp_max_sessions,
            shared_budget: self.shared_budget,
            backlog: self.backlog,
            #[cfg(feature = "tls")]
            tls: self.tls,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Serves `stats` in Prometheus text format at `GET /metrics` over HTTP on `addr` (an
    /// address of its own, e.g. `"127.0.0.1:9464"`), for as long as the server runs (see
    /// [`MetricsServer`](crate::rpc::MetricsServer); feature `metrics`).
    #[cfg(feature = "metrics")]
    pub fn metrics(
        mut self,
        addr: &str,
        stats: impl IntoIterator<Item = crate::rpc::Stats>,
    ) -> Self {
        self.metrics = Some((addr.to_string(), stats.into_iter().collect()));
        self
    }

    /// Adds an address: `tcp://`, `udp://`, `ws://host:port/path` (and `tls://`, `wss://`).
    /// Port 0 picks a free port: read it back with [`RpcServer::local_endpoints`].
    pub fn bind(mut self, url: &str) -> Self {
        self.binds.push(Bind::Url(url.to_string()));
        self
    }

    /// Serves plain TCP (`tcp://`) on `listener`, a socket bound and listening already (socket
    /// activation, a port bound before privileges were dropped, a test that needs the address
    /// first). The server accepts on it until it shuts down.
    pub fn tcp_listener(mut self, listener: TcpListener) -> Self {
        self.binds
            .push(Bind::Listener(Transport::Tcp, listener, "/".into()));
        self
    }

    /// Serves WebSocket (`ws://`) on `listener`, a socket bound and listening already, taking
    /// upgrades for `path` only (it must start with `/`).
    #[cfg(feature = "ws")]
    pub fn ws_listener(mut self, listener: TcpListener, path: &str) -> Self {
        self.binds
            .push(Bind::Listener(Transport::Ws, listener, path.into()));
        self
    }

    /// Serves TLS (`tls://`) on `listener`, a socket bound and listening already, with the
    /// configuration given to [`tls`](Self::tls).
    #[cfg(feature = "tls")]
    pub fn tls_listener(mut self, listener: TcpListener) -> Self {
        self.binds
            .push(Bind::Listener(Transport::Tls, listener, "/".into()));
        self
    }

    /// Serves WebSocket over TLS (`wss://`) on `listener`, a socket bound and listening
    /// already, for `path` only, with the configuration given to [`tls`](Self::tls).
    #[cfg(all(feature = "ws", feature = "tls"))]
    pub fn wss_listener(mut self, listener: TcpListener, path: &str) -> Self {
        self.binds
            .push(Bind::Listener(Transport::Wss, listener, path.into()));
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, cfg: RpcServerConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Requests in flight per session.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.cfg.max_in_flight = n;
        self
    }

    /// The most connection sessions at once (see [`ServerBuilder::max_sessions`]).
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = Some(n);
        self
    }

    /// The most UDP peers at once (see [`ServerBuilder::udp_max_sessions`]).
    pub fn udp_max_sessions(mut self, n: usize) -> Self {
        self.udp_max_sessions = Some(n);
        self
    }

    /// What all sessions together may hold beyond their allowances: requests being read,
    /// waiting, or in flight, and responses waiting for slow clients (see
    /// [`ServerBuilder::shared_budget`]). Default 256 MiB.
    pub fn shared_budget(mut self, bytes: usize) -> Self {
        self.shared_budget = Some(bytes);
        self
    }

    /// The accept backlog of the TCP sockets the server binds (see
    /// [`ServerBuilder::backlog`]). Default 1024.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// TLS for `tls://` and `wss://` addresses.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Binds and starts serving. Fails with [`Error::Config`] on a router that names a
    /// service or a method twice, or on limits of 0; with the bind error if an address cannot
    /// be bound.
    pub async fn start(self) -> Result<RpcServer, Error> {
        if self.cfg.max_in_flight == 0 || self.cfg.udp_max_in_flight == 0 {
            return Err(Error::Config("in-flight limits must be at least 1".into()));
        }
        self.router.check()?;
        let mut session_cfg = self.cfg.session.clone();
        session_cfg.max_frame_len = session_cfg.max_frame_len.max(self.cfg.limits.max_frame());
        session_cfg.session_budget = session_cfg.session_budget.max(session_cfg.min_budget());
        let shared = Arc::new(Shared {
            router: self.router,
            cfg: self.cfg,
            layer: self.layer,
        });
        let codec = FrameCodec::new(shared.cfg.limits);
        let factory = move || RpcServerListener::new(shared.clone());
        let mut b: ServerBuilder<_, _, _> = Server::builder(codec, factory).config(session_cfg);
        for bind in self.binds {
            b = match bind {
                Bind::Url(url) => b.bind(&url),
                Bind::Listener(Transport::Tcp, l, _) => b.tcp_listener(l),
                #[cfg(feature = "ws")]
                Bind::Listener(Transport::Ws, l, path) => b.ws_listener(l, &path),
                #[cfg(feature = "tls")]
                Bind::Listener(Transport::Tls, l, _) => b.tls_listener(l),
                #[cfg(all(feature = "ws", feature = "tls"))]
                Bind::Listener(Transport::Wss, l, path) => b.wss_listener(l, &path),
                Bind::Listener(t, _, _) => {
                    return Err(Error::Config(format!(
                        "a listener cannot be given for {t:?} in this build"
                    )))
                }
            };
        }
        if let Some(n) = self.max_sessions {
            b = b.max_sessions(n);
        }
        if let Some(n) = self.udp_max_sessions {
            b = b.udp_max_sessions(n);
        }
        if let Some(n) = self.shared_budget {
            b = b.shared_budget(n);
        }
        if let Some(n) = self.backlog {
            b = b.backlog(n);
        }
        #[cfg(feature = "tls")]
        if let Some(t) = self.tls {
            b = b.tls(t);
        }
        #[cfg(feature = "metrics")]
        let metrics = match self.metrics {
            Some((addr, stats)) => Some(crate::rpc::MetricsServer::bind(&addr, stats).await?),
            None => None,
        };
        Ok(RpcServer {
            inner: b.start().await?,
            #[cfg(feature = "metrics")]
            metrics,
        })
    }
}
