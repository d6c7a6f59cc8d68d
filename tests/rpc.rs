//! The RPC core end to end over TCP, UDP and WebSocket with both codecs, real sockets on
//! 127.0.0.1.

mod common;
mod rpc_common;

use common::{closed_by_peer, eventually, python_client, within, WAIT};
use qsocket::rpc::{Code, Codec, RpcClient, RpcServer, RpcServerConfig, Sent, Status};
use qsocket::session::Transport;
use rpc_common::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server(counters: &Arc<Counters>) -> RpcServer {
    RpcServer::builder(router(counters.clone()))
        .bind("tcp://127.0.0.1:0")
        .bind("udp://127.0.0.1:0")
        .bind("ws://127.0.0.1:0/rpc")
        .start()
        .await
        .expect("rpc server")
}

async fn client(url: &str, codec: Codec) -> RpcClient {
    RpcClient::builder()
        .endpoint(url)
        .codec(codec)
        .timeout(Duration::from_secs(20))
        .start()
        .await
        .expect("rpc client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_in_flight_on_one_session_every_transport_and_codec() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    for t in [Transport::Tcp, Transport::Ws, Transport::Udp] {
        for codec in [Codec::Protobuf, Codec::Json] {
            let url = server.endpoint(t).expect("bound").to_string();
            let c = client(&url, codec).await;
            let n = 10_000;
            let started = Instant::now();
            let calls = (0..n).map(|i| {
                let c = c.clone();
                async move {
                    let text = format!("call {i}");
                    let r: Result<EchoReply, Status> = c
                        .request("test.Echo", "Echo")
                        .timeout(Duration::from_secs(20))
                        .call(&req(&text))
                        .await;
                    (text, r)
                }
            });
            let results = within("10k calls", futures_util::future::join_all(calls)).await;
            let mut ok = 0;
            for (text, r) in results {
                match r {
                    Ok(reply) => {
                        assert_eq!(reply.text, text);
                        ok += 1;
                    }
                    // UDP may lose a datagram: that call, and only that, ends at its deadline.
                    Err(st) if t == Transport::Udp && st.code() == Code::DeadlineExceeded => {}
                    Err(st) => panic!("{t}/{codec:?}: {st}"),
                }
            }
            if t == Transport::Udp {
                assert!(ok >= n * 9 / 10, "udp answered {ok} of {n}");
            } else {
                assert_eq!(ok, n, "{t}/{codec:?}");
            }
            assert_eq!(c.in_flight(), 0, "pending table empty after all calls");
            eprintln!("{t}/{codec:?}: {n} calls in {:?}", started.elapsed());
            c.close().await;
        }
    }
    server.shutdown(Duration::from_secs(5)).await;
}

