//! A service from a `.proto` file: `idl/demo/greeter.proto`, compiled by `qsocket-build` in
//! this crate's `build.rs` (no `protoc`), served and called over TCP, UDP and WebSocket.
//! The policies are the file's qsocket options (SayHello: failover; Sleep: a 200 ms limit;
//! Log: oneway). Self-contained; finishes by itself.
//!
//! ```text
//! cargo run -p qsocket-examples --bin proto_greeter
//! ```

use qsocket::rpc::{CallConfig, Codec, Router, RpcServer};
use qsocket::Status;
use qsocket_examples::demo::common::{Level, Line};
use qsocket_examples::demo::greeter::{
    AddReply, AddRequest, Greeter, GreeterApi, GreeterClient, GreeterServer, HelloReply,
    HelloRequest, SleepRequest,
};
use std::time::Duration;

type Error = Box<dyn std::error::Error>;

/// The implementation: one async method per rpc.
struct Greeting;

impl Greeter for Greeting {
    async fn say_hello(&self, request: HelloRequest) -> Result<HelloReply, Status> {
        Ok(HelloReply {
            message: format!("hello, {}", request.name),
        })
    }

    async fn add(&self, request: AddRequest) -> Result<AddReply, Status> {
        let (sum, overflowed) = request.a.overflowing_add(request.b);
        Ok(AddReply {
            sum,
            overflowed,
            digest: sum.to_be_bytes().to_vec(),
        })
    }

    async fn log(&self, request: Line) {
        println!("  server log [{:?}]: {}", request.level(), request.text);
    }

    async fn sleep(&self, request: SleepRequest) -> Result<pbjson_types::Empty, Status> {
        tokio::time::sleep(Duration::from_millis(request.ms)).await;
        Ok(pbjson_types::Empty {})
    }
}

async fn run() -> Result<(), Error> {
    let router = Router::new().add_service(GreeterServer::new(Greeting));
    let server = RpcServer::builder(router)
        .bind("tcp://127.0.0.1:0")
        .bind("udp://127.0.0.1:0")
        .bind("ws://127.0.0.1:0/rpc")
        .start()
        .await?;
    for ep in server.local_endpoints() {
        let client = GreeterClient::connect(&ep.to_string()).await?;
        let hello = client
            .say_hello(HelloRequest {
                name: "proto".into(),
                asked_at: None,
            })
            .await?;
        // JSON follows the proto3 mapping: the 64-bit sum travels as a string.
        let json = client.with(CallConfig::new().codec(Codec::Json));
        let sum = json
            .add(AddRequest {
                a: 9_007_199_254_740_992,
                b: 1,
            })
            .await?;
        println!(
            "{ep}: {:?}; add in json -> {} (as json: {})",
            hello.message,
            sum.sum,
            serde_json::to_string(&sum)?
        );
        client
            .log(Line {
                text: format!("logged over {ep}"),
                level: Level::Info as i32,
            })
            .await?;
        let late = client
            .sleep(SleepRequest { ms: 1_000 })
            .await
            .err()
            .ok_or("a 1 s sleep must miss the .proto's 200 ms limit")?;
        println!("{ep}: sleep 1 s under the .proto's timeout_ms 200 -> {late}");
        client.rpc().close().await;
    }
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match tokio::time::timeout(Duration::from_secs(30), run()).await {
        Ok(Ok(())) => {
            println!("proto_greeter: OK");
            std::process::ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("proto_greeter failed: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("proto_greeter failed: it did not finish within 30 s");
            std::process::ExitCode::FAILURE
        }
    }
}
