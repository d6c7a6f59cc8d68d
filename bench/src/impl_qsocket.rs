//! qsocket through its public typed RPC API: `bench.Echo/Echo` with a 64-byte `Bytes` payload,
//! a deadline on every call, service + method dispatch — the path a user's call takes.

use bytes::Bytes;
use qsocket::rpc::{CallContext, Codec, Router, RpcClient, RpcServer, Service, Status};
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

/// Starts the server on `url` (port 0 allowed); returns it (for its bound endpoints).
pub async fn serve(url: &str) -> Result<RpcServer, Error> {
    let svc = Service::new("bench.Echo")
        .unary("Echo", |m: EchoMsg, _ctx: CallContext| async move {
            Ok::<_, Status>(m)
        });
    Ok(RpcServer::builder(Router::new().add_service(svc))
        .bind(url)
        .start()
        .await?)
}

/// One client (one connection), shared by every caller.
#[derive(Clone)]
pub struct Client {
    rpc: RpcClient,
}

impl Client {
    /// Connects to `url` with `codec`; waits until the connection is up.
    pub async fn connect(url: &str, codec: Codec) -> Result<Client, Error> {
        let rpc = RpcClient::builder()
            .endpoint(url)
            .codec(codec)
            .timeout(Duration::from_secs(10))
            .start()
            .await?;
        let c = Client { rpc };
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
