//! Echo over every transport with real sockets on 127.0.0.1, plus the session API end to end.

mod common;

use bytes::Bytes;
use common::*;
use qsocket::session::{Backoff, Client, Server, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

async fn echo_server(urls: &[&str], events: &Events) -> Server {
    let mut b = Server::builder(codec(), echo_factory(events));
    for u in urls {
        b = b.bind(u);
    }
    b.start().await.expect("server starts")
}

/// Sends `n` messages through a client of `url` and checks every echo arrives, in order.
async fn echo_roundtrip(url: &str, n: usize) -> qsocket::session::Client<Bytes> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::builder(url, codec(), move || Forward(tx.clone()))
        .start()
        .await
        .expect("client starts");
    let session = within("client session", client.session())
        .await
        .expect("live session");
    for i in 0..n {
        session
            .send(Bytes::from(format!("message {i}")))
            .await
            .expect("send");
    }
    for i in 0..n {
        let got = within("echo", rx.recv()).await.expect("echo");
        assert_eq!(
            got,
            Bytes::from(format!("message {i}")),
            "echo {i} over {url}"
        );
    }
    let stats = session.stats();
    assert_eq!(stats.packets_out, n as u64);
    assert_eq!(stats.packets_in, n as u64);
    assert!(stats.bytes_in > 0 && stats.bytes_out > 0);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_tcp_udp_and_ws_on_one_server() {
    let events = Events::default();
    let server = echo_server(
        &[
            "tcp://127.0.0.1:0",
            "udp://127.0.0.1:0",
            "ws://127.0.0.1:0/echo",
        ],
        &events,
    )
    .await;
    assert_eq!(server.local_endpoints().len(), 3);
    for t in [Transport::Tcp, Transport::Udp, Transport::Ws] {
        let ep = server.endpoint(t).expect("bound").to_string();
        assert_ne!(
            server.local_addr(t).expect("addr").port(),
            0,
            "port 0 resolved"
        );
        // UDP on loopback with one message at a time in flight does not lose datagrams in
        // practice; the echo waits for each reply, so a loss would show as a timeout.
        let n = if t == Transport::Udp { 20 } else { 200 };
        let client = echo_roundtrip(&ep, n).await;
        client.close(Duration::from_secs(5)).await;
    }
    // TCP and WS sessions end when their clients close; the UDP one when the server stops.
    events
        .wait_until("tcp and ws sessions closed", |e| {
            e.iter().filter(|e| matches!(e, Ev::Close(_))).count() >= 2
        })
        .await;
    server.shutdown(Duration::from_secs(5)).await;
    let opens = events.count(|e| matches!(e, Ev::Open(_)));
    let closes = events.count(|e| matches!(e, Ev::Close(_)));
    assert_eq!(opens, 3);
    assert_eq!(closes, 3, "on_close exactly once per session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_tls_and_wss() {
    let (cert, key) = self_signed();
    let server_tls =
        qsocket::session::tls::server_config(cert.as_bytes(), key.as_bytes()).expect("server tls");
    let client_tls = qsocket::session::tls::client_config(cert.as_bytes()).expect("client tls");
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tls://127.0.0.1:0")
        .bind("wss://127.0.0.1:0/secure")
        .tls(server_tls)
        .start()
        .await
        .expect("tls server");
    for t in [Transport::Tls, Transport::Wss] {
        let port = server.local_addr(t).expect("bound").port();
        let url = match t {
            Transport::Tls => format!("tls://localhost:{port}"),
            _ => format!("wss://localhost:{port}/secure"),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let client = Client::builder(&url, codec(), move || Forward(tx.clone()))
            .tls(client_tls.clone())
            .start()
            .await
            .expect("client");
        let s = within("tls session", client.session()).await.expect("live");
        assert_eq!(s.transport(), t);
        for i in 0..50 {
            s.send(Bytes::from(vec![i as u8; 1000]))
                .await
                .expect("send");
        }
        for i in 0..50 {
            let got = within("echo", rx.recv()).await.expect("echo");
            assert_eq!(got, Bytes::from(vec![i as u8; 1000]));
        }
        client.close(Duration::from_secs(5)).await;
    }
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_without_the_right_root_is_refused() {
    let (cert, key) = self_signed();
    let (other_cert, _) = self_signed();
    let server_tls =
        qsocket::session::tls::server_config(cert.as_bytes(), key.as_bytes()).expect("tls");
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tls://127.0.0.1:0")
        .tls(server_tls)
        .start()
        .await
        .expect("server");
    let port = server.local_addr(Transport::Tls).expect("bound").port();
    let (tx, _rx) = mpsc::unbounded_channel();
    let client = Client::builder(&format!("tls://localhost:{port}"), codec(), move || {
        Forward(tx.clone())
    })
    .tls(qsocket::session::tls::client_config(other_cert.as_bytes()).expect("tls"))
    .backoff(
        Backoff::default()
            .initial(Duration::from_millis(10))
            .max(Duration::from_millis(20))
            .max_attempts(Some(2)),
    )
    .start()
    .await
    .expect("client");
    let r = within("client gives up", client.session()).await;
    assert!(matches!(r, Err(qsocket::Error::ClientClosed)), "{r:?}");
    assert_eq!(events.count(|e| matches!(e, Ev::Open(_))), 0);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeps_n_sessions_and_round_robins() {
    let events = Events::default();
    let server = echo_server(&["tcp://127.0.0.1:0"], &events).await;
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let (tx, _rx) = mpsc::unbounded_channel();
    let client = Client::builder(&url, codec(), move || Forward(tx.clone()))
        .sessions(4)
        .start()
        .await
        .expect("client");
    events
        .wait_until("4 sessions open", |e| {
            e.iter().filter(|e| matches!(e, Ev::Open(_))).count() == 4
        })
        .await;
    eventually("all live", || client.sessions().len() == 4).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..8 {
        ids.insert(client.session().await.expect("live").id());
    }
    assert_eq!(ids.len(), 4, "round robin over the 4 sessions");
    client.close(Duration::from_secs(5)).await;
    events
        .wait_until("4 closes", |e| {
            e.iter().filter(|e| matches!(e, Ev::Close(_))).count() == 4
        })
        .await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_session_gets_no_callbacks_and_closes() {
    struct Refuse(Events);
    impl qsocket::session::EventListener for Refuse {
        type In = bytes::BytesMut;
        type Out = Bytes;
        async fn on_open(
            &mut self,
            _s: &qsocket::session::Session<Bytes>,
        ) -> Result<(), qsocket::Error> {
            Err(qsocket::Error::refused("not today"))
        }
        async fn on_close(&mut self, s: &qsocket::session::Session<Bytes>) {
            self.0.push(Ev::Close(s.id()));
        }
    }
    let events = Events::default();
    let ev = events.clone();
    let server = Server::builder(codec(), move || Refuse(ev.clone()))
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("addr");
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = within(
        "server closes the refused connection",
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await
    .unwrap_or(0);
    assert_eq!(n, 0, "EOF");
    assert_eq!(
        events.count(|_| true),
        0,
        "no on_close for a refused session"
    );
    // The permit is released just after the connection is shut down.
    eventually("refused session released", || server.session_count() == 0).await;
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_on_closed_session_errors_and_attributes_work() {
    let events = Events::default();
    let server = echo_server(&["tcp://127.0.0.1:0"], &events).await;
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();
    let (tx, _rx) = mpsc::unbounded_channel();
    let client = Client::builder(&url, codec(), move || Forward(tx.clone()))
        .start()
        .await
        .expect("client");
    let s = within("session", client.session()).await.expect("live");
    s.set_attr(Arc::new(String::from("user-7")));
    assert_eq!(
        s.attr::<Arc<String>>().as_deref().map(String::as_str),
        Some("user-7")
    );
    client.close(Duration::from_secs(5)).await;
    assert!(s.is_closed());
    let r = within("send on closed returns", s.send(Bytes::from_static(b"x"))).await;
    assert!(matches!(r, Err(qsocket::Error::SessionClosed)), "{r:?}");
    assert!(s.try_send(Bytes::from_static(b"x")).is_err());
    assert!(matches!(
        client.session().await,
        Err(qsocket::Error::ClientClosed)
    ));
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_server_keeps_one_session_per_peer_and_expires_idle_ones() {
    let events = Events::default();
    let cfg =
        qsocket::session::SessionConfig::default().udp_idle_timeout(Duration::from_millis(300));
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("udp://127.0.0.1:0")
        .config(cfg)
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Udp).expect("udp");
    let a = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let b = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // One length-delimited frame per datagram: 4-byte big-endian length + payload.
    let frame = |p: &[u8]| {
        let mut v = (p.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(p);
        v
    };
    let mut buf = [0u8; 64];
    for (sock, payload) in [(&a, b"from a".as_ref()), (&b, b"from b".as_ref())] {
        // Resend until answered: UDP may drop, the test asserts only what UDP promises.
        let got = within("udp echo", async {
            loop {
                sock.send_to(&frame(payload), addr).await.expect("send");
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
                {
                    return buf[..n].to_vec();
                }
            }
        })
        .await;
        assert_eq!(got, frame(payload));
    }
    events
        .wait_until("two udp sessions opened and expired", |e| {
            let opens = e.iter().filter(|e| matches!(e, Ev::Open(_))).count();
            let closes = e.iter().filter(|e| matches!(e, Ev::Close(_))).count();
            opens >= 2 && closes == opens
        })
        .await;
    assert!(events
        .snapshot()
        .iter()
        .any(|e| matches!(e, Ev::Error(_, m) if m.contains("timed out"))));
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let (server_cert, server_key) = self_signed();
    let (client_cert, client_key) = self_signed();
    let server_tls = qsocket::session::tls::server_config_with_client_auth(
        server_cert.as_bytes(),
        server_key.as_bytes(),
        client_cert.as_bytes(),
    )
    .expect("server tls");
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tls://127.0.0.1:0")
        .tls(server_tls)
        .start()
        .await
        .expect("server");
    let url = format!(
        "tls://localhost:{}",
        server.local_addr(Transport::Tls).expect("tls").port()
    );
    let quick = Backoff::default()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(20))
        .max_attempts(Some(2));

    // With its certificate: served.
    let with_id = qsocket::session::tls::client_config_with_identity(
        server_cert.as_bytes(),
        client_cert.as_bytes(),
        client_key.as_bytes(),
    )
    .expect("client identity");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::builder(&url, codec(), move || Forward(tx.clone()))
        .tls(with_id)
        .start()
        .await
        .expect("client");
    let s = within("mtls session", client.session())
        .await
        .expect("live");
    s.send(Bytes::from_static(b"signed")).await.expect("send");
    assert_eq!(
        &within("echo", rx.recv()).await.expect("echo")[..],
        b"signed"
    );
    client.close(Duration::from_secs(5)).await;

    // Without one: the handshake fails and no session opens on the server.
    let opens_before = events.count(|e| matches!(e, Ev::Open(_)));
    let (tx, _rx) = mpsc::unbounded_channel();
    let anonymous = Client::builder(&url, codec(), move || Forward(tx.clone()))
        .tls(qsocket::session::tls::client_config(server_cert.as_bytes()).expect("tls"))
        .backoff(quick)
        .start()
        .await
        .expect("client");
    // TLS 1.3 clients learn of the refusal on their first read, so the session may open
    // briefly on the client side; the server never opens one.
    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), anonymous.session()).await {
        within("refused session closes", s.closed()).await;
    }
    anonymous.close(Duration::from_secs(5)).await;
    assert_eq!(events.count(|e| matches!(e, Ev::Open(_))), opens_before);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_listeners_bound_by_the_caller() {
    // Bound here, before the server exists: a std listener (as a process manager hands one
    // over) and a tokio one.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind std listener");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let tcp = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
    let ws = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ws listener");
    let (tcp_addr, ws_addr) = (
        tcp.local_addr().expect("tcp addr"),
        ws.local_addr().expect("ws addr"),
    );
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .tcp_listener(tcp)
        .bind("udp://127.0.0.1:0")
        .ws_listener(ws, "/echo")
        .start()
        .await
        .expect("server starts");
    // Listed in the order given, with the addresses the caller bound.
    let listed: Vec<Transport> = server
        .local_endpoints()
        .iter()
        .map(|e| e.transport())
        .collect();
    assert_eq!(listed, [Transport::Tcp, Transport::Udp, Transport::Ws]);
    assert_eq!(server.local_addr(Transport::Tcp), Some(tcp_addr));
    assert_eq!(server.local_addr(Transport::Ws), Some(ws_addr));
    assert_eq!(server.endpoint(Transport::Ws).expect("ws").path(), "/echo");
    for url in [format!("tcp://{tcp_addr}"), format!("ws://{ws_addr}/echo")] {
        let client = echo_roundtrip(&url, 100).await;
        client.close(Duration::from_secs(5)).await;
    }
    events
        .wait_until("both sessions closed", |e| {
            e.iter().filter(|e| matches!(e, Ev::Close(_))).count() >= 2
        })
        .await;
    server.shutdown(Duration::from_secs(5)).await;
    // The server owned the listeners: they are closed with it.
    for addr in [tcp_addr, ws_addr] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts after shutdown"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_and_wss_on_listeners_bound_by_the_caller() {
    let (cert, key) = self_signed();
    let server_tls =
        qsocket::session::tls::server_config(cert.as_bytes(), key.as_bytes()).expect("server tls");
    let client_tls = qsocket::session::tls::client_config(cert.as_bytes()).expect("client tls");
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let wss = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (tls_port, wss_port) = (
        tls.local_addr().expect("addr").port(),
        wss.local_addr().expect("addr").port(),
    );
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .tls_listener(tls)
        .wss_listener(wss, "/secure")
        .tls(server_tls)
        .start()
        .await
        .expect("tls server");
    for url in [
        format!("tls://localhost:{tls_port}"),
        format!("wss://localhost:{wss_port}/secure"),
    ] {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let client = Client::builder(&url, codec(), move || Forward(tx.clone()))
            .tls(client_tls.clone())
            .start()
            .await
            .expect("client");
        let s = within("tls session", client.session()).await.expect("live");
        for i in 0..20 {
            s.send(Bytes::from(vec![i as u8; 100])).await.expect("send");
        }
        for i in 0..20 {
            let got = within("echo", rx.recv()).await.expect("echo");
            assert_eq!(got, Bytes::from(vec![i as u8; 100]), "echo {i} over {url}");
        }
        client.close(Duration::from_secs(5)).await;
    }
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_listener_is_checked_at_start() {
    let events = Events::default();
    // A WebSocket path must start with '/'.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let r = Server::builder(codec(), echo_factory(&events))
        .ws_listener(listener, "echo")
        .start()
        .await;
    assert!(matches!(r, Err(qsocket::Error::Config(_))), "{:?}", r.err());
    // TLS needs a TLS configuration, wherever the socket came from.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let r = Server::builder(codec(), echo_factory(&events))
        .tls_listener(listener)
        .start()
        .await;
    assert!(matches!(r, Err(qsocket::Error::Config(_))), "{:?}", r.err());
}
