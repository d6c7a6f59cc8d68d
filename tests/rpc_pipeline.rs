//! The client side of the call pipeline end to end, real sockets on 127.0.0.1: several
//! instances, instances joining and leaving under load, fail-fast and waiting for a
//! connection, client layers (observe, change metadata, reject, retry), balancers per client
//! and per service, codecs a message type does not speak.

mod common;
mod rpc_common;

use common::{eventually, within};
use qsocket::rpc::balance::{Balancer, Node, Pick};
use qsocket::rpc::{
    BoxInvoke, BoxLayer, CallContext, ClientLayer, Code, Codec, Instance, InstanceList, Invoke,
    Json, Request, Response, Router, RpcClient, RpcServer, Sent, Service, Status,
};
use rpc_common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP RPC server of `test.Echo` with its own counters, and its URL.
async fn echo_server() -> (RpcServer, String, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let server = RpcServer::builder(router(counters.clone()))
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("rpc server");
    let url = server.local_endpoints()[0].to_string();
    (server, url, counters)
}

fn started(c: &Counters) -> usize {
    c.started.load(Ordering::SeqCst)
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn refusing_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn echo<I: Invoke>(c: &RpcClient<I>, text: &str) -> Result<EchoReply, Status> {
    c.request("test.Echo", "Echo")
        .timeout(Duration::from_secs(20))
        .call(&req(text))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_three_instances_is_exact() {
    let (s1, u1, c1) = echo_server().await;
    let (s2, u2, c2) = echo_server().await;
    let (s3, u3, c3) = echo_server().await;
    let client = RpcClient::builder()
        .endpoint(&u1)
        .endpoint(&u2)
        .endpoint(&u3)
        .start()
        .await
        .expect("client");
    // Until all three are connected, round robin only spreads over the live ones.
    within("all connected", async {
        while client.channel().live_instances() < 3 {
            client.ready().await.expect("ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let before = [started(&c1), started(&c2), started(&c3)];
    for i in 0..300 {
        echo(&client, &format!("{i}")).await.expect("call");
    }
    let after = [started(&c1), started(&c2), started(&c3)];
    let got: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(got, vec![100, 100, 100], "round robin is exact");
    drop((s1, s2, s3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_join_and_leave_under_load_and_no_call_is_lost() {
    let (s1, u1, c1) = echo_server().await;
    let (s2, u2, c2) = echo_server().await;
    let (s3, u3, c3) = echo_server().await;
    let list = InstanceList::new([Instance::parse(&u1).expect("url")]);
    let client = RpcClient::builder()
        .instances(list.clone())
        .start()
        .await
        .expect("client");
    client.ready().await.expect("ready");

    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, done, failed) = (client.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                for i in 0..400 {
                    match echo(&client, &format!("{w}-{i}")).await {
                        Ok(r) => assert_eq!(r.text, format!("{w}-{i}")),
                        Err(e) => failed.lock().expect("lock").push(e.to_string()),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let progressed = |n: usize| {
        let done = done.clone();
        move || done.load(Ordering::SeqCst) >= n
    };
    eventually("calls to the first instance", progressed(300)).await;
    list.insert(Instance::parse(&u2).expect("url"));
    eventually("the second instance serves", || started(&c2) > 0).await;
    list.remove(&u1.parse().expect("endpoint"));
    list.insert(Instance::parse(&u3).expect("url"));
    eventually("the third instance serves", || started(&c3) > 0).await;
    // The first instance is out of the pick set: it gets no new calls.
    let on_first = started(&c1);
    eventually("more calls", progressed(done.load(Ordering::SeqCst) + 300)).await;
    assert_eq!(
        started(&c1),
        on_first,
        "a removed instance gets no new calls"
    );
    for w in workers {
        within("worker", w).await.expect("worker");
    }
    let failed = failed.lock().expect("lock");
    assert!(failed.is_empty(), "lost calls: {failed:?}");
    assert_eq!(done.load(Ordering::SeqCst), 8 * 400);
    assert_eq!(
        started(&c1) + started(&c2) + started(&c3),
        8 * 400,
        "every call ran exactly once"
    );
    drop((s1, s2, s3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_endpoint_fails_fast_with_the_cause() {
    let port = refusing_port();
    let url = format!("tcp://127.0.0.1:{port}");
    // The default timeout bounds `ready()` below.
    let client = RpcClient::builder()
        .endpoint(&url)
        .timeout(Duration::from_secs(2))
        .start()
        .await
        .expect("client");
    let t = Instant::now();
    let err = client
        .request("test.Echo", "Echo")
        .timeout(Duration::from_secs(60))
        .call::<_, EchoReply>(&req("x"))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.sent(), Sent::No);
    assert!(
        err.message()
            .contains(&format!("connection refused to {url}")),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "did not wait for the deadline"
    );
    let err = client.ready().await.expect_err("never ready");
    assert!(err.message().contains("connection refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_connection_is_an_option_and_ready_waits() {
    let port = refusing_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let client = RpcClient::builder()
        .endpoint(&url)
        .timeout(Duration::from_millis(300))
        .start()
        .await
        .expect("client");
    // The option waits for the whole deadline.
    let t = Instant::now();
    let err = client
        .request("test.Echo", "Echo")
        .wait_for_connection()
        .call::<_, EchoReply>(&req("x"))
        .await
        .expect_err("nothing listens");
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("before the deadline"), "{err}");

    // A call waiting for a connection succeeds once the server comes up on that port.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request("test.Echo", "Echo")
                .timeout(Duration::from_secs(30))
                .wait_for_connection()
                .call::<_, EchoReply>(&req("late"))
                .await
        })
    };
    let counters = Arc::new(Counters::default());
    let server = RpcServer::builder(router(counters))
        .bind(&url)
        .start()
        .await
        .expect("server on the released port");
    let reply = within("the waiting call", waiting)
        .await
        .expect("join")
        .expect("answered once connected");
    assert_eq!(reply.text, "late");
    within("ready", client.ready()).await.expect("ready");
    drop(server);
}

/// What the observing layer saw of a call: method, instance, success, latency.
type Seen = Arc<Mutex<Vec<(String, String, bool, Duration)>>>;

/// A layer that counts calls, records the instance each went to and its outcome, adds a
/// metadata entry, and refuses calls to method "Forbidden".
#[derive(Clone, Default)]
struct Observe {
    seen: Seen,
}

struct Observed<I> {
    inner: I,
    seen: Seen,
}

impl<I: Invoke> Invoke for Observed<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        if req.method == "Forbidden" {
            return Err(Status::permission_denied("refused by a client layer"));
        }
        req.metadata.insert("layer", "observe")?;
        let t = Instant::now();
        let r = self.inner.invoke(req).await;
        let instance = req
            .instance
            .as_ref()
            .map(|n| n.instance().endpoint().to_string())
            .unwrap_or_default();
        self.seen.lock().expect("lock").push((
            req.method.to_string(),
            instance,
            r.is_ok(),
            t.elapsed(),
        ));
        r
    }
}

impl<I: Invoke> ClientLayer<I> for Observe {
    type Invoke = Observed<I>;
    fn layer(self, inner: I) -> Observed<I> {
        Observed {
            inner,
            seen: self.seen,
        }
    }
}

/// A layer that sends each call twice, the second time avoiding the first instance.
struct Twice<I>(I);

impl<I: Invoke> Invoke for Twice<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        self.0.invoke(req).await?;
        if let Some(first) = req.instance.as_ref().map(Node::key) {
            req.exclude.push(first);
        }
        self.0.invoke(req).await
    }
}

/// A service that answers with the request's metadata entry "layer".
fn metadata_router() -> Router {
    Router::new().add_service(Service::new("test.Meta").unary(
        "Get",
        |_: (), ctx: CallContext| async move {
            Ok::<_, Status>(
                String::from_utf8_lossy(ctx.metadata().get("layer").unwrap_or(b"")).into_owned(),
            )
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_layers_observe_change_metadata_reject_and_retry() {
    let (s1, u1, c1) = echo_server().await;
    let (s2, u2, c2) = echo_server().await;
    let meta = RpcServer::builder(metadata_router())
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let base = RpcClient::builder()
        .endpoint(&u1)
        .endpoint(&u2)
        .start()
        .await
        .expect("client");
    within("both connected", async {
        while base.channel().live_instances() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let observe = Observe::default();
    let client = base.layer(observe.clone());

    // Observe: the method, the instance that answered, the outcome.
    echo(&client, "a").await.expect("call");
    let err = client
        .request("test.Echo", "Nope")
        .call::<_, EchoReply>(&req("b"))
        .await
        .expect_err("unknown method");
    assert_eq!(err.code(), Code::Unimplemented);
    {
        let seen = observe.seen.lock().expect("lock");
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].0.as_str(), seen[0].2), ("Echo", true));
        assert_eq!((seen[1].0.as_str(), seen[1].2), ("Nope", false));
        assert!(seen.iter().all(|s| s.1 == u1 || s.1 == u2), "{seen:?}");
    }

    // Reject: nothing reaches a server.
    let before = started(&c1) + started(&c2);
    let err = client
        .request("test.Echo", "Forbidden")
        .call::<_, EchoReply>(&req("c"))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(started(&c1) + started(&c2), before);

    // Metadata added by the layer reaches the handler.
    let meta_client = RpcClient::connect(&meta.local_endpoints()[0].to_string())
        .await
        .expect("client")
        .layer(Observe::default());
    let got: String = meta_client
        .call("test.Meta", "Get", &())
        .await
        .expect("call");
    assert_eq!(got, "observe");

    // Retry on another instance: each call runs once on each.
    let twice = base.layer(qsocket::rpc::layer_fn(Twice));
    let (b1, b2) = (started(&c1), started(&c2));
    for i in 0..10 {
        echo(&twice, &format!("{i}")).await.expect("call");
    }
    assert_eq!((started(&c1) - b1, started(&c2) - b2), (10, 10));

    // The same chain built at run time.
    let boxed = base.layer(vec![
        BoxLayer::from_layer(Observe::default()),
        BoxLayer::new(|inner: BoxInvoke| BoxInvoke::new(Twice(inner))),
    ]);
    let (b1, b2) = (started(&c1), started(&c2));
    echo(&boxed, "boxed").await.expect("call");
    assert_eq!((started(&c1) - b1, started(&c2) - b2), (1, 1));
    drop((s1, s2, meta));
}

/// Always picks the instance whose endpoint is `target`.
struct Pinned(String);

impl Balancer for Pinned {
    fn pick(&self, _call: &Pick<'_>, nodes: &[Node]) -> Option<usize> {
        nodes
            .iter()
            .position(|n| n.instance().endpoint().to_string() == self.0)
    }
    fn name(&self) -> &'static str {
        "pinned"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_are_chosen_per_client_and_per_service() {
    let (s1, u1, c1) = echo_server().await;
    let (s2, u2, c2) = echo_server().await;
    let client = RpcClient::builder()
        .endpoint(&u1)
        .endpoint(&u2)
        .balancer(Pinned(u1.clone()))
        .service_balancer("other.Service", Pinned(u2.clone()))
        .start()
        .await
        .expect("client");
    within("both connected", async {
        while client.channel().live_instances() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for i in 0..20 {
        echo(&client, &format!("{i}")).await.expect("call");
    }
    assert_eq!(
        (started(&c1), started(&c2)),
        (20, 0),
        "the client's balancer"
    );
    let err = client
        .request("other.Service", "Echo")
        .call::<_, EchoReply>(&req("x"))
        .await
        .expect_err("no such service");
    assert_eq!(
        err.code(),
        Code::Unimplemented,
        "answered by a server: {err}"
    );
    // A balancer that finds nothing fails the call, unsent.
    let none = RpcClient::builder()
        .endpoint(&u1)
        .balancer(Pinned("tcp://nowhere:1".into()))
        .start()
        .await
        .expect("client");
    none.ready().await.expect("ready");
    let err = echo(&none, "x").await.expect_err("nothing picked");
    assert_eq!((err.code(), err.sent()), (Code::Unavailable, Sent::No));
    assert!(err.message().contains("pinned"), "{err}");
    drop((s1, s2));
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Point {
    x: i32,
    y: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_that_speaks_one_codec_is_usable_and_others_are_refused_clearly() {
    let server = RpcServer::builder(Router::new().add_service(Service::new("geo.Geo").unary(
        "Mirror",
        |p: Json<Point>, _ctx: CallContext| async move {
            Ok::<_, Status>(Json(Point { x: p.0.y, y: p.0.x }))
        },
    )))
    .bind("tcp://127.0.0.1:0")
    .start()
    .await
    .expect("server");
    let url = server.local_endpoints()[0].to_string();
    // The client's default codec is protobuf; a JSON-only type goes as JSON by itself.
    let client = RpcClient::connect(&url).await.expect("client");
    let back: Json<Point> = client
        .call("geo.Geo", "Mirror", &Json(Point { x: 1, y: 2 }))
        .await
        .expect("call");
    assert_eq!(back.0, Point { x: 2, y: 1 });
    // Asking for protobuf is refused before anything is sent, saying why.
    let err = client
        .request("geo.Geo", "Mirror")
        .codec(Codec::Protobuf)
        .call::<_, Json<Point>>(&Json(Point { x: 1, y: 2 }))
        .await
        .expect_err("refused");
    assert_eq!((err.code(), err.sent()), (Code::InvalidArgument, Sent::No));
    assert!(err.message().contains("speaks json only"), "{err}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_key_keeps_a_caller_on_one_instance() {
    let (s1, u1, c1) = echo_server().await;
    let (s2, u2, c2) = echo_server().await;
    let (s3, u3, c3) = echo_server().await;
    let client = RpcClient::builder()
        .endpoint(&u1)
        .endpoint(&u2)
        .endpoint(&u3)
        .balancer(qsocket::rpc::balance::HashRing::new())
        .start()
        .await
        .expect("client");
    within("all connected", async {
        while client.channel().live_instances() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let counts = || [started(&c1), started(&c2), started(&c3)];
    for user in ["alice", "bob", "carol", "dave"] {
        let before = counts();
        for _ in 0..10 {
            client
                .request("test.Echo", "Echo")
                .hash_key(user)
                .call::<_, EchoReply>(&req(user))
                .await
                .expect("call");
        }
        let after = counts();
        let moved: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert!(
            moved.contains(&10),
            "{user}'s calls all on one instance: {moved:?}"
        );
    }
    drop((s1, s2, s3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_metadata_reaches_the_client() {
    use qsocket::rpc::Reply;
    let server = RpcServer::builder(Router::new().add_service(Service::new("test.Meta").unary(
        "Tagged",
        |x: u32, ctx: CallContext| async move {
            let trace = ctx.metadata().get("trace-id").unwrap_or(b"none").to_vec();
            Ok::<_, Status>(
                Reply::new(x + 1)
                    .with_metadata("served-by", "meta")
                    .with_metadata("trace-id", trace),
            )
        },
    )))
    .bind("tcp://127.0.0.1:0")
    .start()
    .await
    .expect("server");
    let client = RpcClient::connect(&server.local_endpoints()[0].to_string())
        .await
        .expect("client");
    for codec in [Codec::Protobuf, Codec::Json] {
        let reply: Reply<u32> = client
            .request("test.Meta", "Tagged")
            .codec(codec)
            .metadata("trace-id", "t-7")
            .reply(&41u32)
            .await
            .expect("call");
        assert_eq!(reply.body, 42);
        assert_eq!(reply.metadata.get_str("served-by"), Some("meta"));
        assert_eq!(reply.metadata.get_str("trace-id"), Some("t-7"));
    }
    // A plain call still gets just the message.
    let plain: u32 = client
        .call("test.Meta", "Tagged", &1u32)
        .await
        .expect("call");
    assert_eq!(plain, 2);
    drop(server);
}
