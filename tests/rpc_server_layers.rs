//! Server layers, call contexts, response metadata and codec refusal, end to end over real
//! sockets on 127.0.0.1: layers that observe, refuse, attach an identity, check asynchronously,
//! and stack; handlers that answer with response metadata (read with a raw client); requests
//! in a codec the method does not speak.

mod common;
mod rpc_common;

use bytes::BytesMut;
use common::within;
use qsocket::rpc::frame::{control_frame, encode_frame, kind, Frame, FrameCodec, Header, Limits};
use qsocket::rpc::{
    Admit, BoxServerLayer, CallContext, Code, Json, Proto, Reply, Router, RpcClient, RpcServer,
    ServerLayer, ServerStack, Service, Status,
};
use qsocket::session::Transport;
use rpc_common::{req, EchoReply, EchoRequest};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::codec::Decoder;

/// A shared, awaitable log of what layers and handlers did.
#[derive(Default)]
struct Log {
    entries: Mutex<Vec<String>>,
    changed: Notify,
}

impl Log {
    fn push(&self, entry: impl Into<String>) {
        self.entries.lock().expect("log").push(entry.into());
        self.changed.notify_waiters();
    }

    fn snapshot(&self) -> Vec<String> {
        self.entries.lock().expect("log").clone()
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.entries.lock().expect("log"))
    }

    /// Waits (up to the tests' generous bound) until `entry` is in the log.
    async fn wait_for(&self, entry: &str) {
        within(&format!("log entry {entry:?}"), async {
            loop {
                let changed = self.changed.notified();
                if self.snapshot().iter().any(|e| e == entry) {
                    return;
                }
                changed.await;
            }
        })
        .await
    }
}

/// `Ok` or the code's name, for log entries.
fn outcome(status: Result<(), &Status>) -> String {
    match status {
        Ok(()) => "ok".into(),
        Err(st) => format!("{:?}", st.code()),
    }
}

/// A layer that logs `"<name>>method"` before and `"<name><method:outcome"` after.
struct Named {
    name: &'static str,
    log: Arc<Log>,
}

impl ServerLayer for Named {
    fn on_request(&self, call: &mut CallContext) -> Admit {
        self.log.push(format!("{}>{}", self.name, call.method()));
        Admit::Pass
    }

    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, _latency: Duration) {
        self.log.push(format!(
            "{}<{}:{}",
            self.name,
            call.method(),
            outcome(status)
        ));
    }
}

/// A handler's body that panics.
fn boom() -> Result<EchoReply, Status> {
    panic!("asked to panic")
}

/// `test.Echo`: `Echo` echoes (logging `"handler"`), `Fail` answers `not_found`, `Panic`
/// panics, `Forever` never answers, `Fire` is for oneway calls.
fn echo_service(log: &Arc<Log>, handled: &Arc<AtomicUsize>) -> Service {
    let (l1, l2) = (log.clone(), log.clone());
    let (h1, h2) = (handled.clone(), handled.clone());
    Service::new("test.Echo")
        .unary("Echo", move |r: EchoRequest, _ctx: CallContext| {
            l1.push("handler");
            h1.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, Status>(EchoReply {
                    text: r.text,
                    deadline_left_ms: 0,
                })
            }
        })
        .unary("Fail", |_r: EchoRequest, _ctx: CallContext| async move {
            Err::<EchoReply, _>(Status::not_found("no such thing"))
        })
        .unary("Panic", |_r: EchoRequest, _ctx: CallContext| async move {
            boom()
        })
        .unary("Forever", |_r: EchoRequest, _ctx: CallContext| {
            std::future::pending::<Result<EchoReply, Status>>()
        })
        .unary("Fire", move |_r: EchoRequest, _ctx: CallContext| {
            l2.push("fired");
            h2.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Status>(()) }
        })
}

async fn start<L: ServerLayer>(builder: qsocket::rpc::RpcServerBuilder<L>) -> (RpcServer, String) {
    let server = builder
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    (server, url)
}

/// What the observing layer saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    service: String,
    method: String,
    peer: SocketAddr,
    deadline: Option<Instant>,
    trace: Option<Vec<u8>>,
}

