//! The test service of the rpc tests.
#![allow(dead_code)]

use qsocket::rpc::{CallContext, Router, RpcClient, RpcServer, Service, Status};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)] // proto3: a missing field has its default value
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint64, tag = "2")]
    pub delay_ms: u64,
    #[prost(bool, tag = "3")]
    pub panic: bool,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)] // proto3: a missing field has its default value
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    /// Milliseconds left until the request's deadline, as the handler saw it (0 = none).
    #[prost(uint64, tag = "2")]
    pub deadline_left_ms: u64,
}

pub fn req(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.to_string(),
        delay_ms: 0,
        panic: false,
    }
}

/// Counters the test service keeps.
#[derive(Default)]
pub struct Counters {
    /// Handlers that started.
    pub started: AtomicUsize,
    /// Handlers dropped before finishing (cancelled, deadline).
    pub dropped: AtomicUsize,
    /// Oneway messages received.
    pub oneway: AtomicUsize,
}

struct DropCount<'a>(&'a AtomicUsize, bool);

impl Drop for DropCount<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `test.Echo`: `Echo` (answers the text, after `delay_ms`, or panics), `Fire` (oneway).
pub fn router(counters: Arc<Counters>) -> Router {
    let c1 = counters.clone();
    let c2 = counters;
    Router::new().add_service(
        Service::new("test.Echo")
            .unary("Echo", move |r: EchoRequest, ctx: CallContext| {
                let c = c1.clone();
                async move {
                    c.started.fetch_add(1, Ordering::SeqCst);
                    let mut guard = DropCount(&c.dropped, true);
                    if r.panic {
                        panic!("asked to panic");
                    }
                    if r.delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(r.delay_ms)).await;
                    }
                    guard.1 = false;
                    let left = ctx
                        .deadline()
                        .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64)
                        .unwrap_or(0);
                    Ok::<_, Status>(EchoReply {
                        text: r.text,
                        deadline_left_ms: left,
                    })
                }
            })
            .unary("Fire", move |_r: EchoRequest, _ctx: CallContext| {
                let c = c2.clone();
                async move {
                    c.oneway.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Status>(())
                }
            }),
    )
}

/// A one-field message of the layer tests (`rpc_cluster`, `rpc_auth_stats`).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
}

pub fn msg(text: &str) -> Msg {
    Msg {
        text: text.to_string(),
    }
}

/// The transports the generated-service tests run over.
pub const TRANSPORTS: [&str; 3] = ["tcp", "udp", "ws"];

/// Starts a server of `router` on `scheme`, 127.0.0.1, port 0; returns it and its URL.
pub async fn serve(router: Router, scheme: &str) -> (RpcServer, String) {
    let path = if scheme == "ws" { "/rpc" } else { "" };
    let server = RpcServer::builder(router)
        .bind(&format!("{scheme}://127.0.0.1:0{path}"))
        .start()
        .await
        .expect("server starts");
    let url = server.local_endpoints()[0].to_string();
    (server, url)
}

/// A client of the instances at `urls`, once some instance is connected.
pub async fn connected(urls: &[&str]) -> RpcClient {
    let mut b = RpcClient::builder();
    for u in urls {
        b = b.endpoint(u);
    }
    let rpc = b.start().await.expect("client");
    rpc.ready().await.expect("ready");
    rpc
}
