//! qsocket through its public typed RPC API: `bench.Echo/Echo` with a 64-byte `Bytes` payload,
//! a deadline on every call, service + method dispatch — the path a user's call takes.
//!
//! With [`Layers`], the same over TCP + protobuf with layers that do nothing, to measure what
//! the layer seams cost: three no-op client layers and three observing no-op server layers
//! ([`Layers::Noop3`]), or one tower layer on the client through [`TowerLayer`]
//! ([`Layers::Tower`]).

use bytes::Bytes;
use qsocket::rpc::auth::{WithAccessKey, WithBearer};
use qsocket::rpc::{
    AccessKey, AccessKeys, Admit, Auth, BearerToken, BearerTokens, CallContext, Channel,
    ClientLayer, Cluster, ClusterInvoke, Codec, FromTower, Invoke, Policy, Principal, Request,
    Response, Router, RpcClient, RpcServer, ServerLayer, Service, Side, Stats, StatsInvoke, Status,
    TowerInner, TowerLayer,
};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Errors of the benchmark implementations.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The echo message.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EchoMsg {
    /// The payload (a slice of the read buffer when decoded from protobuf).
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(with = "qsocket::rpc::json::base64")]
    pub payload: Bytes,
}

/// Layers that do nothing, put on a TCP + protobuf client and server to measure the seams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layers {
    /// Client: three [`NoopLayer`]s (`client.layer(..)` three times). Server: three
    /// [`NoopServerLayer`]s (`builder.layer(..)` three times), which observe outcomes, so the
    /// server reads the clock for each call as a statistics layer would make it.
    Noop3,
    /// Client: one tower layer ([`PassLayer`], forwarding `poll_ready` and `call`) through
    /// [`TowerLayer`]. Server: no layers.
    Tower,
    /// Client: statistics outermost over a failover cluster layer (`failover(2)`, no
    /// failures). Server: a statistics layer.
    Stats,
    /// [`Layers::Stats`] plus bearer-token auth: the client sends a token under the cluster
    /// layer; the server checks it (after statistics) against one token.
    Token,
    /// [`Layers::Stats`] plus access-key auth: the client signs every call (HMAC-SHA256 over
    /// names, timestamp, nonce and the body's SHA-256); the server verifies it and keeps its
    /// nonce.
    AccessKey,
    /// The echo declared as a trait with `#[qsocket::service]` ([`MacroEcho`]): the generated
    /// client (with its cluster layer, failfast) and server, the payload as a plain `Bytes`
    /// argument carried as MessagePack. No other layers.
    Macro,
}

/// The echo as a service trait: what `#[qsocket::service]` generates is measured against
/// the hand-written baseline (`qsocket-macro`).
#[qsocket::service(name = "bench.MacroEcho")]
pub trait MacroEcho {
    /// Answers the payload.
    async fn echo(&self, payload: Bytes) -> Bytes;
}

struct MacroEchoImpl;

impl MacroEcho for MacroEchoImpl {
    async fn echo(&self, payload: Bytes) -> Bytes {
        payload
    }
}

/// A [`MacroEchoClient`] connected to `url` (waits until the connection is up).
pub async fn connect_macro(url: &str) -> Result<MacroEchoClient, Error> {
    let rpc = RpcClient::builder()
        .endpoint(url)
        .timeout(Duration::from_secs(10))
        .start()
        .await?;
    let c = MacroEchoClient::new(rpc);
    c.echo(Bytes::from_static(b"warm")).await?;
    Ok(c)
}

/// The server's service.
fn router() -> Router {
    let svc = Service::new("bench.Echo")
        .unary("Echo", |m: EchoMsg, _ctx: CallContext| async move {
            Ok::<_, Status>(m)
        });
    Router::new().add_service(svc)
}

/// Starts the server on `url` (port 0 allowed); returns it (for its bound endpoints).
pub async fn serve(url: &str) -> Result<RpcServer, Error> {
    Ok(RpcServer::builder(router()).bind(url).start().await?)
}

/// [`serve`] with the server side of `layers`.
pub async fn serve_layered(url: &str, layers: Layers) -> Result<RpcServer, Error> {
    if layers == Layers::Macro {
        let router = Router::new().add_service(MacroEchoServer::new(MacroEchoImpl));
        return Ok(RpcServer::builder(router).bind(url).start().await?);
    }
    let builder = RpcServer::builder(router()).bind(url);
    Ok(match layers {
        Layers::Noop3 => {
            builder
                .layer(NoopServerLayer)
                .layer(NoopServerLayer)
                .layer(NoopServerLayer)
                .start()
                .await?
        }
        Layers::Tower | Layers::Macro => builder.start().await?,
        Layers::Stats => builder.layer(server_stats().layer()).start().await?,
        Layers::Token => {
            let tokens = BearerTokens::new().token(TOKEN, Principal::new("bench"));
            builder
                .layer(server_stats().layer())
                .layer(Auth::new(tokens))
                .start()
                .await?
        }
        Layers::AccessKey => {
            let keys = AccessKeys::new().key(KEY_ID, SECRET, Principal::new("bench"));
            builder
                .layer(server_stats().layer())
                .layer(Auth::new(keys))
                .start()
                .await?
        }
    })
}

/// The server's statistics (kept for the process's life, as a server would keep them).
fn server_stats() -> Stats {
    Stats::new(Side::Server)
}

const TOKEN: &str = "bench-token-0123456789";
const KEY_ID: &str = "bench-key";
const SECRET: &[u8] = b"bench-secret-0123456789";

/// The client layers of [`Layers::Stats`] over `rpc` (already carrying any auth layer).
fn stats_failover<I: Invoke>(
    rpc: RpcClient<I>,
) -> RpcClient<StatsInvoke<Arc<ClusterInvoke<Arc<I>>>>> {
    rpc.layer(Cluster::new(Policy::failover(2)))
        .layer(Stats::new(Side::Client).layer())
}

