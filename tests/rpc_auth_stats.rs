//! User auth and invoke statistics end to end, real sockets on 127.0.0.1 over TCP, UDP and
//! WebSocket: bearer tokens and access keys accepted, refused, replayed and expired;
//! per-method rules; the handler reading the caller; statistics and `/metrics` (scraped over
//! HTTP) counting exactly what the test did.

mod common;
mod rpc_common;

use qsocket::rpc::{
    AccessKey, AccessKeys, Auth, BearerToken, BearerTokens, CallContext, ClientLayer, Cluster,
    Code, Invoke, Policy, Principal, Request, Response, Router, RpcClient, RpcServer, Service,
    Side, Stats, Status,
};
use rpc_common::{msg, Msg};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `test.Bank`: `Whoami` answers the caller's id; `Close` needs role `admin`; `Fail` answers
/// `unavailable`.
fn router(handled: Arc<AtomicUsize>) -> Router {
    let (h1, h2, h3) = (handled.clone(), handled.clone(), handled);
    Router::new().add_service(
        Service::new("test.Bank")
            .unary("Whoami", move |_m: Msg, ctx: CallContext| {
                h1.fetch_add(1, Ordering::SeqCst);
                let who = Principal::of(&ctx)
                    .map(|p| p.id.clone())
                    .unwrap_or_default();
                async move { Ok::<_, Status>(msg(&who)) }
            })
            .unary("Close", move |_m: Msg, _ctx: CallContext| {
                h2.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Status>(msg("closed")) }
            })
            .unary("Fail", move |_m: Msg, _ctx: CallContext| {
                h3.fetch_add(1, Ordering::SeqCst);
                async move { Err::<Msg, _>(Status::unavailable("down for the test")) }
            }),
    )
}

const TRANSPORTS: [&str; 3] = [
    "tcp://127.0.0.1:0",
    "udp://127.0.0.1:0",
    "ws://127.0.0.1:0/rpc",
];

async fn client(url: &str) -> RpcClient {
    let c = RpcClient::builder()
        .endpoint(url)
        .timeout(Duration::from_secs(10))
        .start()
        .await
        .expect("client");
    c.ready().await.expect("ready");
    c
}

async fn call<I: Invoke>(c: &RpcClient<I>, method: &str) -> Result<Msg, Status> {
    c.request("test.Bank", method).call(&msg("hi")).await
}

