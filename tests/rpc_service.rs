//! `#[qsocket::service]` end to end, real sockets on 127.0.0.1 over TCP, UDP and WebSocket:
//! every kind of method in each codec its types allow, user errors, policies (failover,
//! timeout, oneway), the call's context without an argument, a generic service, a protobuf
//! service against a hand-written server, and a mock client.

mod common;
mod rpc_common;

use common::{eventually, within};
use qsocket::rpc::{CallConfig, CallContext, Code, Codec, NamedService, Router, RpcClient, Status};
use rpc_common::{connected, req, serve, EchoReply, EchoRequest, TRANSPORTS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why an addition failed: a user error type, which reaches the client as it was.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AddError {
    /// The sum does not fit in an i64.
    Overflow { a: i64, b: i64 },
}

/// Greets, adds and logs.
#[qsocket::service(name = "demo.Greeter", version = "1.0")]
pub trait Greeter {
    /// Says hello to `name`.
    #[qsocket(strategy = "failover", retries = 2, timeout_ms = 2000, idempotent)]
    async fn hello(&self, name: String) -> Result<String, qsocket::Status>;
    /// Adds two numbers.
    #[qsocket(strategy = "failfast")]
    async fn add(&self, a: i64, b: i64) -> Result<i64, AddError>;
    /// Logs a line (no answer).
    #[qsocket(oneway)]
    async fn log(&self, line: String);
    /// Lines logged so far.
    async fn logged(&self) -> u64;
    /// Who called, as the method sees its call's context.
    #[qsocket(rename = "WhoAmI")]
    async fn whoami(&self) -> Result<Caller, Status>;
    /// Takes `ms` milliseconds.
    #[qsocket(timeout_ms = 200)]
    async fn slow(&self, ms: u64) -> Result<(), Status>;
    /// Resets the counters.
    async fn reset(&self);
}

/// What `whoami` saw.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    pub method: String,
    pub trace: Option<String>,
    pub deadline_ms: Option<u64>,
}

#[derive(Default)]
struct Hello {
    logged: AtomicUsize,
    calls: AtomicUsize,
    /// `log("wait")` waits to be notified here before counting.
    gate: tokio::sync::Notify,
}