/// The invoker of a client with statistics and failover.
pub type StatsInvokeChain = StatsInvoke<Arc<ClusterInvoke<Arc<Channel>>>>;
/// … and a bearer token.
pub type TokenInvoke = StatsInvoke<Arc<ClusterInvoke<Arc<WithBearer<Arc<Channel>>>>>>;
/// … and an access key.
pub type AccessKeyInvoke = StatsInvoke<Arc<ClusterInvoke<Arc<WithAccessKey<Arc<Channel>>>>>>;

/// A TCP + protobuf client with statistics and failover.
pub async fn connect_stats(url: &str) -> Result<Client<StatsInvokeChain>, Error> {
    Client::connect_with(url, Codec::Protobuf, stats_failover).await
}

/// A TCP + protobuf client with statistics, failover and a bearer token.
pub async fn connect_token(url: &str) -> Result<Client<TokenInvoke>, Error> {
    Client::connect_with(url, Codec::Protobuf, |rpc| {
        stats_failover(rpc.layer(BearerToken::new(TOKEN)))
    })
    .await
}

/// A TCP + protobuf client with statistics, failover and an access key.
pub async fn connect_access_key(url: &str) -> Result<Client<AccessKeyInvoke>, Error> {
    Client::connect_with(url, Codec::Protobuf, |rpc| {
        stats_failover(rpc.layer(AccessKey::new(KEY_ID, SECRET)))
    })
    .await
}

/// A server layer that admits every call and ignores its outcome, but asks for outcomes
/// (`OBSERVES = true`), so the server times every call for it.
pub struct NoopServerLayer;

impl ServerLayer for NoopServerLayer {
    const OBSERVES: bool = true;

    fn on_request(&self, _call: &mut CallContext) -> Admit {
        Admit::Pass
    }

    fn on_response(&self, _call: &CallContext, _status: Result<(), &Status>, _latency: Duration) {}
}

/// A client layer that adds a level to the chain and does nothing in it.
#[derive(Debug, Clone, Copy)]
pub struct NoopLayer;

/// The invoker [`NoopLayer`] makes: holds the inner invoker and awaits it. A real type and a
/// real future in the chain (the compiler may inline it, as it would a user's thin layer).
pub struct Noop<I> {
    inner: I,
}

impl<I: Invoke> Invoke for Noop<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        self.inner.invoke(req).await
    }
}

impl<I: Invoke> ClientLayer<I> for NoopLayer {
    type Invoke = Noop<I>;

    fn layer(self, inner: I) -> Noop<I> {
        Noop { inner }
    }
}

/// A tower layer whose service forwards everything to the inner one.
#[derive(Debug, Clone, Copy)]
pub struct PassLayer;

/// The tower service [`PassLayer`] makes.
#[derive(Clone)]
pub struct Pass<S> {
    inner: S,
}

impl<S> tower_layer::Layer<S> for PassLayer {
    type Service = Pass<S>;

    fn layer(&self, inner: S) -> Pass<S> {
        Pass { inner }
    }
}

impl<S: tower_service::Service<R>, R> tower_service::Service<R> for Pass<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

/// The invoker of a client with three [`NoopLayer`]s.
pub type Noop3Invoke = Noop<Arc<Noop<Arc<Noop<Arc<Channel>>>>>>;
/// The invoker of a client with one [`PassLayer`] through [`TowerLayer`].
pub type TowerInvoke = FromTower<Pass<TowerInner<Arc<Channel>>>>;

/// One client (one connection), shared by every caller; `I` is its chain of layers.
pub struct Client<I = Channel> {
    rpc: RpcClient<I>,
}

impl<I> Clone for Client<I> {
    fn clone(&self) -> Self {
        Client {
            rpc: self.rpc.clone(),
        }
    }
}

impl Client {
    /// Connects to `url` with `codec`; waits until the connection is up.
    pub async fn connect(url: &str, codec: Codec) -> Result<Client, Error> {
        Client::connect_with(url, codec, |rpc| rpc).await
    }
}

impl<I: Invoke> Client<I> {
    /// [`Client::connect`], then `layered` puts layers on the client.
    pub async fn connect_with(
        url: &str,
        codec: Codec,
        layered: impl FnOnce(RpcClient) -> RpcClient<I>,
    ) -> Result<Client<I>, Error> {
        let rpc = RpcClient::builder()
            .endpoint(url)
            .codec(codec)
            .timeout(Duration::from_secs(10))
            .start()
            .await?;
        let c = Client { rpc: layered(rpc) };
        c.call(Bytes::from_static(b"warm")).await?;
        Ok(c)
    }

    /// One call.
    pub async fn call(&self, payload: Bytes) -> Result<Bytes, Error> {
        let r: EchoMsg = self
            .rpc
            .call("bench.Echo", "Echo", &EchoMsg { payload })
            .await?;
        Ok(r.payload)
    }
}

/// A TCP + protobuf client with three [`NoopLayer`]s.
pub async fn connect_noop3(url: &str) -> Result<Client<Noop3Invoke>, Error> {
    Client::connect_with(url, Codec::Protobuf, |rpc| {
        rpc.layer(NoopLayer).layer(NoopLayer).layer(NoopLayer)
    })
    .await
}

/// A TCP + protobuf client with one [`PassLayer`] through [`TowerLayer`].
pub async fn connect_tower(url: &str) -> Result<Client<TowerInvoke>, Error> {
    Client::connect_with(url, Codec::Protobuf, |rpc| rpc.layer(TowerLayer(PassLayer))).await
}