/// Records what it sees before, and the outcome and latency after.
struct Observer {
    seen: Arc<Mutex<Vec<Seen>>>,
    outcomes: Arc<Mutex<Vec<(String, String, Duration)>>>,
    log: Arc<Log>,
}

impl ServerLayer for Observer {
    fn on_request(&self, call: &mut CallContext) -> Admit {
        self.seen.lock().expect("seen").push(Seen {
            service: call.service().to_string(),
            method: call.method().to_string(),
            peer: call.peer_addr(),
            deadline: call.deadline(),
            trace: call.metadata().get("trace").map(<[u8]>::to_vec),
        });
        Admit::Pass
    }

    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
        self.outcomes.lock().expect("outcomes").push((
            call.method().to_string(),
            outcome(status),
            latency,
        ));
        self.log
            .push(format!("after {}:{}", call.method(), outcome(status)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observing_layer_sees_each_admitted_call_and_its_outcome() {
    let log = Arc::new(Log::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let layer = Observer {
        seen: seen.clone(),
        outcomes: outcomes.clone(),
        log: log.clone(),
    };
    let router = Router::new().add_service(echo_service(&log, &handled));
    let (server, url) = start(RpcServer::builder(router).layer(layer)).await;
    let client = RpcClient::connect(&url).await.expect("client");

    // A success, with metadata and a deadline.
    let before = Instant::now();
    let r: EchoReply = client
        .request("test.Echo", "Echo")
        .metadata("trace", "t-1")
        .timeout(Duration::from_secs(30))
        .call(&req("hi"))
        .await
        .expect("echo");
    assert_eq!(r.text, "hi");
    // A handler error, a panic.
    let e = client
        .call::<_, EchoReply>("test.Echo", "Fail", &req("x"))
        .await
        .expect_err("fail");
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .call::<_, EchoReply>("test.Echo", "Panic", &req("x"))
        .await
        .expect_err("panic");
    assert_eq!(e.code(), Code::Internal);
    // Unknown methods and services never reach a layer.
    let e = client
        .call::<_, EchoReply>("test.Echo", "Nope", &req("x"))
        .await
        .expect_err("unknown method");
    assert_eq!(e.code(), Code::Unimplemented);
    let e = client
        .call::<_, EchoReply>("test.Nope", "Echo", &req("x"))
        .await
        .expect_err("unknown service");
    assert_eq!(e.code(), Code::Unimplemented);
    // A oneway call is observed too (its outcome is never sent).
    client
        .request("test.Echo", "Fire")
        .oneway(&req("x"))
        .await
        .expect("oneway");
    log.wait_for("after Fire:ok").await;

    let seen = seen.lock().expect("seen").clone();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["Echo", "Fail", "Panic", "Fire"]);
    let first = &seen[0];
    assert_eq!(first.service, "test.Echo");
    assert!(first.peer.ip().is_loopback(), "{first:?}");
    assert_eq!(first.trace.as_deref(), Some(&b"t-1"[..]));
    let deadline = first.deadline.expect("the deadline travelled");
    assert!(
        deadline > before + Duration::from_secs(20)
            && deadline <= Instant::now() + Duration::from_secs(31),
        "deadline about 30 s after the call"
    );
    assert!(seen[1].trace.is_none(), "{:?}", seen[1]);

    // Each outcome was recorded before its response was written: no waiting needed.
    let outcomes = outcomes.lock().expect("outcomes").clone();
    let got: Vec<(&str, &str)> = outcomes
        .iter()
        .map(|(m, o, _)| (m.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("Echo", "ok"),
            ("Fail", "NotFound"),
            ("Panic", "Internal"),
            ("Fire", "ok")
        ]
    );
    for (m, _, latency) in &outcomes {
        assert!(*latency < common::WAIT, "{m}: {latency:?}");
    }
    assert_eq!(handled.load(Ordering::SeqCst), 2, "Echo and Fire ran");
    server.shutdown(Duration::from_secs(5)).await;
}

/// Writes a request frame on a raw connection.
fn request_frame(
    id: u64,
    codec: u8,
    service: &str,
    method: &str,
    metadata: &[u8],
    body: &[u8],
) -> BytesMut {
    let h = Header {
        kind: kind::REQUEST,
        codec,
        id,
        timeout_ms: 30_000,
        service,
        method,
        metadata,
        ..Header::default()
    };
    let mut buf = BytesMut::new();
    encode_frame(&mut buf, &h, &Limits::default(), |b| {
        b.extend_from_slice(body);
        Ok::<_, ()>(())
    })
    .expect("encode");
    buf
}

/// Reads one frame from a raw RPC connection.
async fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Frame {
    within("a response frame", async {
        loop {
            if let Some(f) = FrameCodec::default().decode(buf).expect("valid frame") {
                return f;
            }
            assert!(s.read_buf(buf).await.expect("read") > 0, "closed early");
        }
    })
    .await
}

fn proto_body(m: &impl prost::Message) -> Vec<u8> {
    m.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_and_closed_sessions_are_observed_as_cancelled() {
    let log = Arc::new(Log::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let router = Router::new().add_service(echo_service(&log, &handled));
    let layer = Named {
        name: "n",
        log: log.clone(),
    };
    let (server, _) = start(RpcServer::builder(router).layer(layer)).await;
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let body = proto_body(&req("x"));

    // A `cancel` frame for a call still running.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&request_frame(7, 1, "test.Echo", "Forever", &[], &body))
        .await
        .expect("write");
    log.wait_for("n>Forever").await;
    s.write_all(&control_frame(kind::CANCEL, 0, 7))
        .await
        .expect("cancel");
    log.wait_for("n<Forever:Cancelled").await;

    // The session closes while a call runs: here, a shutdown whose grace period ends first.
    log.take();
    s.write_all(&request_frame(8, 1, "test.Echo", "Forever", &[], &body))
        .await
        .expect("write");
    log.wait_for("n>Forever").await;
    within("shutdown", server.shutdown(Duration::from_millis(100))).await;
    assert_eq!(log.take(), ["n>Forever", "n<Forever:Cancelled"]);
    drop(s);
}

/// Refuses calls without the right token.
struct Auth {
    checked: Arc<AtomicUsize>,
}

impl ServerLayer for Auth {
    const OBSERVES: bool = false;

    fn on_request(&self, call: &mut CallContext) -> Admit {
        self.checked.fetch_add(1, Ordering::SeqCst);
        match call.metadata().get("authorization") {
            Some(b"Bearer good") => Admit::Pass,
            Some(_) => Admit::Refuse(Status::permission_denied("that token opens nothing here")),
            None => Admit::Refuse(Status::unauthenticated("a token is required")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_refuses_with_a_status_and_the_handler_does_not_run() {
    let log = Arc::new(Log::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let checked = Arc::new(AtomicUsize::new(0));
    let router = Router::new().add_service(echo_service(&log, &handled));
    let layer = Auth {
        checked: checked.clone(),
    };
    let (server, url) = start(RpcServer::builder(router).layer(layer)).await;
    let client = RpcClient::connect(&url).await.expect("client");

    let e = client
        .call::<_, EchoReply>("test.Echo", "Echo", &req("x"))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(e.message(), "a token is required");
    let e = client
        .request("test.Echo", "Echo")
        .metadata("authorization", "Bearer bad")
        .call::<_, EchoReply>(&req("x"))
        .await
        .expect_err("bad token");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(handled.load(Ordering::SeqCst), 0, "the handler never ran");

    let r: EchoReply = client
        .request("test.Echo", "Echo")
        .metadata("authorization", "Bearer good")
        .call(&req("in"))
        .await
        .expect("good token");
    assert_eq!(r.text, "in");
    assert_eq!(checked.load(Ordering::SeqCst), 3);
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "only the admitted call ran"
    );
    assert_eq!(log.snapshot(), ["handler"]);
    server.shutdown(Duration::from_secs(5)).await;
}

/// The caller a layer authenticated.
#[derive(Clone, Debug, PartialEq)]
struct Identity(String);

/// Calls seen on one session (a session attribute).
#[derive(Clone, Copy, Debug, Default)]
struct SessionCalls(u32);

/// Authenticates from the `authorization` entry, attaches the identity, hides the credential
/// from the handler, and counts the session's calls in a session attribute.
struct Authenticate;

impl ServerLayer for Authenticate {
    const OBSERVES: bool = false;

    fn on_request(&self, call: &mut CallContext) -> Admit {
        let Some(user) = call
            .metadata()
            .get("authorization")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix("user "))
            .map(str::to_string)
        else {
            return Admit::Refuse(Status::unauthenticated("who are you?"));
        };
        call.metadata_mut().remove("authorization");
        call.extensions_mut().insert(Identity(user));
        // (The attributes are locked inside `with_session_attr`: set outside it.)
        let counted =
            call.with_session_attr(|n: Option<&mut SessionCalls>| n.map(|n| n.0 += 1).is_some());
        if !counted {
            call.set_session_attr(SessionCalls(1));
        }
        Admit::Pass
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_a_layer_attaches_reaches_the_handler() {
    let svc =
        Service::new("test.Who").unary("Am", |_r: EchoRequest, ctx: CallContext| async move {
            let who = ctx
                .extensions()
                .get::<Identity>()
                .cloned()
                .ok_or_else(|| Status::internal("no identity"))?;
            if ctx.metadata().get("authorization").is_some() {
                return Err(Status::internal("the credential reached the handler"));
            }
            let calls = ctx.session_attr::<SessionCalls>().unwrap_or_default();
            Ok(EchoReply {
                text: format!(
                    "{} on {}/{}, call {}",
                    who.0,
                    ctx.service(),
                    ctx.method(),
                    calls.0
                ),
                deadline_left_ms: u64::from(ctx.metadata().get("trace").is_some()),
            })
        });
    let (server, url) =
        start(RpcServer::builder(Router::new().add_service(svc)).layer(Authenticate)).await;
    let client = RpcClient::connect(&url).await.expect("client");
    for n in 1..=2 {
        let r: EchoReply = client
            .request("test.Who", "Am")
            .metadata("authorization", "user ada")
            .metadata("trace", "t")
            .call(&req(""))
            .await
            .expect("call");
        assert_eq!(r.text, format!("ada on test.Who/Am, call {n}"));
        assert_eq!(r.deadline_left_ms, 1, "other metadata is kept");
    }
    let e = client
        .call::<_, EchoReply>("test.Who", "Am", &req(""))
        .await
        .expect_err("anonymous");
    assert_eq!(e.code(), Code::Unauthenticated);
    server.shutdown(Duration::from_secs(5)).await;
}

/// Checks callers asynchronously: a call with `slow` metadata waits until the test opens the
/// gate, then is admitted with an identity or refused; other calls pass at once.
struct AsyncAuth {
    gate: Arc<Notify>,
    log: Arc<Log>,
}

impl ServerLayer for AsyncAuth {
    const OBSERVES: bool = false;

    fn on_request(&self, call: &mut CallContext) -> Admit {
        let Some(slow) = call.metadata().get("slow").map(<[u8]>::to_vec) else {
            return Admit::Pass;
        };
        let gate = self.gate.clone();
        let log = self.log.clone();
        let mut call = call.clone();
        Admit::wait(async move {
            let opened = gate.notified();
            log.push(format!("checking {}", String::from_utf8_lossy(&slow)));
            opened.await;
            if slow == b"deny" {
                return Err(Status::permission_denied("the remote check said no"));
            }
            call.extensions_mut()
                .insert(Identity(String::from_utf8_lossy(&slow).into_owned()));
            Ok(call)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_admission_parks_the_request_until_it_resolves() {
    let log = Arc::new(Log::default());
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = started.clone();
    let svc = Service::new("test.Who").unary("Am", move |_r: EchoRequest, ctx: CallContext| {
        s2.fetch_add(1, Ordering::SeqCst);
        async move {
            let who = ctx.extensions().get::<Identity>().map(|i| i.0.clone());
            Ok::<_, Status>(EchoReply {
                text: who.unwrap_or_else(|| "anonymous".into()),
                deadline_left_ms: 0,
            })
        }
    });
    let gate = Arc::new(Notify::new());
    let layer = AsyncAuth {
        gate: gate.clone(),
        log: log.clone(),
    };
    let (server, url) =
        start(RpcServer::builder(Router::new().add_service(svc)).layer(layer)).await;
    let client = RpcClient::connect(&url).await.expect("client");

    let c = client.clone();
    let waiting = tokio::spawn(async move {
        c.request("test.Who", "Am")
            .metadata("slow", "grace")
            .call::<_, EchoReply>(&req(""))
            .await
    });
    log.wait_for("checking grace").await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        0,
        "the handler waits for the check"
    );
    // The parked call does not hold up others on the same connection.
    let r: EchoReply = client
        .call("test.Who", "Am", &req(""))
        .await
        .expect("a call that needs no check");
    assert_eq!(r.text, "anonymous");
    gate.notify_waiters();
    let r = within("the checked call", waiting)
        .await
        .expect("join")
        .expect("admitted");
    assert_eq!(r.text, "grace", "the identity the async check attached");

    // An asynchronous refusal.
    log.take();
    let c = client.clone();
    let denied = tokio::spawn(async move {
        c.request("test.Who", "Am")
            .metadata("slow", "deny")
            .call::<_, EchoReply>(&req(""))
            .await
    });
    log.wait_for("checking deny").await;
    gate.notify_waiters();
    let e = within("the refused call", denied)
        .await
        .expect("join")
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied);

    // A check that never ends is bounded by the call's deadline.
    let e = client
        .request("test.Who", "Am")
        .metadata("slow", "never")
        .timeout(Duration::from_millis(300))
        .call::<_, EchoReply>(&req(""))
        .await
        .expect_err("deadline");
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "refused calls never started"
    );
    server.shutdown(Duration::from_secs(5)).await;
}

/// Refuses calls carrying a `deny` entry; makes calls carrying `wait` wait for `gate`.
struct Gatekeeper {
    name: &'static str,
    log: Arc<Log>,
    gate: Arc<Notify>,
}

impl ServerLayer for Gatekeeper {
    fn on_request(&self, call: &mut CallContext) -> Admit {
        self.log.push(format!("{}>{}", self.name, call.method()));
        if call.metadata().get("deny").is_some() {
            return Admit::Refuse(Status::permission_denied("denied"));
        }
        if call.metadata().get("wait").is_some() {
            let gate = self.gate.clone();
            let log = self.log.clone();
            let call = call.clone();
            return Admit::wait(async move {
                let opened = gate.notified();
                log.push("waiting");
                opened.await;
                Ok(call)
            });
        }
        Admit::Pass
    }

    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, _latency: Duration) {
        self.log.push(format!(
            "{}<{}:{}",
            self.name,
            call.method(),
            outcome(status)
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_layers_run_outer_first_before_and_last_after() {
    let log = Arc::new(Log::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let outer = Named {
        name: "a",
        log: log.clone(),
    };
    let inner = Gatekeeper {
        name: "b",
        log: log.clone(),
        gate: gate.clone(),
    };
    let router = Router::new().add_service(echo_service(&log, &handled));
    let (server, url) = start(RpcServer::builder(router).layer(outer).layer(inner)).await;
    let client = RpcClient::connect(&url).await.expect("client");

    let _: EchoReply = client
        .call("test.Echo", "Echo", &req("x"))
        .await
        .expect("echo");
    assert_eq!(
        log.take(),
        ["a>Echo", "b>Echo", "handler", "b<Echo:ok", "a<Echo:ok"]
    );

    // The inner layer refuses: the outer one, which admitted the call, hears of it; the inner
    // one does not (it admitted nothing).
    let e = client
        .request("test.Echo", "Echo")
        .metadata("deny", "")
        .call::<_, EchoReply>(&req("x"))
        .await
        .expect_err("denied");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(log.take(), ["a>Echo", "b>Echo", "a<Echo:PermissionDenied"]);

    // The inner layer waits, then admits.
    let c = client.clone();
    let waiting = tokio::spawn(async move {
        c.request("test.Echo", "Echo")
            .metadata("wait", "")
            .call::<_, EchoReply>(&req("x"))
            .await
    });
    log.wait_for("waiting").await;
    gate.notify_waiters();
    within("the waiting call", waiting)
        .await
        .expect("join")
        .expect("admitted");
    assert_eq!(
        log.take(),
        [
            "a>Echo",
            "b>Echo",
            "waiting",
            "handler",
            "b<Echo:ok",
            "a<Echo:ok"
        ]
    );

    // The inner layer waits and the call is cancelled meanwhile (a `cancel` frame): the outer
    // layer hears `cancelled`.
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let mut md = Vec::new();
    qsocket::rpc::frame::put_metadata(&mut md, "wait", b"").expect("md");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&request_frame(
        1,
        1,
        "test.Echo",
        "Echo",
        &md,
        &proto_body(&req("x")),
    ))
    .await
    .expect("write");
    log.wait_for("waiting").await;
    s.write_all(&control_frame(kind::CANCEL, 0, 1))
        .await
        .expect("cancel");
    log.wait_for("a<Echo:Cancelled").await;
    assert_eq!(
        log.take(),
        ["a>Echo", "b>Echo", "waiting", "a<Echo:Cancelled"]
    );
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boxed_layers_chosen_at_run_time_keep_the_order() {
    let log = Arc::new(Log::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let names = ["first", "second", "third"];
    let chain: BoxServerLayer = names.iter().fold(Box::new(()), |outer, name| {
        let l: BoxServerLayer = Box::new(Named {
            name,
            log: log.clone(),
        });
        Box::new(ServerStack::new(outer, l))
    });
    let router = Router::new().add_service(echo_service(&log, &handled));
    let (server, url) = start(RpcServer::builder(router).layer(Arc::new(chain))).await;
    let client = RpcClient::connect(&url).await.expect("client");
    let e = client
        .call::<_, EchoReply>("test.Echo", "Fail", &req("x"))
        .await
        .expect_err("fail");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        log.take(),
        [
            "first>Fail",
            "second>Fail",
            "third>Fail",
            "third<Fail:NotFound",
            "second<Fail:NotFound",
            "first<Fail:NotFound"
        ]
    );
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_answers_with_response_metadata() {
    let svc = Service::new("test.Meta")
        .unary("Tagged", |r: EchoRequest, _ctx: CallContext| async move {
            Ok::<_, Status>(
                Reply::new(EchoReply {
                    text: r.text,
                    deadline_left_ms: 0,
                })
                .with_metadata("cache", "miss")
                .with_metadata("server-timing", "db;dur=3"),
            )
        })
        .unary("Plain", |r: EchoRequest, _ctx: CallContext| async move {
            Ok::<_, Status>(EchoReply {
                text: r.text,
                deadline_left_ms: 0,
            })
        })
        .unary("Fails", |_r: EchoRequest, _ctx: CallContext| async move {
            Err::<Reply<EchoReply>, _>(Status::aborted("try again"))
        });
    let (server, url) = start(RpcServer::builder(Router::new().add_service(svc))).await;
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = BytesMut::new();
    let body = proto_body(&req("hello"));

    s.write_all(&request_frame(1, 1, "test.Meta", "Tagged", &[], &body))
        .await
        .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.kind, f.id, f.status), (kind::RESPONSE, 1, 0));
    assert_eq!(f.metadata().get("cache"), Some(&b"miss"[..]));
    assert_eq!(f.metadata().get("server-timing"), Some(&b"db;dur=3"[..]));
    assert!(f.metadata().is_valid());
    let reply: EchoReply = prost::Message::decode(f.body()).expect("body");
    assert_eq!(reply.text, "hello");

    // In JSON too (the metadata does not depend on the codec).
    let json = serde_json::to_vec(&req("json")).expect("json");
    s.write_all(&request_frame(2, 2, "test.Meta", "Tagged", &[], &json))
        .await
        .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status, f.codec), (2, 0, 2));
    assert_eq!(f.metadata().get("cache"), Some(&b"miss"[..]));
    let reply: EchoReply = serde_json::from_slice(&f.body()).expect("json body");
    assert_eq!(reply.text, "json");

    // A plain message carries none; an error response carries none.
    s.write_all(&request_frame(3, 1, "test.Meta", "Plain", &[], &body))
        .await
        .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status), (3, 0));
    assert!(f.metadata().0.is_empty());
    s.write_all(&request_frame(4, 1, "test.Meta", "Fails", &[], &body))
        .await
        .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status), (4, Code::Aborted as u16));
    assert!(f.metadata().0.is_empty());
    assert_eq!(&f.body()[..], b"try again");

    // The typed client still takes a reply with metadata as a plain message.
    let client = RpcClient::connect(&url).await.expect("client");
    let r: EchoReply = client
        .call("test.Meta", "Tagged", &req("typed"))
        .await
        .expect("typed call");
    assert_eq!(r.text, "typed");
    server.shutdown(Duration::from_secs(5)).await;
}

/// A serde-only message (JSON only).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

/// A prost-only message (protobuf only).
#[derive(Clone, PartialEq, prost::Message)]
struct Count {
    #[prost(uint32, tag = "1")]
    n: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codec_the_method_does_not_speak_is_refused_before_decoding() {
    let log = Arc::new(Log::default());
    let svc = Service::new("test.Codecs")
        .unary("Flip", |p: Json<Point>, _ctx: CallContext| async move {
            Ok::<_, Status>(Json(Point { x: p.0.y, y: p.0.x }))
        })
        .unary("Next", |c: Proto<Count>, _ctx: CallContext| async move {
            Ok::<_, Status>(Proto(Count { n: c.0.n + 1 }))
        })
        // Speaks both on the way in, JSON only on the way out.
        .unary("Split", |s: String, _ctx: CallContext| async move {
            Ok::<_, Status>(Json(Point {
                x: s.len() as i32,
                y: 0,
            }))
        });
    let layer = Named {
        name: "n",
        log: log.clone(),
    };
    let (server, _) = start(RpcServer::builder(Router::new().add_service(svc)).layer(layer)).await;
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = BytesMut::new();

    // Protobuf to a JSON-only method: refused, saying why.
    s.write_all(&request_frame(
        1,
        1,
        "test.Codecs",
        "Flip",
        &[],
        b"\x08\x01",
    ))
    .await
    .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status), (1, Code::InvalidArgument as u16));
    let msg = String::from_utf8_lossy(&f.body()).into_owned();
    assert!(
        msg.contains("Json<")
            && msg.contains("Point>")
            && msg.ends_with("cannot be carried as protobuf: it speaks json only"),
        "{msg}"
    );
    // JSON to a protobuf-only method.
    s.write_all(&request_frame(
        2,
        2,
        "test.Codecs",
        "Next",
        &[],
        b"{\"n\":1}",
    ))
    .await
    .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status), (2, Code::InvalidArgument as u16));
    let msg = String::from_utf8_lossy(&f.body()).into_owned();
    assert!(
        msg.contains("Proto<")
            && msg.ends_with("cannot be carried as json: it speaks protobuf only"),
        "{msg}"
    );
    // The response type is checked too, before the handler runs.
    let body = proto_body(&"abc".to_string());
    s.write_all(&request_frame(3, 1, "test.Codecs", "Split", &[], &body))
        .await
        .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status), (3, Code::InvalidArgument as u16));
    assert!(String::from_utf8_lossy(&f.body()).ends_with("it speaks json only"));
    assert!(
        log.snapshot().is_empty(),
        "refused before any layer: {:?}",
        log.snapshot()
    );

    // The codecs they speak work.
    s.write_all(&request_frame(
        4,
        2,
        "test.Codecs",
        "Flip",
        &[],
        b"{\"x\":1,\"y\":2}",
    ))
    .await
    .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status), (4, 0));
    assert_eq!(&f.body()[..], br#"{"x":2,"y":1}"#);
    s.write_all(&request_frame(
        5,
        1,
        "test.Codecs",
        "Next",
        &[],
        &proto_body(&Count { n: 41 }),
    ))
    .await
    .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status), (5, 0));
    let c: Count = prost::Message::decode(f.body()).expect("count");
    assert_eq!(c.n, 42);
    assert_eq!(log.take(), ["n>Flip", "n<Flip:ok", "n>Next", "n<Next:ok"]);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_can_be_given_a_bound_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(Log::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let server = RpcServer::builder(Router::new().add_service(echo_service(&log, &handled)))
        .tcp_listener(listener)
        .start()
        .await
        .expect("server");
    assert_eq!(server.local_addr(Transport::Tcp), Some(addr));
    let client = RpcClient::connect(&format!("tcp://{addr}"))
        .await
        .expect("client");
    let r: EchoReply = client
        .call("test.Echo", "Echo", &req("bound"))
        .await
        .expect("echo");
    assert_eq!(r.text, "bound");
    assert!(server.session_count() >= 1);
    server.shutdown(Duration::from_secs(5)).await;
}
