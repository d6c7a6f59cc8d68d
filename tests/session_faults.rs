//! Timers, bad input, faults, shutdown and reconnect, with real sockets on 127.0.0.1.

mod common;

use bytes::Bytes;
use common::*;
use qsocket::session::{Backoff, Client, Server, SessionConfig, Transport};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn closes(e: &[Ev]) -> usize {
    e.iter().filter(|e| matches!(e, Ev::Close(_))).count()
}

/// A length-delimited frame.
fn frame(p: &[u8]) -> Vec<u8> {
    let mut v = (p.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(p);
    v
}

/// Sends one frame on a raw TCP stream and reads its echo.
async fn raw_echo(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(&frame(payload)).await.expect("write");
    let mut got = vec![0u8; 4 + payload.len()];
    within("raw echo", s.read_exact(&mut got))
        .await
        .expect("read echo");
    assert_eq!(got, frame(payload));
}

async fn tcp_server(events: &Events, cfg: SessionConfig) -> (Server, SocketAddr) {
    let server = Server::builder(codec(), echo_factory(events))
        .bind("tcp://127.0.0.1:0")
        .config(cfg)
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    (server, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_every_period() {
    let events = Events::default();
    let cfg = SessionConfig::default().cron_period(Some(Duration::from_millis(30)));
    let (server, addr) = tcp_server(&events, cfg).await;
    let _conn = TcpStream::connect(addr).await.expect("connect");
    events
        .wait_until("at least 5 cron ticks", |e| {
            e.iter().filter(|e| matches!(e, Ev::Cron(_))).count() >= 5
        })
        .await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_times_out_and_active_ones_do_not() {
    let events = Events::default();
    let cfg = SessionConfig::default().session_timeout(Some(Duration::from_millis(300)));
    let (server, addr) = tcp_server(&events, cfg).await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    assert!(closed_by_peer(&mut idle).await);
    events
        .wait_until("timeout reported, then closed", |e| {
            e.iter()
                .any(|e| matches!(e, Ev::Error(_, m) if m.contains("timed out")))
                && closes(e) == 1
        })
        .await;
    // A session that keeps talking stays open well past the timeout.
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..12 {
        raw_echo(&mut busy, b"ping").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        closes(&events.snapshot()),
        1,
        "the busy session is still open"
    );
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_the_sending_session() {
    let events = Events::default();
    let (server, addr) = tcp_server(&events, SessionConfig::default()).await;
    let mut good = TcpStream::connect(addr).await.expect("connect");
    raw_echo(&mut good, b"hello").await;
    // A length prefix far above the codec's 1 MiB limit: a decode error.
    let mut bad = TcpStream::connect(addr).await.expect("connect");
    bad.write_all(&[0xff; 64]).await.expect("write garbage");
    assert!(closed_by_peer(&mut bad).await);
    events
        .wait_until("decode error reported and the bad session closed", |e| {
            e.iter()
                .any(|e| matches!(e, Ev::Error(_, m) if m.contains("decode")))
                && closes(e) == 1
        })
        .await;
    raw_echo(&mut good, b"still here").await;
    eventually("the bad session's slot is released", || {
        server.session_count() == 1
    })
    .await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_before_it_is_buffered() {
    let events = Events::default();
    let cfg = SessionConfig::default().max_frame_len(4096);
    let (server, addr) = tcp_server(&events, cfg).await;
    let mut good = TcpStream::connect(addr).await.expect("connect");
    let mut big = TcpStream::connect(addr).await.expect("connect");
    // Announce 500 KB (within the codec's limit) and trickle more than max_frame_len.
    big.write_all(&(500_000u32).to_be_bytes())
        .await
        .expect("write");
    let chunk = vec![7u8; 1024];
    for _ in 0..8 {
        if big.write_all(&chunk).await.is_err() {
            break;
        }
    }
    assert!(closed_by_peer(&mut big).await);
    events
        .wait_until("frame too large", |e| {
            e.iter()
                .any(|e| matches!(e, Ev::Error(_, m) if m.contains("frame too large")))
        })
        .await;
    raw_echo(&mut good, b"fine").await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frame_that_stalls_hits_the_read_timeout() {
    let events = Events::default();
    let cfg = SessionConfig::default().read_timeout(Some(Duration::from_millis(200)));
    let (server, addr) = tcp_server(&events, cfg).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(&frame(b"complete")[..6])
        .await
        .expect("write half");
    assert!(closed_by_peer(&mut slow).await);
    events
        .wait_until("read timeout", |e| {
            e.iter()
                .any(|e| matches!(e, Ev::Error(_, m) if m.contains("read timed out")))
        })
        .await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_frame_before_eof_is_delivered_and_reset_is_survived() {
    let events = Events::default();
    let (server, addr) = tcp_server(&events, SessionConfig::default()).await;
    // Write a frame and close at once: the frame must still reach on_message.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&frame(b"last words")).await.expect("write");
    drop(s);
    events
        .wait_until("last frame delivered before close", |e| {
            let msg = e
                .iter()
                .position(|e| matches!(e, Ev::Msg(_, m) if &m[..] == b"last words"));
            let close = e.iter().position(|e| matches!(e, Ev::Close(_)));
            matches!((msg, close), (Some(m), Some(c)) if m < c)
        })
        .await;
    // A reset in the middle of a frame closes that session only.
    let r = TcpStream::connect(addr).await.expect("connect");
    r.set_zero_linger().expect("linger");
    let mut r = r;
    r.write_all(&frame(b"cut")[..5]).await.expect("write");
    drop(r);
    events
        .wait_until("two sessions closed", |e| closes(e) == 2)
        .await;
    let mut good = TcpStream::connect(addr).await.expect("connect");
    raw_echo(&mut good, b"ok").await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_keep_a_session_alive_and_a_silent_peer_is_closed() {
    let events = Events::default();
    // A session timeout of ten ping periods: generous for a busy CI machine, still short for
    // the silent peer.
    let cfg = SessionConfig::default()
        .ws_ping_period(Duration::from_millis(100))
        .session_timeout(Some(Duration::from_millis(1000)));
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("ws://127.0.0.1:0/ws")
        .config(cfg.clone())
        .start()
        .await
        .expect("server");
    let url = server.endpoint(Transport::Ws).expect("ws").to_string();

    // A qsocket client reads all the time, so its library answers every ping.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::builder(&url, codec(), move || Forward(tx.clone()))
        .start()
        .await
        .expect("client");
    let s = within("ws session", client.session()).await.expect("live");
    // Quiet for several timeouts: only pings and pongs flow.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!s.is_closed(), "pongs kept the session alive");
    s.send(Bytes::from_static(b"after the quiet"))
        .await
        .expect("send");
    assert_eq!(
        &within("echo", rx.recv()).await.expect("echo")[..],
        b"after the quiet"
    );
    assert_eq!(closes(&events.snapshot()), 0);

    // A peer that completes the upgrade and then never reads never answers a ping.
    let tcp = TcpStream::connect(server.local_addr(Transport::Ws).expect("ws"))
        .await
        .expect("connect");
    let (silent, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .expect("ws connect");
    events
        .wait_until("silent peer closed after the timeout", |e| {
            e.iter()
                .any(|e| matches!(e, Ev::Error(_, m) if m.contains("timed out")))
                && closes(e) == 1
        })
        .await;
    drop(silent);
    assert!(!s.is_closed());
    client.close(Duration::from_secs(5)).await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_garbage_and_wrong_path_are_refused() {
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("ws://127.0.0.1:0/ws")
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Ws).expect("ws");

    // Wrong path: 404, no session.
    let wrong = format!("ws://{addr}/nope");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let Err(err) = tokio_tungstenite::client_async(wrong.as_str(), tcp).await else {
        panic!("a wrong path must be refused");
    };
    assert!(err.to_string().contains("404"), "{err}");

    // A good session next to a bad one.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::builder(&format!("ws://{addr}/ws"), codec(), move || {
        Forward(tx.clone())
    })
    .start()
    .await
    .expect("client");
    let s = within("ws session", client.session()).await.expect("live");

    // Upgrade by hand, then send bytes that are no WebSocket frame (unmasked, reserved opcode).
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    raw.write_all(req.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("upgrade response", raw.read_exact(&mut byte))
            .await
            .expect("read");
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains("101"));
    raw.write_all(&[0x8f, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .expect("garbage");
    assert!(closed_by_peer(&mut raw).await);
    events
        .wait_until("websocket error reported", |e| {
            e.iter()
                .any(|e| matches!(e, Ev::Error(_, m) if m.contains("websocket")))
                && closes(e) == 1
        })
        .await;
    s.send(Bytes::from_static(b"unaffected"))
        .await
        .expect("send");
    assert_eq!(
        &within("echo", rx.recv()).await.expect("echo")[..],
        b"unaffected"
    );
    client.close(Duration::from_secs(5)).await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_queued_writes_first() {
    // The server keeps each session's handle; the test queues writes on it, then shuts down.
    struct Keep(Arc<Mutex<Vec<qsocket::session::Session<Bytes>>>>);
    impl qsocket::session::EventListener for Keep {
        type In = bytes::BytesMut;
        type Out = Bytes;
        async fn on_open(
            &mut self,
            s: &qsocket::session::Session<Bytes>,
        ) -> Result<(), qsocket::Error> {
            self.0.lock().expect("lock").push(s.clone());
            Ok(())
        }
    }
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = kept.clone();
    let server = Server::builder(codec(), move || Keep(k.clone()))
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    let session = within("server session", async {
        loop {
            if let Some(s) = kept.lock().expect("lock").first().cloned() {
                return s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    const N: usize = 1000;
    for i in 0..N {
        session
            .try_send(Bytes::from(format!("queued {i:04}")))
            .expect("queue has room");
    }
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(10)));
    let mut all = Vec::new();
    within("read to EOF", raw.read_to_end(&mut all))
        .await
        .expect("read");
    let mut got = 0;
    let mut rest = &all[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        assert_eq!(&rest[4..4 + len], format!("queued {got:04}").as_bytes());
        rest = &rest[4 + len..];
        got += 1;
    }
    assert_eq!(got, N, "every queued write arrived before the close");
    within("shutdown returns", shutdown).await.expect("join");
    assert!(matches!(
        session.send(Bytes::from_static(b"late")).await,
        Err(qsocket::Error::SessionClosed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_the_server_restarts() {
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::builder(&format!("tcp://{addr}"), codec(), move || {
        Forward(tx.clone())
    })
    .backoff(
        Backoff::default()
            .initial(Duration::from_millis(20))
            .max(Duration::from_millis(200))
            .max_attempts(None),
    )
    .start()
    .await
    .expect("client");
    let first = within("first session", client.session())
        .await
        .expect("live");
    first.send(Bytes::from_static(b"one")).await.expect("send");
    assert_eq!(&within("echo", rx.recv()).await.expect("echo")[..], b"one");

    server.shutdown(Duration::from_secs(5)).await;
    within("client notices", first.closed()).await;

    // Same port again (the OS may hold it briefly; retry the bind).
    let server = within("rebind", async {
        loop {
            match Server::builder(codec(), echo_factory(&events))
                .bind(&format!("tcp://{addr}"))
                .start()
                .await
            {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    let second = within("reconnected", async {
        loop {
            let s = client.session().await.expect("client alive");
            if s.id() != first.id() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    second.send(Bytes::from_static(b"two")).await.expect("send");
    assert_eq!(&within("echo", rx.recv()).await.expect("echo")[..], b"two");
    client.close(Duration::from_secs(5)).await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gives_up_after_its_attempt_limit() {
    // A port nothing listens on: bind, read the port, close.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let client = Client::builder(&format!("tcp://{addr}"), codec(), move || {
        Forward(tx.clone())
    })
    .sessions(3)
    .backoff(
        Backoff::default()
            .initial(Duration::from_millis(5))
            .max(Duration::from_millis(20))
            .max_attempts(Some(3)),
    )
    .start()
    .await
    .expect("client");
    let r = within("gives up", client.session()).await;
    assert!(matches!(r, Err(qsocket::Error::ClientClosed)), "{r:?}");
}

/// A server that closes every connection at once, after sending `greeting` if there is one;
/// returns its address and how many connections it accepted.
async fn short_lived_server(
    greeting: Option<&'static [u8]>,
) -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(g) = greeting {
                let _ = s.write_all(&frame(g)).await;
            }
            drop(s);
        }
    });
    (addr, accepted, task)
}

/// A one-session client of `addr` with this backoff.
async fn client_with(addr: SocketAddr, backoff: Backoff) -> Client<Bytes> {
    let (tx, _rx) = mpsc::unbounded_channel();
    Client::builder(&format!("tcp://{addr}"), codec(), move || {
        Forward(tx.clone())
    })
    .backoff(backoff)
    .start()
    .await
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_limit_counts_sessions_a_server_drops_at_once() {
    let (addr, accepted, server) = short_lived_server(None).await;
    let backoff = Backoff::default()
        .initial(Duration::from_millis(5))
        .max(Duration::from_secs(5))
        .max_attempts(Some(3));
    let client = client_with(addr, backoff).await;
    within("gives up", async {
        while !matches!(client.session().await, Err(qsocket::Error::ClientClosed)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "three attempts, then no more"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_limit_does_not_count_short_sessions_that_received_data() {
    // Short but healthy sessions: the server greets each connection, then closes it.
    let (addr, accepted, server) = short_lived_server(Some(b"hello")).await;
    let backoff = Backoff::default()
        .initial(Duration::from_millis(5))
        .max(Duration::from_millis(50))
        .max_attempts(Some(2));
    let client = client_with(addr, backoff).await;
    eventually("keeps reconnecting past the attempt limit", move || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 5
    })
    .await;
    client.close(Duration::from_secs(5)).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limit_refuses_extra_connections() {
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tcp://127.0.0.1:0")
        .max_sessions(2)
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let mut a = TcpStream::connect(addr).await.expect("a");
    let mut b = TcpStream::connect(addr).await.expect("b");
    raw_echo(&mut a, b"a").await;
    raw_echo(&mut b, b"b").await;
    let mut c = TcpStream::connect(addr).await.expect("c");
    assert!(closed_by_peer(&mut c).await, "third connection refused");
    raw_echo(&mut a, b"a again").await;
    assert_eq!(server.session_count(), 2);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_trickled_in_byte_by_byte_still_hits_the_read_timeout() {
    let events = Events::default();
    let cfg = SessionConfig::default().read_timeout(Some(Duration::from_millis(300)));
    let (server, addr) = tcp_server(&events, cfg).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(&1000u32.to_be_bytes())
        .await
        .expect("length");
    // One byte every 50 ms: each read is quick, the frame never completes.
    let trickle = async {
        for _ in 0..200 {
            if slow.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    within("the server gives up on the frame", trickle).await;
    events
        .wait_until("read timeout", |e| {
            e.iter()
                .any(|e| matches!(e, Ev::Error(_, m) if m.contains("read timed out")))
        })
        .await;
    server.shutdown(Duration::from_secs(5)).await;
}

/// A listener whose `on_open` waits for the test's go-ahead, then accepts or refuses; it logs
/// the order of its callbacks and echoes messages.
struct Gated {
    log: Arc<std::sync::Mutex<Vec<&'static str>>>,
    gate: Arc<tokio::sync::Semaphore>,
    accept: bool,
}

impl qsocket::session::EventListener for Gated {
    type In = bytes::BytesMut;
    type Out = Bytes;
    async fn on_open(
        &mut self,
        _s: &qsocket::session::Session<Bytes>,
    ) -> Result<(), qsocket::Error> {
        self.log.lock().expect("log").push("open-start");
        let _ = self.gate.acquire().await;
        self.log.lock().expect("log").push("open-done");
        if self.accept {
            Ok(())
        } else {
            Err(qsocket::Error::refused("no"))
        }
    }
    async fn on_message(&mut self, ctx: &mut qsocket::session::Ctx<'_, Bytes>, m: bytes::BytesMut) {
        self.log.lock().expect("log").push("msg");
        ctx.send(m.freeze());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_during_on_open_wait_for_it_and_a_refusal_drops_them() {
    for accept in [true, false] {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (l, g) = (log.clone(), gate.clone());
        let server = Server::builder(codec(), move || Gated {
            log: l.clone(),
            gate: g.clone(),
            accept,
        })
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
        let addr = server.local_addr(Transport::Tcp).expect("addr");
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // Sent while on_open is still waiting: the reader may take it in, but it must wait.
        s.write_all(&frame(b"early")).await.expect("write");
        let l = log.clone();
        eventually("on_open started", move || {
            !l.lock().expect("log").is_empty()
        })
        .await;
        assert_eq!(
            *log.lock().expect("log"),
            ["open-start"],
            "nothing before on_open ends"
        );
        gate.add_permits(1);
        if accept {
            let mut got = vec![0u8; 4 + 5];
            within("echo after on_open", s.read_exact(&mut got))
                .await
                .expect("read echo");
            assert_eq!(got, frame(b"early"));
            assert_eq!(
                *log.lock().expect("log"),
                ["open-start", "open-done", "msg"]
            );
        } else {
            let mut buf = [0u8; 16];
            let n = within("refused connection closed", s.read(&mut buf))
                .await
                .unwrap_or(0);
            assert_eq!(n, 0, "EOF, no echo");
            assert_eq!(*log.lock().expect("log"), ["open-start", "open-done"]);
        }
        server.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_peers_have_a_session_limit_of_their_own() {
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tcp://127.0.0.1:0")
        .bind("udp://127.0.0.1:0")
        .max_sessions(1)
        .udp_max_sessions(1)
        .start()
        .await
        .expect("server");
    let udp = server.local_addr(Transport::Udp).expect("udp");
    let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("a");
    a.connect(udp).await.expect("connect");
    let mut got = [0u8; 64];
    a.send(&frame(b"a")).await.expect("send");
    let n = within("echo to a", a.recv(&mut got)).await.expect("recv");
    assert_eq!(&got[..n], &frame(b"a")[..]);
    // A peer that sent more than one datagram is past probation: it keeps its place.
    a.send(&frame(b"a1")).await.expect("send");
    let n = within("echo to a", a.recv(&mut got)).await.expect("recv");
    assert_eq!(&got[..n], &frame(b"a1")[..]);
    // A second peer is over the UDP limit: its datagram opens no session.
    let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("b");
    b.send_to(&frame(b"b"), udp).await.expect("send");
    // Most likely processed after b's datagram; either way b cannot get a session while a
    // holds the only UDP place.
    a.send(&frame(b"a2")).await.expect("send");
    let n = within("second echo to a", a.recv(&mut got))
        .await
        .expect("recv");
    assert_eq!(&got[..n], &frame(b"a2")[..]);
    assert_eq!(server.udp_session_count(), 1, "b got no session");
    // Connections have their own limit, untouched by UDP peers.
    let tcp = server.local_addr(Transport::Tcp).expect("tcp");
    let mut t = TcpStream::connect(tcp).await.expect("connect");
    raw_echo(&mut t, b"tcp").await;
    assert_eq!(server.session_count(), 2);
    assert_eq!(events.count(|e| matches!(e, Ev::Open(_))), 2);
    server.shutdown(Duration::from_secs(5)).await;
}
