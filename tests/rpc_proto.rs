//! Services generated from `.proto` files by qsocket-build (`idl/`, compiled in this crate's
//! build script), called over TCP, UDP and WebSocket in protobuf, JSON and MessagePack, with
//! the IDL's policies; a generated client against a server written with the trait macro; the
//! proto3 JSON mapping (64-bit integers as strings, lowerCamelCase names, enums by name,
//! bytes as base64, well-known types).

mod common;
mod rpc_common;

pub mod demo {
    pub mod common {
        qsocket::include_proto!("demo.common");
    }
    pub mod greeter {
        qsocket::include_proto!("demo.greeter");
    }
}

use common::{eventually, python_client, within};
use demo::common::{Level, Line};
use demo::greeter::{
    greeter, AddReply, AddRequest, Greeter, GreeterApi, GreeterClient, GreeterServer, HelloReply,
    HelloRequest, SleepRequest,
};
use qsocket::rpc::{CallConfig, Code, Codec, NamedService, Router};
use qsocket::Status;
use rpc_common::{connected, serve, TRANSPORTS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Impl {
    logged: AtomicUsize,
    hellos: AtomicUsize,
    /// Answer `unavailable` to `SayHello`.
    down: bool,
}

impl Greeter for Impl {
    async fn say_hello(&self, request: HelloRequest) -> Result<HelloReply, Status> {
        self.hellos.fetch_add(1, Ordering::SeqCst);
        if self.down {
            return Err(Status::unavailable("down"));
        }
        let when = request.asked_at.map(|t| t.seconds).unwrap_or(0);
        Ok(HelloReply {
            message: format!("hello, {} at {when}", request.name),
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
        if request.level == Level::Warn as i32 {
            self.logged.fetch_add(1, Ordering::SeqCst);
        }
    }
    async fn sleep(&self, request: SleepRequest) -> Result<pbjson_types::Empty, Status> {
        tokio::time::sleep(Duration::from_millis(request.ms)).await;
        Ok(pbjson_types::Empty {})
    }
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        asked_at: Some(pbjson_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
    }
}

#[tokio::test]
async fn every_method_over_each_transport_and_codec() {
    assert_eq!(greeter::SERVICE, "demo.greeter.Greeter");
    assert_eq!(greeter::methods::SAY_HELLO, "SayHello");
    assert_eq!(<GreeterServer<Impl> as NamedService>::VERSION, "1.0");
    for scheme in TRANSPORTS {
        let imp = Arc::new(Impl::default());
        let (_server, url) = serve(
            Router::new().add_service(GreeterServer::from_arc(imp.clone())),
            scheme,
        )
        .await;
        let client = GreeterClient::connect(&url).await.expect("client");
        for codec in [Codec::Protobuf, Codec::Json, Codec::MsgPack] {
            let what = format!("{scheme} {codec:?}");
            let c = client.with(CallConfig::new().codec(codec));
            let r = c.say_hello(hello("ana")).await.expect(&what);
            assert_eq!(r.message, "hello, ana at 1700000000", "{what}");
            let big = AddRequest {
                a: i64::MAX - 1,
                b: 1,
            };
            let sum = c.add(big).await.expect(&what);
            assert_eq!(sum.sum, i64::MAX, "{what}: 64-bit integers survive");
            assert_eq!(&sum.digest[..], &i64::MAX.to_be_bytes(), "{what}");
            c.log(Line {
                text: "x".into(),
                level: Level::Warn as i32,
            })
            .await
            .expect(&what);
        }
        eventually(scheme, || imp.logged.load(Ordering::SeqCst) == 3).await;
    }
}

#[tokio::test]
async fn the_idl_policies_are_honoured() {
    for scheme in TRANSPORTS {
        let up = Arc::new(Impl::default());
        let down = Arc::new(Impl {
            down: true,
            ..Impl::default()
        });
        let (_s1, url_up) = serve(
            Router::new().add_service(GreeterServer::from_arc(up.clone())),
            scheme,
        )
        .await;
        let (_s2, url_down) = serve(
            Router::new().add_service(GreeterServer::from_arc(down.clone())),
            scheme,
        )
        .await;
        let client = GreeterClient::new(connected(&[&url_down, &url_up]).await);
        // SayHello: failover, 2 retries, from the .proto.
        for i in 0..10 {
            let r = client.say_hello(hello(&format!("n{i}"))).await;
            assert!(r.is_ok(), "{scheme}: {r:?}");
        }
        let tried_down = down.hellos.load(Ordering::SeqCst) as u64;
        assert!(tried_down > 0, "{scheme}");
        assert_eq!(client.cluster().counters().retries, tried_down, "{scheme}");
        // Sleep: timeout_ms 200 from the .proto.
        let st = within(scheme, client.sleep(SleepRequest { ms: 5_000 }))
            .await
            .expect_err(scheme);
        assert_eq!(st.code(), Code::DeadlineExceeded, "{scheme}: {st}");
    }
}

/// The same service written with the trait macro: names and types agree, so the generated
/// client calls it.
#[qsocket::service(name = "demo.greeter.Greeter", codec = "protobuf")]
pub trait MacroGreeter {
    /// Says hello.
    #[qsocket(rename = "SayHello")]
    async fn say_hello(&self, request: HelloRequest) -> Result<HelloReply, Status>;
}

struct MacroImpl;

impl MacroGreeter for MacroImpl {
    async fn say_hello(&self, request: HelloRequest) -> Result<HelloReply, Status> {
        Ok(HelloReply {
            message: format!("macro says hello, {}", request.name),
        })
    }
}

#[tokio::test]
async fn a_proto_client_calls_a_macro_server() {
    let (_server, url) = serve(
        Router::new().add_service(MacroGreeterServer::new(MacroImpl)),
        "tcp",
    )
    .await;
    let client = GreeterClient::connect(&url).await.expect("client");
    let r = client.say_hello(hello("bo")).await.expect("call");
    assert_eq!(r.message, "macro says hello, bo");
    // And the macro's client calls the proto server.
    let (_server2, url2) = serve(
        Router::new().add_service(GreeterServer::new(Impl::default())),
        "tcp",
    )
    .await;
    let c2 = MacroGreeterClient::connect(&url2).await.expect("client");
    let r = c2.say_hello(hello("cy")).await.expect("call");
    assert!(r.message.starts_with("hello, cy"), "{}", r.message);
}

#[test]
fn messages_follow_the_proto3_json_mapping() {
    let sum = AddReply {
        sum: 9_007_199_254_740_993, // 2^53 + 1: not exact as a JSON number
        overflowed: true,
        digest: vec![0xff, 0x00],
    };
    let json = serde_json::to_value(&sum).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"sum": "9007199254740993", "overflowed": true, "digest": "/wA="})
    );
    // What Python's json_format writes (int64 as a string), and numbers, both read.
    for text in [
        r#"{"a": "9007199254740993", "b": 1}"#,
        r#"{"a": 9007199254740993, "b": "1"}"#,
    ] {
        let r: AddRequest = serde_json::from_str(text).expect(text);
        assert_eq!(r.a, 9_007_199_254_740_993, "{text}");
        assert_eq!(r.b, 1, "{text}");
    }
    // lowerCamelCase names (both spellings read), well-known types, enums by name.
    let h: HelloRequest =
        serde_json::from_str(r#"{"name": "a", "askedAt": "2023-11-14T22:13:20Z"}"#).expect("camel");
    assert_eq!(h.asked_at.map(|t| t.seconds), Some(1_700_000_000));
    let h: HelloRequest =
        serde_json::from_str(r#"{"name": "a", "asked_at": "2023-11-14T22:13:20Z"}"#)
            .expect("snake");
    assert!(h.asked_at.is_some());
    assert_eq!(
        serde_json::to_value(hello("z")).expect("json")["askedAt"],
        "2023-11-14T22:13:20+00:00"
    );
    let line: Line = serde_json::from_str(r#"{"text": "t", "level": "LEVEL_WARN"}"#).expect("enum");
    assert_eq!(line.level, Level::Warn as i32);
}

/// Messages made by Python's `protobuf` package — protobuf, and proto3 JSON as its
/// `json_format` writes it — decode on the server, and the replies decode in Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_protobuf_and_json_format_talk_to_the_server() {
    let (_server, url) = serve(
        Router::new().add_service(GreeterServer::new(Impl::default())),
        "tcp",
    )
    .await;
    let addr = url.trim_start_matches("tcp://");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/proto_client.py");
    let fds = concat!(env!("OUT_DIR"), "/demo.fds");
    python_client(
        "python proto client (scripts/test installs the protobuf package)",
        script,
        &[host, port, fds],
        "python proto client: ok",
    )
    .await;
}