fn tokens() -> BearerTokens {
    BearerTokens::new()
        .token("tok-admin", Principal::new("ada").role("admin"))
        .token("tok-user", Principal::new("bob"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_accepted_refused_and_ruled_on_every_transport() {
    for bind in TRANSPORTS {
        let handled = Arc::new(AtomicUsize::new(0));
        let server = RpcServer::builder(router(handled.clone()))
            .layer(Auth::new(tokens()).allow("test.Bank", "Close", &["admin"]))
            .bind(bind)
            .start()
            .await
            .expect("server");
        let url = server.local_endpoints()[0].to_string();
        let plain = client(&url).await;
        let ada = plain.layer(BearerToken::new("tok-admin"));
        let bob = plain.layer(BearerToken::new("tok-user"));
        let eve = plain.layer(BearerToken::new("tok-guess"));

        assert_eq!(
            call(&ada, "Whoami").await.expect("ada").text,
            "ada",
            "{bind}"
        );
        assert_eq!(
            call(&bob, "Whoami").await.expect("bob").text,
            "bob",
            "{bind}"
        );
        assert_eq!(call(&ada, "Close").await.expect("admin").text, "closed");
        let st = call(&bob, "Close").await.expect_err("not an admin");
        assert_eq!(st.code(), Code::PermissionDenied, "{bind}");
        let st = call(&eve, "Whoami").await.expect_err("unknown token");
        assert_eq!(st.code(), Code::Unauthenticated, "{bind}");
        assert!(!st.message().contains("tok-guess"), "no secret in errors");
        let st = call(&plain, "Whoami").await.expect_err("no token");
        assert_eq!(st.code(), Code::Unauthenticated, "{bind}");
        assert_eq!(
            handled.load(Ordering::SeqCst),
            3,
            "{bind}: refused before any handler"
        );
    }
}

/// A layer that sends each request twice, unchanged (what a captured request replayed looks
/// like): the second answer is the call's.
struct Twice;
struct TwiceInvoke<I>(I);
impl<I: Invoke> ClientLayer<I> for Twice {
    type Invoke = TwiceInvoke<I>;
    fn layer(self, inner: I) -> TwiceInvoke<I> {
        TwiceInvoke(inner)
    }
}
impl<I: Invoke> Invoke for TwiceInvoke<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        self.0.invoke(req).await?;
        self.0.invoke(req).await
    }
}

/// A layer that holds each request for a while before sending it, or changes its body.
struct Tamper {
    delay: Duration,
    body: Option<&'static [u8]>,
}
struct TamperInvoke<I>(I, Duration, Option<&'static [u8]>);
impl<I: Invoke> ClientLayer<I> for Tamper {
    type Invoke = TamperInvoke<I>;
    fn layer(self, inner: I) -> TamperInvoke<I> {
        TamperInvoke(inner, self.delay, self.body)
    }
}
impl<I: Invoke> Invoke for TamperInvoke<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        tokio::time::sleep(self.1).await;
        if let Some(b) = self.2 {
            req.body = bytes::Bytes::from_static(b);
        }
        self.0.invoke(req).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_keys_accepted_replayed_expired_and_tampered_on_every_transport() {
    for bind in TRANSPORTS {
        let handled = Arc::new(AtomicUsize::new(0));
        let keys = AccessKeys::new()
            .key("AK1", b"secret-1", Principal::new("svc-a"))
            .skew(Duration::from_millis(500));
        let server = RpcServer::builder(router(handled.clone()))
            .layer(Auth::new(keys))
            .bind(bind)
            .start()
            .await
            .expect("server");
        let url = server.local_endpoints()[0].to_string();
        let plain = client(&url).await;
        let signed = plain.layer(AccessKey::new("AK1", b"secret-1"));
        for _ in 0..3 {
            assert_eq!(call(&signed, "Whoami").await.expect("signed").text, "svc-a");
        }
        // The same signed request twice: the copy is refused.
        let replay = plain.layer(Twice).layer(AccessKey::new("AK1", b"secret-1"));
        let st = call(&replay, "Whoami").await.expect_err("replayed");
        assert_eq!(st.code(), Code::Unauthenticated, "{bind}");
        assert!(st.message().contains("replayed"), "{bind}: {st}");
        // Signed, then held past the skew window.
        let late = plain
            .layer(Tamper {
                delay: Duration::from_millis(900),
                body: None,
            })
            .layer(AccessKey::new("AK1", b"secret-1"));
        let st = call(&late, "Whoami").await.expect_err("expired");
        assert_eq!(st.code(), Code::Unauthenticated, "{bind}");
        assert!(st.message().contains("skew"), "{bind}: {st}");
        // Signed, then the body changed.
        let changed = plain
            .layer(Tamper {
                delay: Duration::ZERO,
                body: Some(b"\x0a\x03bye"),
            })
            .layer(AccessKey::new("AK1", b"secret-1"));
        let st = call(&changed, "Whoami").await.expect_err("tampered");
        assert!(st.message().contains("signature"), "{bind}: {st}");
        // A wrong secret.
        let wrong = plain.layer(AccessKey::new("AK1", b"secret-2"));
        let st = call(&wrong, "Whoami").await.expect_err("wrong secret");
        assert_eq!(st.code(), Code::Unauthenticated, "{bind}");
        assert!(!st.message().contains("secret-"), "no secret in errors");
        // 3 good calls + the first of the replayed pair.
        assert_eq!(handled.load(Ordering::SeqCst), 4, "{bind}");
    }
}

/// GET `path` from `addr` over HTTP/1.1; the status line and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out.lines().next().unwrap_or_default().to_string();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_and_metrics_count_exactly_what_was_done() {
    for bind in TRANSPORTS {
        count_exactly(bind).await;
    }
}

async fn count_exactly(bind: &str) {
    let handled = Arc::new(AtomicUsize::new(0));
    let server_stats = Stats::new(Side::Server);
    let client_stats = Stats::new(Side::Client);
    let server = RpcServer::builder(router(handled.clone()))
        .layer(server_stats.layer())
        .layer(Auth::new(tokens()))
        .bind(bind)
        .metrics("127.0.0.1:0", [server_stats.clone(), client_stats.clone()])
        .start()
        .await
        .expect("server");
    let url = server.local_endpoints()[0].to_string();
    let plain = client(&url).await;
    let cluster = Cluster::new(Policy::failover(2));
    let c = plain
        .layer(BearerToken::new("tok-user"))
        .layer(cluster.clone())
        .layer(client_stats.layer());
    for _ in 0..7 {
        call(&c, "Whoami").await.expect("ok");
    }
    for _ in 0..3 {
        // One instance: each failure is retried twice on it (unavailable), then returned.
        assert_eq!(
            call(&c, "Fail").await.expect_err("fails").code(),
            Code::Unavailable
        );
    }
    let anon = plain.layer(client_stats.layer());
    for _ in 0..2 {
        let st = call(&anon, "Whoami").await.expect_err("no token");
        assert_eq!(st.code(), Code::Unauthenticated);
    }

    let cs = client_stats.snapshot();
    let who = cs.method("test.Bank", "Whoami").expect("client Whoami");
    assert_eq!((who.calls, who.ok, who.in_flight), (9, 7, 0));
    assert_eq!(who.errors_of(Code::Unauthenticated), 2);
    let fail = cs.method("test.Bank", "Fail").expect("client Fail");
    assert_eq!(
        (fail.calls, fail.errors_of(Code::Unavailable), fail.retries),
        (3, 3, 6)
    );
    assert!(fail.p50.is_some() && fail.max >= fail.p99);

    let ss = server_stats.snapshot();
    let who = ss.method("test.Bank", "Whoami").expect("server Whoami");
    assert_eq!(
        (who.calls, who.ok, who.errors_of(Code::Unauthenticated)),
        (9, 7, 2)
    );
    let fail = ss.method("test.Bank", "Fail").expect("server Fail");
    assert_eq!(
        (fail.calls, fail.errors_of(Code::Unavailable)),
        (9, 9),
        "every attempt"
    );

    let table = ss.to_string();
    assert!(
        table.contains("Whoami") && table.contains("unauthenticated:2"),
        "{table}"
    );

    let addr = server.metrics_addr().expect("metrics served");
    let (status, body) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for line in [
        "qsocket_rpc_calls_total{side=\"server\",service=\"test.Bank\",method=\"Whoami\"} 9",
        "qsocket_rpc_errors_total{side=\"server\",service=\"test.Bank\",method=\"Whoami\",code=\"unauthenticated\"} 2",
        "qsocket_rpc_calls_total{side=\"client\",service=\"test.Bank\",method=\"Fail\"} 3",
        "qsocket_rpc_retries_total{side=\"client\",service=\"test.Bank\",method=\"Fail\"} 6",
        "qsocket_rpc_in_flight{side=\"client\",service=\"test.Bank\",method=\"Whoami\"} 0",
    ] {
        assert!(body.contains(line), "missing {line} in:\n{body}");
    }
    assert!(body.contains("qsocket_rpc_latency_seconds{"), "{body}");
    let (status, _) = http_get(addr, "/other").await;
    assert!(status.contains("404"), "{status}");
}