/// Requests queued on a TCP connection share one buffer up to 64 KiB: bodies from empty to
/// larger than that buffer, sent at once, all arrive whole and in their own calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_every_size_sent_at_once_share_buffers_and_arrive_whole() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Tcp).expect("bound").to_string();
    let c = client(&url, Codec::Protobuf).await;
    let calls = (0..300usize).map(|i| {
        let c = c.clone();
        async move {
            let text = "x".repeat(i * 997 % 70_000) + &i.to_string();
            let r: Result<EchoReply, Status> = c.call("test.Echo", "Echo", &req(&text)).await;
            (text, r)
        }
    });
    for (text, r) in within("300 calls", futures_util::future::join_all(calls)).await {
        assert_eq!(r.expect("answered").text, text);
    }
    assert_eq!(c.in_flight(), 0);
    c.close().await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_travel_expire_on_both_sides_and_past_ones_do_not_run() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let c = client(&url, Codec::Protobuf).await;

    // The server sees the caller's deadline as time remaining.
    let reply: EchoReply = c
        .request("test.Echo", "Echo")
        .timeout(Duration::from_secs(5))
        .call(&req("x"))
        .await
        .expect("call");
    assert!(
        (3_000..=5_000).contains(&reply.deadline_left_ms),
        "handler saw {} ms left",
        reply.deadline_left_ms
    );

    // Client side: the call ends at its deadline, and says the request may have run.
    let slow = EchoRequest {
        delay_ms: 2_000,
        ..req("slow")
    };
    let t0 = Instant::now();
    let err = c
        .request("test.Echo", "Echo")
        .timeout(Duration::from_millis(150))
        .call::<_, EchoReply>(&slow)
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    // Either side's timer may fire first: the client's (Maybe) or the server's answer (Yes).
    assert!(err.request_written(), "{:?}", err.sent());
    assert!(t0.elapsed() < Duration::from_millis(1_500));
    // Server side: the handler was stopped at the deadline, not run to the end.
    eventually("server drops the expired handler", || {
        counters.dropped.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(c.in_flight(), 0);
    c.close().await;
    server.shutdown(Duration::from_secs(5)).await;

    // A request whose deadline passes while it waits behind the in-flight limit never runs.
    let counters = Arc::new(Counters::default());
    let server = RpcServer::builder(router(counters.clone()))
        .bind("tcp://127.0.0.1:0")
        .max_in_flight(1)
        .start()
        .await
        .expect("server");
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let c = client(&url, Codec::Protobuf).await;
    let blocker = spawn_delayed(&c, "blocker", 600);
    eventually("blocker started", || {
        counters.started.load(Ordering::SeqCst) >= 1
    })
    .await;
    let late = c
        .request("test.Echo", "Echo")
        .timeout(Duration::from_millis(100))
        .call::<_, EchoReply>(&req("late"))
        .await;
    assert_eq!(late.expect_err("late").code(), Code::DeadlineExceeded);
    assert_eq!(
        within("blocker", blocker)
            .await
            .expect("join")
            .expect("ok")
            .text,
        "blocker"
    );
    // Give the server the time to see the late request; it must still not run it.
    let after: EchoReply = c
        .call("test.Echo", "Echo", &req("after"))
        .await
        .expect("after");
    assert_eq!(after.text, "after");
    assert_eq!(
        counters.started.load(Ordering::SeqCst),
        2,
        "blocker and after ran; late did not"
    );
    c.close().await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_calls_cancels_them_on_both_sides() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    for t in [Transport::Tcp, Transport::Ws, Transport::Udp] {
        let before = counters.dropped.load(Ordering::SeqCst);
        let url = server.endpoint(t).expect("bound").to_string();
        let c = client(&url, Codec::Protobuf).await;
        // Warm the connection so all 50 calls are in flight at once.
        let _: EchoReply = c
            .call("test.Echo", "Echo", &req("warm"))
            .await
            .expect("warm");
        let hang = EchoRequest {
            delay_ms: 60_000,
            ..req("hang")
        };
        let calls = (0..50).map(|_| c.call::<_, EchoReply>("test.Echo", "Echo", &hang));
        let all = futures_util::future::join_all(calls);
        // Let them start, then give up on all of them.
        let r = tokio::time::timeout(Duration::from_millis(300), all).await;
        assert!(r.is_err(), "the calls hang");
        assert_eq!(
            c.in_flight(),
            0,
            "{t}: dropped calls left the pending table"
        );
        eventually("server cancels the handlers", || {
            counters.dropped.load(Ordering::SeqCst) >= before + 50
        })
        .await;
        c.close().await;
    }
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_dies_fails_pending_calls_at_once() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let c = client(&url, Codec::Protobuf).await;
    let _: EchoReply = c
        .call("test.Echo", "Echo", &req("warm"))
        .await
        .expect("warm");
    let hang = EchoRequest {
        delay_ms: 60_000,
        ..req("hang")
    };
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            let hang = hang.clone();
            tokio::spawn(async move {
                c.request("test.Echo", "Echo")
                    .timeout(Duration::from_secs(60))
                    .call::<_, EchoReply>(&hang)
                    .await
            })
        })
        .collect();
    eventually("calls reach the server", || {
        counters.started.load(Ordering::SeqCst) >= 21
    })
    .await;
    let t0 = Instant::now();
    server.shutdown(Duration::from_millis(200)).await;
    for call in calls {
        let err = within("failed at once", call)
            .await
            .expect("join")
            .expect_err("fails");
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert_eq!(err.sent(), Sent::Maybe);
    }
    assert!(t0.elapsed() < WAIT, "well before the 60 s deadline");
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_panics_and_bad_bodies_get_statuses() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let c = client(&url, Codec::Json).await;
    let e = c
        .call::<_, EchoReply>("test.Echo", "Nope", &req("x"))
        .await
        .expect_err("unknown method");
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(
        e.message().contains("Nope") && e.message().contains("test.Echo"),
        "{e}"
    );
    assert_eq!(e.sent(), Sent::Yes);
    let e = c
        .call::<_, EchoReply>("no.Such", "Echo", &req("x"))
        .await
        .expect_err("unknown service");
    assert!(e.message().contains("no.Such"), "{e}");

    let boom = EchoRequest {
        panic: true,
        ..req("boom")
    };
    let e = c
        .call::<_, EchoReply>("test.Echo", "Echo", &boom)
        .await
        .expect_err("panic");
    assert_eq!(e.code(), Code::Internal);
    assert!(e.message().contains("asked to panic"), "{e}");
    // The session and the server live on.
    let ok: EchoReply = c
        .call("test.Echo", "Echo", &req("fine"))
        .await
        .expect("after panic");
    assert_eq!(ok.text, "fine");

    // A body the server cannot decode as the method's request type.
    let e = c
        .call::<_, EchoReply>("test.Echo", "Echo", &vec![1u8, 2, 3])
        .await
        .expect_err("wrong type");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("EchoRequest"), "{e}");

    // Oneway calls run without an answer.
    for _ in 0..5 {
        c.request("test.Echo", "Fire")
            .oneway(&req("f"))
            .await
            .expect("oneway");
    }
    eventually("oneway calls arrive", || {
        counters.oneway.load(Ordering::SeqCst) >= 5
    })
    .await;
    c.close().await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_too_large_for_a_datagram_fails_that_call_only() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Udp).expect("udp").to_string();
    let c = client(&url, Codec::Protobuf).await;
    let big = req(&"x".repeat(70_000));
    let e = c
        .call::<_, EchoReply>("test.Echo", "Echo", &big)
        .await
        .expect_err("too big");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert_eq!(e.sent(), Sent::No);
    let ok: EchoReply = c
        .call("test.Echo", "Echo", &req("small"))
        .await
        .expect("small");
    assert_eq!(ok.text, "small");
    c.close().await;
    server.shutdown(Duration::from_secs(5)).await;
}