impl Greeter for Hello {
    async fn hello(&self, name: String) -> Result<String, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(format!("hello, {name}"))
    }

    async fn add(&self, a: i64, b: i64) -> Result<i64, AddError> {
        a.checked_add(b).ok_or(AddError::Overflow { a, b })
    }

    async fn log(&self, line: String) {
        if line == "wait" {
            self.gate.notified().await;
        }
        self.logged.fetch_add(1, Ordering::SeqCst);
    }

    async fn logged(&self) -> u64 {
        self.logged.load(Ordering::SeqCst) as u64
    }

    async fn whoami(&self) -> Result<Caller, Status> {
        let ctx = CallContext::current().ok_or_else(|| Status::internal("no context"))?;
        Ok(Caller {
            method: ctx.method().to_string(),
            trace: ctx
                .metadata()
                .get("trace-id")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            deadline_ms: ctx
                .deadline()
                .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
        })
    }

    async fn slow(&self, ms: u64) -> Result<(), Status> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }

    async fn reset(&self) {
        self.logged.store(0, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn every_kind_of_method_over_each_transport_and_codec() {
    for scheme in TRANSPORTS {
        let hello = Arc::new(Hello::default());
        let router = Router::new().add_service(GreeterServer::from_arc(hello.clone()));
        let (_server, url) = serve(router, scheme).await;
        let client = GreeterClient::connect(&url).await.expect("connects");
        for codec in [Codec::MsgPack, Codec::Json] {
            let c = client.with(CallConfig::new().codec(codec));
            let what = format!("{scheme} {codec:?}");
            assert_eq!(c.hello("ana".into()).await.expect(&what), "hello, ana");
            assert_eq!(c.add(2, 3).await.expect(&what), Ok(5));
            assert_eq!(
                c.add(i64::MAX, 1).await.expect(&what),
                Err(AddError::Overflow { a: i64::MAX, b: 1 }),
                "{what}: the user error arrives as it was"
            );
            c.reset().await.expect(&what);
            c.log("one".into()).await.expect(&what);
            c.log("two".into()).await.expect(&what);
            eventually(&what, || hello.logged.load(Ordering::SeqCst) == 2).await;
            assert_eq!(c.logged().await.expect(&what), 2);
        }
    }
}

/// A service without a `name`: its wire name is its module path, then its trait name.
#[qsocket::service]
pub trait Pinger {
    /// Answers nothing.
    async fn ping(&self);
}

#[tokio::test]
async fn the_method_reads_its_context_and_names_are_constants() {
    assert_eq!(pinger::SERVICE, "rpc_service.Pinger");
    assert_eq!(greeter::SERVICE, "demo.Greeter");
    assert_eq!(greeter::VERSION, "1.0");
    assert_eq!(greeter::methods::WHOAMI, "WhoAmI");
    assert_eq!(<GreeterServer<Hello> as NamedService>::NAME, "demo.Greeter");
    let (_server, url) = serve(
        Router::new().add_service(GreeterServer::new(Hello::default())),
        "tcp",
    )
    .await;
    let client = GreeterClient::connect(&url).await.expect("connects");
    let who = client
        .with(
            CallConfig::new()
                .metadata("trace-id", "t-1")
                .timeout(Duration::from_secs(5)),
        )
        .whoami()
        .await
        .expect("whoami");
    assert_eq!(who.method, "WhoAmI");
    assert_eq!(who.trace.as_deref(), Some("t-1"));
    let left = who.deadline_ms.expect("a deadline");
    assert!(left > 1000 && left <= 5000, "deadline left {left} ms");
}

#[tokio::test]
async fn policies_are_honoured_over_each_transport() {
    /// An instance that is up but cannot serve.
    struct Down(AtomicUsize);
    impl Greeter for Down {
        async fn hello(&self, _name: String) -> Result<String, Status> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(Status::unavailable("down for maintenance"))
        }
        async fn add(&self, _a: i64, _b: i64) -> Result<i64, AddError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(0)
        }
        async fn log(&self, _line: String) {}
        async fn logged(&self) -> u64 {
            0
        }
        async fn whoami(&self) -> Result<Caller, Status> {
            Err(Status::unavailable("down"))
        }
        async fn slow(&self, _ms: u64) -> Result<(), Status> {
            Ok(())
        }
        async fn reset(&self) {}
    }
    for scheme in TRANSPORTS {
        let up = Arc::new(Hello::default());
        let down = Arc::new(Down(AtomicUsize::new(0)));
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
        // failover (retries = 2): every call succeeds, the ones that met the down instance
        // were retried on the other.
        for i in 0..10 {
            let r = client.hello(format!("n{i}")).await;
            assert_eq!(r.expect(scheme), format!("hello, n{i}"));
        }
        let retries = client.cluster().counters().retries;
        assert!(
            down.0.load(Ordering::SeqCst) > 0,
            "{scheme}: the down instance was tried"
        );
        assert_eq!(
            retries,
            down.0.load(Ordering::SeqCst) as u64,
            "{scheme}: one retry per call that met the down instance"
        );
        // A per-call policy overrides the method's: failfast meets the down instance.
        let ff = client.with(CallConfig::new().policy(qsocket::rpc::Policy::failfast()));
        let mut refused = 0;
        for i in 0..10 {
            if let Err(st) = ff.hello(format!("f{i}")).await {
                assert_eq!(st.code(), Code::Unavailable, "{scheme}");
                refused += 1;
            }
        }
        assert!(refused > 0, "{scheme}: failfast does not retry");
        assert_eq!(client.cluster().counters().retries, retries, "{scheme}");

        // timeout_ms = 200 bounds `slow`.
        let started = Instant::now();
        let st = within("slow", async {
            loop {
                // The down instance answers at once; wait for a call that met the slow one.
                match client.slow(5_000).await {
                    Ok(()) => continue,
                    Err(st) => break st,
                }
            }
        })
        .await;
        assert_eq!(st.code(), Code::DeadlineExceeded, "{scheme}: {st}");
        assert!(started.elapsed() < Duration::from_secs(4), "{scheme}");
    }
}

