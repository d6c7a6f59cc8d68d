//! An RPC server offering `demo.Greeter` over TCP, UDP and WebSocket at once.
//!
//! ```sh
//! cargo run -p qsocket-examples --bin rpc_server
//! cargo run -p qsocket-examples --bin rpc_client -- tcp://127.0.0.1:9100
//! ```

use qsocket::rpc::{CallContext, Router, RpcServer, Service, Status};
use std::time::Duration;

/// The request of `demo.Greeter/Hello`.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// The response of `demo.Greeter/Hello`.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The request of `demo.Greeter/Divide`.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DivideRequest {
    /// Dividend.
    #[prost(int64, tag = "1")]
    pub a: i64,
    /// Divisor.
    #[prost(int64, tag = "2")]
    pub b: i64,
}

fn greeter() -> Service {
    Service::new("demo.Greeter")
        .unary("Hello", |req: HelloRequest, ctx: CallContext| async move {
            if req.name.is_empty() {
                return Err(Status::invalid_argument("name must not be empty"));
            }
            Ok(HelloReply {
                message: format!("hello, {} (from {})", req.name, ctx.peer_addr()),
            })
        })
        .unary(
            "Divide",
            |req: DivideRequest, _ctx: CallContext| async move {
                req.a
                    .checked_div(req.b)
                    .ok_or_else(|| Status::invalid_argument("division by zero"))
            },
        )
        .unary("Sleep", |millis: u64, _ctx: CallContext| async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok::<_, Status>(millis)
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tcp = args.next().unwrap_or_else(|| "tcp://127.0.0.1:9100".into());
    let udp = args.next().unwrap_or_else(|| "udp://127.0.0.1:9101".into());
    let ws = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9102/rpc".into());
    let server = RpcServer::builder(Router::new().add_service(greeter()))
        .bind(&tcp)
        .bind(&udp)
        .bind(&ws)
        .start()
        .await?;
    for e in server.local_endpoints() {
        println!("rpc_server: serving demo.Greeter on {e}");
    }
    println!("rpc_server: Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("rpc_server: shutting down (calls in flight finish first)");
    server.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