/// Starts a call of `delay_ms` to `test.Echo/Echo` in its own task.
fn spawn_delayed(
    c: &RpcClient,
    text: &str,
    delay_ms: u64,
) -> tokio::task::JoinHandle<Result<EchoReply, Status>> {
    let c = c.clone();
    let r = EchoRequest {
        delay_ms,
        ..req(text)
    };
    tokio::spawn(async move { c.call::<_, EchoReply>("test.Echo", "Echo", &r).await })
}

/// A raw request frame (protocol version 1) for the malformed-input tests.
fn raw_request(id: u64, body: &[u8]) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    let h = qsocket::rpc::frame::Header {
        kind: qsocket::rpc::frame::kind::REQUEST,
        codec: 1,
        id,
        timeout_ms: 5_000,
        service: "test.Echo",
        method: "Echo",
        ..Default::default()
    };
    qsocket::rpc::frame::encode_frame(&mut buf, &h, &Default::default(), |b| {
        b.extend_from_slice(body);
        Ok::<_, ()>(())
    })
    .expect("encode");
    buf.to_vec()
}

async fn read_frame(s: &mut TcpStream) -> (u16, u64, Vec<u8>) {
    let mut head = [0u8; 28];
    within("response", s.read_exact(&mut head))
        .await
        .expect("read header");
    let status = u16::from_be_bytes([head[6], head[7]]);
    let id = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
    let rest =
        head[20] as usize + head[21] as usize + u16::from_be_bytes([head[22], head[23]]) as usize;
    let body_len = u32::from_be_bytes(head[24..28].try_into().expect("4 bytes")) as usize;
    let mut tail = vec![0u8; rest + body_len];
    within("response body", s.read_exact(&mut tail))
        .await
        .expect("read body");
    (status, id, tail[rest..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_and_others_keep_being_served() {
    let counters = Arc::new(Counters::default());
    let mut cfg = RpcServerConfig::default();
    cfg.limits.max_body = 64 * 1024;
    let server = RpcServer::builder(router(counters.clone()))
        .bind("tcp://127.0.0.1:0")
        .config(cfg)
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let url = format!("tcp://{addr}");
    let good = client(&url, Codec::Protobuf).await;

    let good_req = {
        use prost::Message;
        req("raw").encode_to_vec()
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut bad_magic = raw_request(1, &good_req);
    bad_magic[0] = b'X';
    cases.push(("bad magic", bad_magic));
    let mut bad_version = raw_request(1, &good_req);
    bad_version[2] = 99;
    cases.push(("bad version", bad_version));
    let mut oversized = raw_request(1, &good_req);
    oversized[24..28].copy_from_slice(&(1u32 << 30).to_be_bytes());
    cases.push(("oversized length", oversized));
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&bytes).await.expect("write");
        assert!(closed_by_peer(&mut s).await, "{what}: connection closed");
        let ok: EchoReply = good
            .call("test.Echo", "Echo", &req(what))
            .await
            .expect("others served");
        assert_eq!(ok.text, what);
    }

    // Truncated: half a frame, then EOF — the session ends, nothing runs.
    let started = counters.started.load(Ordering::SeqCst);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let whole = raw_request(7, &good_req);
    s.write_all(&whole[..whole.len() / 2]).await.expect("write");
    s.shutdown().await.expect("half close");
    assert!(closed_by_peer(&mut s).await);
    assert_eq!(counters.started.load(Ordering::SeqCst), started);

    // A garbage body in a well-formed frame: an invalid-argument answer, session kept.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&raw_request(9, &[0xff, 0xff, 0xff, 0x0f]))
        .await
        .expect("write");
    let (status, id, body) = read_frame(&mut s).await;
    assert_eq!((status, id), (Code::InvalidArgument as u16, 9));
    assert!(String::from_utf8_lossy(&body).contains("cannot decode"));
    s.write_all(&raw_request(10, &good_req))
        .await
        .expect("write");
    let (status, id, _) = read_frame(&mut s).await;
    assert_eq!((status, id), (0, 10), "same session still served");
    good.close().await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_replace_a_session_whose_peer_went_silent() {
    // A "server" that accepts and never answers anything.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let c = RpcClient::builder()
        .endpoint(&format!("tcp://{addr}"))
        .heartbeat(Duration::from_millis(50))
        .start()
        .await
        .expect("client");
    let (mut first, _) = within("first connection", silent.accept())
        .await
        .expect("accept");
    // The client sends heartbeats, gets no reply, closes, and reconnects.
    let mut got = Vec::new();
    within(
        "client gives up on the silent peer",
        first.read_to_end(&mut got),
    )
    .await
    .ok();
    assert!(!got.is_empty(), "heartbeats were sent");
    assert_eq!(&got[..2], b"QS");
    assert_eq!(got[3], qsocket::rpc::frame::kind::HEARTBEAT);
    let _second = within("reconnect", silent.accept())
        .await
        .expect("accept again");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_written_from_protocol_md_alone() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/rpc_client.py");
    let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
    python_client(
        "python client",
        script,
        &[&ip, &port],
        "python rpc client: ok",
    )
    .await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_does_not_hold_up_others_on_the_same_session() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let c = client(&url, Codec::Protobuf).await;
    let slow = spawn_delayed(&c, "slow", 3_000);
    eventually("slow call started", || {
        counters.started.load(Ordering::SeqCst) >= 1
    })
    .await;
    for i in 0..100 {
        let r: EchoReply = c
            .call("test.Echo", "Echo", &req(&format!("fast {i}")))
            .await
            .expect("fast");
        assert_eq!(r.text, format!("fast {i}"));
    }
    assert!(
        !slow.is_finished(),
        "all fast calls finished while the slow one still runs"
    );
    assert_eq!(
        within("slow", slow).await.expect("join").expect("ok").text,
        "slow"
    );
    c.close().await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_call_waits_for_a_slot_up_to_its_deadline_and_the_slot_comes_back() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Udp).expect("udp").to_string();
    let c = RpcClient::builder()
        .endpoint(&url)
        .udp_max_in_flight(1)
        .timeout(Duration::from_secs(20))
        .start()
        .await
        .expect("rpc client");
    c.ready().await.expect("connected");
    // The one slot is taken by a call that takes 1.5 s.
    let slow = spawn_delayed(&c, "slow", 1_500);
    eventually("slow call started", || {
        counters.started.load(Ordering::SeqCst) >= 1
    })
    .await;
    // A call that cannot get the slot before its deadline fails unsent, and only it.
    let r: Result<EchoReply, Status> = c
        .request("test.Echo", "Echo")
        .timeout(Duration::from_millis(100))
        .call(&req("no slot"))
        .await;
    let st = r.expect_err("no slot within 100 ms");
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    assert_eq!(st.sent(), Sent::No, "{st:?}");
    assert!(st.message().contains("udp call slot"), "{st:?}");
    // A call that may wait gets the slot once the slow call ends.
    let after: EchoReply = c
        .call("test.Echo", "Echo", &req("after"))
        .await
        .expect("the slot came back");
    assert_eq!(after.text, "after");
    assert_eq!(
        within("slow", slow).await.expect("join").expect("ok").text,
        "slow"
    );
    c.close().await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_inside_a_handler_inherit_its_deadline_and_codecs_mix() {
    use qsocket::rpc::{CallContext, Router, Service};
    // Backend: the echo service.
    let counters = Arc::new(Counters::default());
    let backend = server(&counters).await;
    let backend_url = backend.endpoint(Transport::Tcp).expect("tcp").to_string();
    let inner = client(&backend_url, Codec::Protobuf).await; // default timeout 20 s
                                                             // Front: relays to the backend without setting any deadline of its own.
    let relay = Router::new().add_service(Service::new("test.Relay").unary(
        "Relay",
        move |r: EchoRequest, _ctx: CallContext| {
            let inner = inner.clone();
            async move { inner.call::<_, EchoReply>("test.Echo", "Echo", &r).await }
        },
    ));
    let front = RpcServer::builder(relay)
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("front");
    let c = client(
        &front.endpoint(Transport::Tcp).expect("tcp").to_string(),
        Codec::Protobuf,
    )
    .await;
    for codec in [Codec::Protobuf, Codec::Json] {
        let r: EchoReply = c
            .request("test.Relay", "Relay")
            .timeout(Duration::from_secs(2))
            .codec(codec)
            .call(&req("relayed"))
            .await
            .expect("relay");
        assert_eq!(r.text, "relayed");
        assert!(
            r.deadline_left_ms > 0 && r.deadline_left_ms <= 2_000,
            "the backend saw the caller's 2 s deadline, not the relay client's 20 s: {} ms",
            r.deadline_left_ms
        );
    }
    c.close().await;
    front.shutdown(Duration::from_secs(5)).await;
    backend.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_reaches_the_client_while_calls_are_still_in_flight() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let c = client(&url, Codec::Protobuf).await;
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            let r = EchoRequest {
                delay_ms: 6_000,
                ..req("slow")
            };
            c.call::<_, EchoReply>("test.Echo", "Echo", &r).await
        })
    };
    eventually("slow call reaches the server", || {
        counters.started.load(Ordering::SeqCst) >= 1
    })
    .await;
    let shutdown = tokio::spawn(async move { server.shutdown(Duration::from_secs(10)).await });
    // Once the GOAWAY is in, new calls are not sent to that server: they fail before being
    // written. That must happen while the slow call is still running, not after it.
    within("goaway seen by the client", async {
        loop {
            let r = c
                .request("test.Echo", "Echo")
                .timeout(Duration::from_millis(200))
                .call::<_, EchoReply>(&req("new"))
                .await;
            if let Err(e) = r {
                if e.code() == Code::Unavailable && e.sent() == Sent::No {
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        !slow.is_finished(),
        "goaway came before the call in flight ended"
    );
    let r = within("slow call", slow)
        .await
        .expect("join")
        .expect("finished");
    assert_eq!(r.text, "slow");
    within("shutdown", shutdown).await.expect("join");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_calls_in_flight_and_sends_goaway() {
    let counters = Arc::new(Counters::default());
    let server = server(&counters).await;
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let c = client(&url, Codec::Protobuf).await;
    let _: EchoReply = c
        .call("test.Echo", "Echo", &req("warm"))
        .await
        .expect("warm");
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let r = EchoRequest {
                    delay_ms: 300,
                    ..req(&format!("in flight {i}"))
                };
                c.call::<_, EchoReply>("test.Echo", "Echo", &r).await
            })
        })
        .collect();
    eventually("calls reach the server", || {
        counters.started.load(Ordering::SeqCst) >= 21
    })
    .await;
    server.shutdown(Duration::from_secs(10)).await;
    for (i, call) in calls.into_iter().enumerate() {
        let r = within("call", call)
            .await
            .expect("join")
            .expect("finished during shutdown");
        assert_eq!(r.text, format!("in flight {i}"));
    }
    // After the goaway no new call goes to that server.
    let e = c
        .request("test.Echo", "Echo")
        .timeout(Duration::from_millis(300))
        .call::<_, EchoReply>(&req("too late"))
        .await
        .expect_err("server gone");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert_eq!(e.sent(), Sent::No);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_regressions_panics_udp_replies_and_shutdown() {
    use qsocket::rpc::{CallContext, Router, Service};
    let router = Router::new().add_service(
        Service::new("r.R")
            // Panics before it returns its future.
            .unary("Eager", |s: String, _ctx: CallContext| {
                if s == "boom" {
                    panic!("eager panic");
                }
                async move { Ok::<_, Status>(s) }
            })
            // A big reply from a handler that does not finish on its first poll.
            .unary("BigLater", |n: u64, _ctx: CallContext| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, Status>("x".repeat(n as usize))
            })
            .unary("Slow", |ms: u64, _ctx: CallContext| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Status>(ms)
            })
            .unary("Forever", |_: u64, _ctx: CallContext| async move {
                std::future::pending::<()>().await;
                Ok::<_, Status>(0u64)
            }),
    );
    let mut cfg = RpcServerConfig::default();
    cfg.session.session_timeout = None; // no timer to rescue a stuck drain
    let server = RpcServer::builder(router)
        .bind("tcp://127.0.0.1:0")
        .bind("udp://127.0.0.1:0")
        .config(cfg.max_in_flight(1))
        .start()
        .await
        .expect("server");
    let tcp = client(
        &server.endpoint(Transport::Tcp).expect("tcp").to_string(),
        Codec::Protobuf,
    )
    .await;
    let udp = client(
        &server.endpoint(Transport::Udp).expect("udp").to_string(),
        Codec::Protobuf,
    )
    .await;

    // A panic before the future exists: internal for that call, the session lives on.
    let e = tcp
        .call::<_, String>("r.R", "Eager", &"boom".to_string())
        .await
        .expect_err("panic");
    assert_eq!(e.code(), Code::Internal, "{e}");
    let ok: String = tcp
        .call("r.R", "Eager", &"fine".to_string())
        .await
        .expect("same session");
    assert_eq!(ok, "fine");

    // Over UDP, a parked handler's oversized reply is answered resource_exhausted, at once.
    let t0 = Instant::now();
    let e = udp
        .request("r.R", "BigLater")
        .timeout(Duration::from_secs(10))
        .call::<_, String>(&100_000u64)
        .await
        .expect_err("too big for a datagram");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // Graceful shutdown answers requests already read (queued behind max_in_flight = 1).
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let c = tcp.clone();
            tokio::spawn(async move { c.call::<_, u64>("r.R", "Slow", &200u64).await })
        })
        .collect();
    // Let them reach the server (written on the client side, then read by the server).
    eventually("five calls pending", || tcp.in_flight() == 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(10)));
    for call in calls {
        assert_eq!(
            within("answered", call)
                .await
                .expect("join")
                .expect("answered"),
            200
        );
    }
    within("shutdown", shutdown).await.expect("join");
    tcp.close().await;
    udp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_shutdown_ends_a_session_stuck_in_a_handler() {
    use qsocket::rpc::{CallContext, Router, Service};
    let router = Router::new().add_service(Service::new("r.R").unary(
        "Forever",
        |_: u64, _ctx: CallContext| async move {
            std::future::pending::<()>().await;
            Ok::<_, Status>(0u64)
        },
    ));
    let mut cfg = RpcServerConfig::default();
    cfg.session.session_timeout = None;
    let server = RpcServer::builder(router)
        .bind("tcp://127.0.0.1:0")
        .config(cfg)
        .start()
        .await
        .expect("server");
    let c = client(
        &server.endpoint(Transport::Tcp).expect("tcp").to_string(),
        Codec::Protobuf,
    )
    .await;
    let call = {
        let c = c.clone();
        tokio::spawn(async move {
            c.request("r.R", "Forever")
                .timeout(Duration::from_secs(3600))
                .call::<_, u64>(&0u64)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    within(
        "shutdown ends after its grace period",
        server.shutdown(Duration::from_millis(200)),
    )
    .await;
    let e = within("call fails", call)
        .await
        .expect("join")
        .expect_err("server gone");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_handler_does_not_hold_up_other_calls_on_its_connection() {
    use qsocket::rpc::{current_deadline, CallContext, Router, Service};
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = started.clone();
    let svc = Service::new("t.Heavy")
        // Blocks its thread for a while, as CPU-heavy work does.
        .unary_spawned("Block", move |ms: u64, _ctx: CallContext| {
            let s = s.clone();
            async move {
                s.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(ms));
                Ok::<_, Status>(ms)
            }
        })
        .unary_spawned("Panic", |_: u64, _ctx: CallContext| async move {
            if true {
                panic!("boom");
            }
            Ok::<u64, Status>(0)
        })
        // Calls made inside a spawned handler still inherit its deadline.
        .unary_spawned("Deadline", |_: u64, ctx: CallContext| async move {
            Ok::<_, Status>(current_deadline() == ctx.deadline() && ctx.deadline().is_some())
        })
        .unary("Fast", |x: u64, _ctx: CallContext| async move {
            Ok::<_, Status>(x)
        });
    let server = RpcServer::builder(Router::new().add_service(svc))
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let c = client(&url, Codec::Protobuf).await;

    let heavy = {
        let c = c.clone();
        tokio::spawn(async move { c.call::<u64, u64>("t.Heavy", "Block", &1500).await })
    };
    let s = started.clone();
    eventually("heavy handler running", move || s.load(Ordering::SeqCst)).await;
    let fast: u64 = within(
        "fast call beside a blocking one",
        c.call("t.Heavy", "Fast", &7),
    )
    .await
    .expect("fast");
    assert_eq!(fast, 7);
    assert!(
        !heavy.is_finished(),
        "the fast call did not wait for the heavy one"
    );
    assert_eq!(
        within("heavy", heavy).await.expect("join").expect("heavy"),
        1500
    );

    let e = c
        .call::<u64, u64>("t.Heavy", "Panic", &0)
        .await
        .expect_err("panicked");
    assert_eq!(e.code(), Code::Internal, "{e}");
    assert!(e.message().contains("boom"), "{e}");
    let inherited: bool = c.call("t.Heavy", "Deadline", &0).await.expect("deadline");
    assert!(inherited, "the spawned handler sees its call's deadline");
    c.close().await;
    server.shutdown(Duration::from_secs(5)).await;
}

/// A plain Rust type (no protobuf): carried by `Serde<T>`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Point {
    x: i64,
    label: String,
    tags: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messagepack_carries_plain_types_and_protobuf_messages_on_every_transport() {
    use qsocket::rpc::{CallContext, Router, Serde, Service};
    let router = Router::new().add_service(
        Service::new("test.Geo")
            .unary("Move", |p: Serde<Point>, _ctx: CallContext| async move {
                let Serde(mut p) = p;
                p.x += 1;
                Ok::<_, Status>(Serde(p))
            })
            .unary("Echo", |r: EchoRequest, _ctx: CallContext| async move {
                Ok::<_, Status>(EchoReply {
                    text: r.text,
                    deadline_left_ms: 0,
                })
            }),
    );
    let server = RpcServer::builder(router)
        .bind("tcp://127.0.0.1:0")
        .bind("udp://127.0.0.1:0")
        .bind("ws://127.0.0.1:0/rpc")
        .start()
        .await
        .expect("server");
    let p = Point {
        x: 41,
        label: "here".into(),
        tags: vec!["a".into(), "b".into()],
    };
    for ep in server.local_endpoints() {
        let url = ep.to_string();
        // The client's default codec (protobuf) is not spoken by `Serde<Point>`: MessagePack,
        // its first, is used.
        let c = client(&url, Codec::Protobuf).await;
        let Serde(moved): Serde<Point> = c
            .call("test.Geo", "Move", &Serde(p.clone()))
            .await
            .expect("msgpack");
        assert_eq!(moved.x, 42, "{url}");
        assert_eq!((moved.label.as_str(), moved.tags.len()), ("here", 2));
        let Serde(moved): Serde<Point> = c
            .request("test.Geo", "Move")
            .codec(Codec::Json)
            .call(&Serde(p.clone()))
            .await
            .expect("json");
        assert_eq!(moved.x, 42, "{url}");
        let st = c
            .request("test.Geo", "Move")
            .codec(Codec::Protobuf)
            .call::<_, Serde<Point>>(&Serde(p.clone()))
            .await
            .expect_err("no protobuf for a plain type");
        assert_eq!(st.code(), Code::InvalidArgument, "{url}: {st}");
        // A protobuf message speaks MessagePack too (through its serde derives).
        let r: EchoReply = c
            .request("test.Geo", "Echo")
            .codec(Codec::MsgPack)
            .call(&req("packed"))
            .await
            .expect("msgpack for a prost message");
        assert_eq!(r.text, "packed", "{url}");
    }
    // On the wire: a map keyed by field name, which any MessagePack library reads.
    let mut buf = bytes::BytesMut::new();
    qsocket::rpc::Message::encode_body(&Serde(p), Codec::MsgPack, &mut buf).expect("encode");
    assert_eq!(buf[0], 0x83, "a fixmap of three entries");
    let v: std::collections::BTreeMap<String, serde_json::Value> =
        rmp_serde::from_slice(&buf).expect("a map by name");
    let keys: Vec<&str> = v.keys().map(String::as_str).collect();
    assert_eq!(keys, ["label", "tags", "x"]);
    assert_eq!(v["x"], serde_json::json!(41));
}