#[tokio::test]
async fn a_oneway_call_returns_without_waiting_for_the_method() {
    for scheme in TRANSPORTS {
        let hello = Arc::new(Hello::default());
        let (_server, url) = serve(
            Router::new().add_service(GreeterServer::from_arc(hello.clone())),
            scheme,
        )
        .await;
        let client = GreeterClient::connect(&url).await.expect("connects");
        // The method waits for a notification that only comes after the call returned.
        within(scheme, client.log("wait".into()))
            .await
            .expect(scheme);
        assert_eq!(hello.logged.load(Ordering::SeqCst), 0, "{scheme}");
        hello.gate.notify_one();
        eventually(scheme, || hello.logged.load(Ordering::SeqCst) == 1).await;
    }
}

/// A key-value store generic in what it stores.
#[qsocket::service(name = "demo.Store")]
pub trait Store<V>
where
    V: Clone,
{
    /// Stores `value` under `key`, returning the previous value.
    async fn put(&self, key: String, value: V) -> Option<V>;
    /// The value under `key`.
    async fn get(&self, key: String) -> Result<V, Status>;
}

struct MemStore<V>(std::sync::Mutex<std::collections::HashMap<String, V>>);

impl<V: Clone + Send + Sync + 'static> Store<V> for MemStore<V> {
    async fn put(&self, key: String, value: V) -> Option<V> {
        self.0.lock().expect("lock").insert(key, value)
    }
    async fn get(&self, key: String) -> Result<V, Status> {
        self.0
            .lock()
            .expect("lock")
            .get(&key)
            .cloned()
            .ok_or_else(|| Status::not_found(key))
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

#[tokio::test]
async fn a_generic_service_over_each_transport() {
    for scheme in TRANSPORTS {
        let store = MemStore::<Point>(Default::default());
        let (_server, url) =
            serve(Router::new().add_service(StoreServer::new(store)), scheme).await;
        let rpc = RpcClient::connect(&url).await.expect("client");
        let client: StoreClient<Point> = StoreClient::new(rpc);
        let p = Point { x: 1, y: 2 };
        assert_eq!(client.put("a".into(), p.clone()).await.expect(scheme), None);
        assert_eq!(
            client.put("a".into(), p.clone()).await.expect(scheme),
            Some(p.clone())
        );
        assert_eq!(client.get("a".into()).await.expect(scheme), p);
        let st = client.get("b".into()).await.expect_err(scheme);
        assert_eq!(st.code(), Code::NotFound, "{scheme}");
    }
}

/// The hand-written `test.Echo` service of the other rpc tests, declared as a trait of
/// protobuf messages.
#[qsocket::service(name = "test.Echo", codec = "protobuf")]
pub trait Echo {
    /// Answers the text.
    #[qsocket(rename = "Echo")]
    async fn echo(&self, req: EchoRequest) -> Result<EchoReply, Status>;
    /// Counts a fire-and-forget message.
    #[qsocket(oneway, rename = "Fire")]
    async fn fire(&self, req: EchoRequest);
}

#[tokio::test]
async fn a_protobuf_client_calls_a_hand_written_server() {
    for scheme in TRANSPORTS {
        let counters = Arc::new(rpc_common::Counters::default());
        let (_server, url) = serve(rpc_common::router(counters.clone()), scheme).await;
        let client = EchoClient::connect(&url).await.expect("client");
        for codec in [Codec::Protobuf, Codec::Json, Codec::MsgPack] {
            let r = client
                .with(CallConfig::new().codec(codec))
                .echo(req("hi"))
                .await
                .expect(scheme);
            assert_eq!(r.text, "hi", "{scheme} {codec:?}");
        }
        client.fire(req("x")).await.expect(scheme);
        eventually(scheme, || counters.oneway.load(Ordering::SeqCst) == 1).await;
    }
}

/// What code under test might do with any `GreeterApi`.
async fn greet_all(api: &impl GreeterApi, names: &[&str]) -> Result<Vec<String>, Status> {
    let mut out = Vec::new();
    for n in names {
        out.push(api.hello(n.to_string()).await?);
    }
    Ok(out)
}

#[tokio::test]
async fn a_mock_client_stands_in_without_a_network() {
    struct Mock;
    impl GreeterApi for Mock {
        async fn hello(&self, name: String) -> Result<String, Status> {
            Ok(format!("mock {name}"))
        }
        async fn add(&self, a: i64, b: i64) -> Result<Result<i64, AddError>, Status> {
            Ok(Ok(a + b))
        }
        async fn log(&self, _line: String) -> Result<(), Status> {
            Ok(())
        }
        async fn logged(&self) -> Result<u64, Status> {
            Ok(0)
        }
        async fn whoami(&self) -> Result<Caller, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn slow(&self, _ms: u64) -> Result<(), Status> {
            Ok(())
        }
        async fn reset(&self) -> Result<(), Status> {
            Ok(())
        }
    }
    assert_eq!(
        greet_all(&Mock, &["a", "b"]).await.expect("mock"),
        ["mock a", "mock b"]
    );
    // The same code over the network.
    let (_server, url) = serve(
        Router::new().add_service(GreeterServer::new(Hello::default())),
        "tcp",
    )
    .await;
    let client = GreeterClient::connect(&url).await.expect("connects");
    assert_eq!(
        greet_all(&client, &["a"]).await.expect("real"),
        ["hello, a"]
    );
}

/// Generated futures are `Send`: they can be spawned.
#[tokio::test]
async fn generated_futures_are_send() {
    let (_server, url) = serve(
        Router::new().add_service(GreeterServer::new(Hello::default())),
        "tcp",
    )
    .await;
    let client = GreeterClient::connect(&url).await.expect("connects");
    let task = tokio::spawn(async move { client.add(40, 2).await });
    assert_eq!(task.await.expect("joined").expect("call"), Ok(42));
}

/// Traits named like the generated code's own type parameters still compile.
#[qsocket::service]
pub trait S {
    /// A number.
    async fn f(&self) -> u32;
}

/// (The client's parameter.)
#[qsocket::service]
pub trait I {
    /// A number.
    async fn g(&self) -> u32;
}

#[test]
fn traits_named_s_and_i_get_other_parameter_names() {
    struct Imp;
    impl S for Imp {
        async fn f(&self) -> u32 {
            1
        }
    }
    let _service: qsocket::rpc::Service = SServer::new(Imp).into();
    assert_eq!(i::methods::G, "g");
}

/// A user type named like the server's type parameter.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Svc(u32);

/// Names that collide with what the macro generates, and the failsafe strategy.
#[qsocket::service(name = "test.Awkward")]
pub trait Match<V = String>
where
    Self: Sized,
    V: Clone,
{
    /// Named like the names module's constants.
    async fn version(&self) -> String;
    /// Also.
    async fn service(&self, call: u32, s: u32, ctx: u32, req: u32) -> u32;
    /// Named like `Arc`'s and `Clone`'s method.
    async fn clone(&self) -> u32;
    /// A raw identifier: `type` on the wire.
    async fn r#type(&self, v: V) -> V;
    /// A user type named like a generated type parameter.
    async fn wrap(&self, x: Svc) -> Svc;
    /// Answers `unavailable`; failsafe turns that into `None`.
    #[qsocket(strategy = "failsafe")]
    async fn maybe(&self) -> Option<u32>;
}

struct Awkward;

impl Match for Awkward {
    async fn version(&self) -> String {
        "v9".into()
    }
    async fn service(&self, call: u32, s: u32, ctx: u32, req: u32) -> u32 {
        call + s + ctx + req
    }
    async fn clone(&self) -> u32 {
        7
    }
    async fn r#type(&self, v: String) -> String {
        v
    }
    async fn wrap(&self, x: Svc) -> Svc {
        Svc(x.0 + 1)
    }
    async fn maybe(&self) -> Option<u32> {
        Some(1)
    }
}

