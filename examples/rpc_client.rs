//! Calls `demo.Greeter` (see `rpc_server`) over the endpoint given: `tcp://`, `udp://` or
//! `ws://…/rpc`.
//!
//! ```sh
//! cargo run -p qsocket-examples --bin rpc_client -- ws://127.0.0.1:9102/rpc
//! ```

use qsocket::rpc::{Code, Codec, RpcClient};
use std::time::Duration;

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct DivideRequest {
    #[prost(int64, tag = "1")]
    a: i64,
    #[prost(int64, tag = "2")]
    b: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:9100".into());
    let client = RpcClient::builder()
        .endpoint(&url)
        .timeout(Duration::from_secs(5))
        .start()
        .await?;

    // Protobuf (the default codec) and JSON, chosen per call.
    let req = HelloRequest {
        name: "qsocket".into(),
    };
    let reply: HelloReply = client.call("demo.Greeter", "Hello", &req).await?;
    println!("protobuf: {}", reply.message);
    let reply: HelloReply = client
        .request("demo.Greeter", "Hello")
        .codec(Codec::Json)
        .metadata("trace-id", "example-1")
        .call(&req)
        .await?;
    println!("json:     {}", reply.message);

    // Errors are typed statuses.
    let quotient: i64 = client
        .call("demo.Greeter", "Divide", &DivideRequest { a: 84, b: 2 })
        .await?;
    println!("84 / 2 = {quotient}");
    match client
        .call::<_, i64>("demo.Greeter", "Divide", &DivideRequest { a: 1, b: 0 })
        .await
    {
        Err(st) if st.code() == Code::InvalidArgument => println!("1 / 0 -> {st}"),
        other => println!("1 / 0 -> unexpected {other:?}"),
    }

    // A deadline travels to the server; the call ends when it passes.
    let slow = client
        .request("demo.Greeter", "Sleep")
        .timeout(Duration::from_millis(100))
        .call::<_, u64>(&1_000u64)
        .await;
    match slow {
        Err(st) => println!(
            "sleep 1 s with a 100 ms deadline -> {st} (request written: {})",
            st.request_written()
        ),
        Ok(v) => println!("sleep returned {v}?"),
    }
    client.close().await;
    Ok(())
}
