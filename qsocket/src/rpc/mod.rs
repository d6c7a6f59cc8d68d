//! RPC over the session runtime: one frame format for TCP, UDP and WebSocket (see
//! `PROTOCOL.md`), protobuf and JSON bodies, a multiplexed client with deadlines and
//! cancellation, and a server that runs every request concurrently on its session's task.
//!
//! ```no_run
//! use qsocket::rpc::{CallContext, RpcClient, RpcServer, Router, Service, Status};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let router = Router::new().add_service(
//!     Service::new("greeter.Greeter").unary("Hello", |name: String, _ctx: CallContext| async move {
//!         Ok::<_, Status>(format!("hello, {name}"))
//!     }),
//! );
//! let server = RpcServer::builder(router).bind("tcp://127.0.0.1:0").start().await?;
//! let url = server.local_endpoints()[0].to_string();
//!
//! let client = RpcClient::connect(&url).await?;
//! let reply: String = client.call("greeter.Greeter", "Hello", &"qsocket".to_string()).await?;
//! assert_eq!(reply, "hello, qsocket");
//! # Ok(()) }
//! ```

pub mod auth;
pub mod balance;
mod client;
mod cluster;
mod codec;
mod context;
#[doc(hidden)]
pub mod frame;
mod instance;
pub mod json;
mod metadata;
mod policy;
mod server;
mod stats;
mod status;

pub use auth::{AccessKey, AccessKeys, Auth, Authenticator, BearerToken, BearerTokens, Principal};
pub use balance::{Breaker, Circuit};
pub use client::{
    layer_fn, BoxCallFuture, BoxInvoke, BoxLayer, Call, CallConfig, CallOptions, Channel,
    ClientLayer, DynInvoke, Identity, Invoke, LayerFn, Request, Response, RpcClient,
    RpcClientBuilder, RpcClientConfig, Stack,
};
#[cfg(feature = "tower")]
pub use client::{FromTower, TowerInner, TowerLayer, TowerRequest, TowerResponse};
pub use cluster::{
    retryable, Cluster, ClusterCounters, ClusterInvoke, HedgeDelay, Policy, RetryBudget, Strategy,
    DEFAULT_FAILBACK_QUEUE,
};
pub use codec::{Codec, Json, Message, Proto, Serde};
pub use context::{current_deadline, CallContext, Extensions, Scoped};
pub use frame::{Limits, Metadata};
pub use instance::{
    Instance, InstanceList, InstanceSource, Snapshot, StaticInstances, DEFAULT_WEIGHT,
};
pub use metadata::{MetadataMap, Reply};
pub use server::{
    Admit, AdmitFuture, BoxServerLayer, DynServerLayer, IntoReply, NamedService, Router, RpcServer,
    RpcServerBuilder, RpcServerConfig, ServerLayer, ServerStack, Service,
};
#[cfg(feature = "metrics")]
pub use stats::MetricsServer;
pub use stats::{MethodStats, Side, Stats, StatsInvoke, StatsLayer, StatsSnapshot, Ticket};
pub use status::{Code, Sent, Status};
