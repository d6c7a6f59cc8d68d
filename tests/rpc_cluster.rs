//! Cluster strategies end to end, real sockets on 127.0.0.1 over TCP, UDP and WebSocket:
//! failover, failfast, failtry, failsafe, failback, forking, hedging, the retry budget, the
//! circuit breaker, and a user's own layer (a rate limit) rejecting calls.

mod common;
mod rpc_common;

use common::{eventually, within};
use qsocket::rpc::{
    Breaker, CallContext, Circuit, ClientLayer, Cluster, Code, Codec, HedgeDelay, Invoke, Policy,
    Request, Response, RetryBudget, Router, RpcClient, RpcServer, Service, Status,
};
use rpc_common::{msg, Msg};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a test server answers.
#[derive(Default)]
struct Behaviour {
    /// Calls started.
    calls: AtomicUsize,
    /// Answer `unavailable` to every call while set.
    failing: AtomicUsize,
    /// Answer `unavailable` to this many calls, then normally.
    fail_next: AtomicUsize,
    /// Take this long before answering.
    delay_ms: AtomicU64,
    /// Oneway calls received.
    fired: AtomicUsize,
}

impl Behaviour {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn router(b: Arc<Behaviour>) -> Router {
    let b2 = b.clone();
    Router::new().add_service(
        Service::new("test.Cluster")
            .unary("Echo", move |m: Msg, _ctx: CallContext| {
                let b = b.clone();
                async move {
                    b.calls.fetch_add(1, Ordering::SeqCst);
                    let delay = b.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    if b.failing.load(Ordering::SeqCst) > 0 {
                        return Err(Status::unavailable("this instance is failing"));
                    }
                    let left = b.fail_next.load(Ordering::SeqCst);
                    if left > 0 {
                        b.fail_next.store(left - 1, Ordering::SeqCst);
                        return Err(Status::unavailable("this instance fails for now"));
                    }
                    Ok::<_, Status>(m)
                }
            })
            .unary("Fire", move |_m: Msg, _ctx: CallContext| {
                let b = b2.clone();
                async move {
                    b.fired.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Status>(())
                }
            }),
    )
}

const TRANSPORTS: [&str; 3] = [
    "tcp://127.0.0.1:0",
    "udp://127.0.0.1:0",
    "ws://127.0.0.1:0/rpc",
];

struct Instance {
    server: Option<RpcServer>,
    url: String,
    b: Arc<Behaviour>,
}

async fn instance(bind: &str) -> Instance {
    let b = Arc::new(Behaviour::default());
    let server = RpcServer::builder(router(b.clone()))
        .bind(bind)
        .start()
        .await
        .expect("server");
    let url = server.local_endpoints()[0].to_string();
    Instance {
        server: Some(server),
        url,
        b,
    }
}

/// `n` instances on `bind`'s transport.
async fn fleet(bind: &str, n: usize) -> Vec<Instance> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(instance(bind).await);
    }
    v
}