/// The same service, down: every call fails.
struct AwkwardDown;

impl Match for AwkwardDown {
    async fn version(&self) -> String {
        String::new()
    }
    async fn service(&self, _: u32, _: u32, _: u32, _: u32) -> u32 {
        0
    }
    async fn clone(&self) -> u32 {
        0
    }
    async fn r#type(&self, v: String) -> String {
        v
    }
    async fn wrap(&self, x: Svc) -> Svc {
        x
    }
    async fn maybe(&self) -> Option<u32> {
        // A panicking method is answered `internal`: the call fails.
        panic!("down")
    }
}

#[tokio::test]
async fn names_that_collide_with_generated_ones_work() {
    assert_eq!(r#match::methods::TYPE, "type");
    assert_eq!(r#match::methods::VERSION, "version");
    let (_server, url) = serve(Router::new().add_service(MatchServer::new(Awkward)), "tcp").await;
    let rpc = RpcClient::connect(&url).await.expect("client");
    let client: MatchClient<String> = MatchClient::new(rpc);
    assert_eq!(client.version().await.expect("version"), "v9");
    assert_eq!(client.service(1, 2, 3, 4).await.expect("service"), 10);
    assert_eq!(MatchApi::clone(&client).await.expect("clone"), 7);
    assert_eq!(client.r#type("t".into()).await.expect("type"), "t");
    assert_eq!(client.wrap(Svc(1)).await.expect("wrap"), Svc(2));
    assert_eq!(client.maybe().await.expect("maybe"), Some(1));

    let (_down, url) = serve(
        Router::new().add_service(MatchServer::new(AwkwardDown)),
        "tcp",
    )
    .await;
    let rpc = RpcClient::connect(&url).await.expect("client");
    let client: MatchClient<String> = MatchClient::new(rpc);
    assert_eq!(
        client.maybe().await.expect("failsafe"),
        None,
        "a failed failsafe call is the empty result"
    );
    assert_eq!(client.cluster().counters().failsafe, 1);
}

/// Attributes on a method pass through: a `cfg` to everything generated for it. The names
/// module is named by `module`.
#[qsocket::service(name = "test.Attrs", module = "attrs_names")]
pub trait Attrs {
    /// Always there.
    async fn kept(&self) -> u32;
    /// Compiled out: no trait method, client method, name or handler.
    #[cfg(any())]
    async fn gone(&self) -> u32;
    /// Deprecated, and still served.
    #[deprecated(note = "use kept")]
    async fn old(&self) -> u32;
}

#[tokio::test]
#[allow(deprecated)]
async fn method_attributes_pass_through() {
    struct Imp;
    impl Attrs for Imp {
        async fn kept(&self) -> u32 {
            1
        }
        async fn old(&self) -> u32 {
            2
        }
    }
    let service: qsocket::rpc::Service = AttrsServer::new(Imp).into();
    assert_eq!(service.methods().collect::<Vec<_>>(), ["kept", "old"]);
    assert_eq!(attrs_names::SERVICE, "test.Attrs");
    let (_server, url) = serve(Router::new().add_service(service), "tcp").await;
    let client = AttrsClient::connect(&url).await.expect("client");
    assert_eq!(client.kept().await.expect("kept"), 1);
    assert_eq!(client.old().await.expect("old"), 2);
}