/// A client of every instance, connected to all of them.
async fn client_of(fleet: &[Instance], breaker: Option<Breaker>) -> RpcClient {
    let mut b = RpcClient::builder().timeout(Duration::from_secs(10));
    for i in fleet {
        b = b.endpoint(&i.url);
    }
    if let Some(br) = breaker {
        b = b.breaker(br);
    }
    let c = b.start().await.expect("client");
    within("all connected", async {
        while c.channel().live_instances() < fleet.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    c
}

async fn echo<I: Invoke>(c: &RpcClient<I>, text: &str) -> Result<Msg, Status> {
    c.request("test.Cluster", "Echo").call(&msg(text)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_goes_to_a_live_instance_on_every_transport() {
    for bind in TRANSPORTS {
        let f = fleet(bind, 2).await;
        f[0].b.failing.store(1, Ordering::SeqCst);
        let cluster = Cluster::new(Policy::failover(2));
        let c = client_of(&f, None).await.layer(cluster.clone());
        for i in 0..60 {
            let r = echo(&c, &format!("{i}")).await;
            assert_eq!(
                r.expect("every call succeeds").text,
                format!("{i}"),
                "{bind}"
            );
        }
        // Each first attempt on the failing instance is retried once, on the other (round
        // robin advances on retries too, so that may be every first attempt).
        let (bad, good) = (f[0].b.calls(), f[1].b.calls());
        assert_eq!(good, 60, "{bind}: every call ends on the live instance");
        assert_eq!(
            cluster.counters().retries as usize,
            bad,
            "{bind}: one retry per failure"
        );
        assert!(bad >= 30, "{bind}: {bad} first attempts on the failing one");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_while_an_instance_is_killed_mid_way() {
    let mut f = fleet("tcp://127.0.0.1:0", 2).await;
    let cluster = Cluster::new(Policy::failover(2).idempotent());
    let c = client_of(&f, None).await.layer(cluster.clone());
    for i in 0..40 {
        echo(&c, &format!("{i}")).await.expect("before the kill");
    }
    // Killed: its connections close; calls in flight on it fail and are retried elsewhere.
    if let Some(s) = f[0].server.take() {
        s.shutdown(Duration::from_millis(10)).await;
    }
    for i in 0..40 {
        echo(&c, &format!("after {i}"))
            .await
            .expect("after the kill");
    }
    assert!(f[1].b.calls() >= 60, "the survivor took the rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_may_have_run_is_retried_only_when_idempotent() {
    for bind in TRANSPORTS {
        let f = fleet(bind, 2).await;
        // Both slow: every attempt runs out of its own time limit after it was written.
        for i in &f {
            i.b.delay_ms.store(3_000, Ordering::SeqCst);
        }
        let policy = Policy::failover(1).attempt_timeout(Duration::from_millis(300));
        let cluster = Cluster::new(policy);
        let c = client_of(&f, None).await.layer(cluster.clone());
        let st = echo(&c, "once").await.expect_err("times out");
        assert_eq!(st.code(), Code::DeadlineExceeded, "{bind}");
        assert_eq!(
            cluster.counters().retries,
            0,
            "{bind}: not idempotent: no retry"
        );
        let st = c
            .request("test.Cluster", "Echo")
            .idempotent()
            .call::<_, Msg>(&msg("twice"))
            .await
            .expect_err("times out twice");
        assert_eq!(st.code(), Code::DeadlineExceeded, "{bind}");
        assert_eq!(cluster.counters().retries, 1, "{bind}: idempotent: retried");
        eventually("both instances saw it", || {
            f[0].b.calls() + f[1].b.calls() == 3
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failfast_reports_at_once() {
    for bind in TRANSPORTS {
        let f = fleet(bind, 1).await;
        f[0].b.failing.store(1, Ordering::SeqCst);
        let cluster = Cluster::new(Policy::failfast());
        let c = client_of(&f, None).await.layer(cluster.clone());
        let st = echo(&c, "x").await.expect_err("fails");
        assert_eq!(st.code(), Code::Unavailable, "{bind}");
        assert_eq!(f[0].b.calls(), 1, "{bind}: one try");
        assert_eq!(cluster.counters().retries, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failtry_retries_the_same_instance() {
    for bind in TRANSPORTS {
        let f = fleet(bind, 2).await;
        for i in &f {
            i.b.fail_next.store(2, Ordering::SeqCst);
        }
        let cluster = Cluster::new(Policy::failtry(3));
        let c = client_of(&f, None).await.layer(cluster.clone());
        echo(&c, "sticky").await.expect("third try succeeds");
        let mut calls = [f[0].b.calls(), f[1].b.calls()];
        calls.sort();
        assert_eq!(calls, [0, 3], "{bind}: all three tries on one instance");
        assert_eq!(cluster.counters().retries, 2, "{bind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_turns_an_error_into_an_empty_result() {
    for bind in TRANSPORTS {
        let f = fleet(bind, 1).await;
        f[0].b.failing.store(1, Ordering::SeqCst);
        let cluster = Cluster::new(Policy::failsafe());
        let c = client_of(&f, None).await.layer(cluster.clone());
        for codec in [Codec::Protobuf, Codec::Json] {
            let r: Msg = c
                .request("test.Cluster", "Echo")
                .codec(codec)
                .call(&msg("lost"))
                .await
                .expect("failsafe never fails");
            assert_eq!(r, Msg::default(), "{bind} {codec:?}");
        }
        assert_eq!(cluster.counters().failsafe, 2, "{bind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_sends_a_failed_oneway_call_again() {
    // The client starts before its server: the first oneway call cannot be sent.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("tcp://127.0.0.1:{port}");
    let cluster = Cluster::new(Policy::failback(20));
    let c = RpcClient::builder()
        .endpoint(&url)
        .start()
        .await
        .expect("client")
        .layer(cluster.clone());
    eventually("the first connection attempt failed", || {
        c.channel().live_instances() == 0
    })
    .await;
    let sent = c
        .request("test.Cluster", "Fire")
        .timeout(Duration::from_millis(200))
        .oneway(&msg("later"))
        .await;
    assert!(sent.is_ok(), "queued: {sent:?}");
    assert_eq!(cluster.counters().failback_queued, 1);
    let late = instance(&url).await;
    eventually("delivered in the background", || {
        late.b.fired.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("counted", || cluster.counters().failback_delivered == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_queue_is_bounded_and_counts_what_it_drops() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cluster = Cluster::new(Policy::failback(1)).failback_queue(2);
    let c = RpcClient::builder()
        .endpoint(&format!("tcp://127.0.0.1:{port}"))
        .start()
        .await
        .expect("client")
        .layer(cluster.clone());
    eventually("no connection", || c.channel().live_instances() == 0).await;
    let mut refused = 0;
    for i in 0..10 {
        let r = c
            .request("test.Cluster", "Fire")
            .oneway(&msg(&format!("{i}")))
            .await;
        refused += usize::from(r.is_err());
    }
    let n = cluster.counters();
    assert_eq!(n.failback_queued + n.failback_dropped, 10);
    assert_eq!(
        n.failback_dropped as usize, refused,
        "a dropped call reports its error"
    );
    assert!(
        n.failback_dropped >= 7,
        "at most the queue plus one in hand: {n:?}"
    );
    eventually("the queued ones fail their one retry", || {
        cluster.counters().failback_failed == n.failback_queued
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forking_takes_the_first_success_and_cancels_the_rest() {
    for bind in TRANSPORTS {
        let f = fleet(bind, 2).await;
        f[0].b.delay_ms.store(2_000, Ordering::SeqCst);
        let cluster = Cluster::new(Policy::forking(2));
        let c = client_of(&f, None).await.layer(cluster.clone());
        let t = Instant::now();
        echo(&c, "fast").await.expect("the fast one answers");
        assert!(
            t.elapsed() < Duration::from_millis(1_500),
            "{bind}: not the slow one"
        );
        // The slow instance counts its attempt when its server reads it, which on a busy
        // machine can be after the fast one has answered.
        eventually(&format!("{bind}: one attempt each"), || {
            (f[0].b.calls(), f[1].b.calls()) == (1, 1)
        })
        .await;
        assert_eq!(cluster.counters().hedges, 1, "{bind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_cuts_the_tail_of_a_slow_instance() {
    for bind in TRANSPORTS {
        let f = fleet(bind, 2).await;
        f[0].b.delay_ms.store(3_000, Ordering::SeqCst);
        let cluster = Cluster::new(Policy::hedging(HedgeDelay::Fixed(Duration::from_millis(
            50,
        ))));
        let c = client_of(&f, None).await.layer(cluster.clone());
        let mut slowest = Duration::ZERO;
        for i in 0..10 {
            let t = Instant::now();
            echo(&c, &format!("{i}")).await.expect("answered");
            slowest = slowest.max(t.elapsed());
        }
        assert!(
            slowest < Duration::from_millis(2_000),
            "{bind}: tail cut: {slowest:?}"
        );
        // Every first attempt that went to the slow one was hedged (round robin advances on
        // the hedges too, so that may be all of them).
        // (The slow instance counts an attempt when its server reads it.)
        let hedges = cluster.counters().hedges as usize;
        eventually(&format!("{bind}: one hedge per slow first attempt"), || {
            f[0].b.calls() == hedges
        })
        .await;
        assert!(hedges >= 1, "{bind}");
        assert_eq!(f[1].b.calls(), 10, "{bind}: every answer from the fast one");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_on_the_observed_p95_waits_about_as_long_as_a_usual_call() {
    let f = fleet("tcp://127.0.0.1:0", 2).await;
    let cluster = Cluster::new(Policy::hedging(HedgeDelay::P95 {
        floor: Duration::from_millis(1),
    }));
    let c = client_of(&f, None).await.layer(cluster.clone());
    // Fast calls teach the layer the method's p95 (well under a second here).
    for i in 0..40 {
        echo(&c, &format!("warm {i}")).await.expect("fast");
    }
    f[0].b.delay_ms.store(5_000, Ordering::SeqCst);
    let t = Instant::now();
    for i in 0..4 {
        echo(&c, &format!("{i}"))
            .await
            .expect("answered by the fast one");
    }
    assert!(
        t.elapsed() < Duration::from_millis(4_000),
        "hedged after the p95, not 5 s"
    );
    assert!(cluster.counters().hedges >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_stops_a_storm_against_a_failing_fleet() {
    for bind in TRANSPORTS {
        storm(bind).await;
    }
}

async fn storm(bind: &str) {
    let f = fleet(bind, 2).await;
    for i in &f {
        i.b.failing.store(1, Ordering::SeqCst);
    }
    let calls = 100;
    let unlimited = Cluster::new(Policy::failover(3)).retry_budget(RetryBudget::unlimited());
    let c = client_of(&f, None).await.layer(unlimited.clone());
    for i in 0..calls {
        assert!(echo(&c, &format!("{i}")).await.is_err());
    }
    assert_eq!(unlimited.counters().retries, 300, "no budget: every retry");

    let capped = Cluster::new(Policy::failover(3)).retry_budget(RetryBudget::new(0.1, 5));
    let c = client_of(&f, None).await.layer(capped.clone());
    for i in 0..calls {
        assert!(echo(&c, &format!("{i}")).await.is_err());
    }
    let n = capped.counters();
    // 5 tokens to start with, a tenth of one per call.
    assert!(n.retries <= 5 + 10 + 1, "capped: {n:?}");
    assert!(n.budget_refused > 0, "refusals counted: {n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_skips_half_opens_and_closes() {
    for bind in TRANSPORTS {
        breaker_cycle(bind).await;
    }
}

async fn breaker_cycle(bind: &str) {
    let f = fleet(bind, 2).await;
    f[0].b.failing.store(1, Ordering::SeqCst);
    // A cool-down long enough that the calls of each step fit in it on a busy machine.
    let c = client_of(&f, Some(Breaker::new(3, Duration::from_millis(1_500)))).await;
    let circuit_of_bad = |c: &RpcClient| {
        c.channel()
            .live_nodes()
            .into_iter()
            .find(|n| n.instance().endpoint().to_string() == f[0].url)
            .map(|n| n.circuit())
    };
    // Round robin: every other call fails until three in a row failed on the bad one.
    let mut failed = 0;
    for i in 0..6 {
        failed += usize::from(echo(&c, &format!("{i}")).await.is_err());
    }
    assert_eq!(failed, 3);
    assert_eq!(circuit_of_bad(&c), Some(Circuit::Open));
    // Open: skipped; everything goes to the good one.
    for i in 0..10 {
        echo(&c, &format!("skip {i}")).await.expect("the good one");
    }
    assert_eq!(f[0].b.calls(), 3, "no call to an open circuit");
    // Cool-down over: one probe. It fails: open again.
    eventually("half-open", || {
        circuit_of_bad(&c) == Some(Circuit::HalfOpen)
    })
    .await;
    let mut probe_failed = 0;
    for i in 0..4 {
        probe_failed += usize::from(echo(&c, &format!("probe {i}")).await.is_err());
    }
    assert_eq!((probe_failed, f[0].b.calls()), (1, 4), "exactly one probe");
    assert_eq!(circuit_of_bad(&c), Some(Circuit::Open));
    // Healed; the next probe succeeds and the circuit closes.
    f[0].b.failing.store(0, Ordering::SeqCst);
    eventually("half-open again", || {
        circuit_of_bad(&c) == Some(Circuit::HalfOpen)
    })
    .await;
    for i in 0..10 {
        echo(&c, &format!("healed {i}")).await.expect("all succeed");
    }
    assert_eq!(circuit_of_bad(&c), Some(Circuit::Closed));
    assert!(f[0].b.calls() >= 8, "round robin again");
}

/// A user's own layer: at most `max` calls, then `resource_exhausted`.
#[derive(Clone)]
struct RateLimit {
    max: usize,
    used: Arc<AtomicUsize>,
}

struct Limited<I> {
    inner: I,
    limit: RateLimit,
}

impl<I: Invoke> Invoke for Limited<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        if self.limit.used.fetch_add(1, Ordering::SeqCst) >= self.limit.max {
            return Err(Status::resource_exhausted("rate limit"));
        }
        self.inner.invoke(req).await
    }
}

impl<I: Invoke> ClientLayer<I> for RateLimit {
    type Invoke = Limited<I>;

    fn layer(self, inner: I) -> Limited<I> {
        Limited { inner, limit: self }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rate_limit_layer_rejects_calls() {
    let f = fleet("tcp://127.0.0.1:0", 1).await;
    let limit = RateLimit {
        max: 5,
        used: Arc::new(AtomicUsize::new(0)),
    };
    // Under the cluster layer: a rejected call (resource_exhausted) is not retried.
    let cluster = Cluster::new(Policy::failover(2));
    let c = client_of(&f, None)
        .await
        .layer(limit)
        .layer(cluster.clone());
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..8 {
        match echo(&c, &format!("{i}")).await {
            Ok(_) => ok += 1,
            Err(st) => {
                assert_eq!(st.code(), Code::ResourceExhausted);
                limited += 1;
            }
        }
    }
    assert_eq!((ok, limited), (5, 3));
    assert_eq!(f[0].b.calls(), 5);
    assert_eq!(cluster.counters().retries, 0, "a refusal is not retried");
}
