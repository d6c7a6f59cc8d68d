//! Memory stays bounded whatever peers send: byte budgets, hang-ups while paused, malformed
//! metadata, WebSocket close codes, UDP places under a flood of one-datagram peers. Real
//! sockets on 127.0.0.1.

mod common;
mod rpc_common;

use bytes::{Bytes, BytesMut};
use common::*;
use qsocket::rpc::frame::{encode_frame, kind, Frame, FrameCodec, Header, Limits};
use qsocket::rpc::{CallContext, Code, RpcServer, RpcServerConfig, Service, Status};
use qsocket::session::{Ctx, EventListener, Server, Session, SessionConfig, Transport};
use rpc_common::{EchoReply, EchoRequest};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

const MIB: usize = 1024 * 1024;

/// An echo listener that also keeps a handle on every session it serves.
struct Keeper {
    inner: Recorder,
    sessions: Arc<Mutex<Vec<Session<Bytes>>>>,
}

impl EventListener for Keeper {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_open(&mut self, session: &Session<Bytes>) -> Result<(), qsocket::Error> {
        self.sessions
            .lock()
            .expect("sessions")
            .push(session.clone());
        self.inner.on_open(session).await
    }
    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        // Echo without recording the (large) payload.
        ctx.send(msg.freeze());
    }
    async fn on_error(&mut self, session: &Session<Bytes>, err: &qsocket::Error) {
        self.inner.on_error(session, err).await
    }
    async fn on_close(&mut self, session: &Session<Bytes>) {
        self.inner.on_close(session).await
    }
}

type Sessions = Arc<Mutex<Vec<Session<Bytes>>>>;

/// An echo server (keeping a handle on each session) on `url` with session settings `cfg`
/// and, if given, a shared budget.
async fn keeper_server(
    events: &Events,
    url: &str,
    cfg: SessionConfig,
    shared: Option<usize>,
) -> (Server, SocketAddr, Sessions) {
    let sessions = Sessions::default();
    let (ev, ss) = (events.clone(), sessions.clone());
    let mut b = Server::builder(codec(), move || Keeper {
        inner: Recorder {
            events: ev.clone(),
            echo: true,
        },
        sessions: ss.clone(),
    })
    .bind(url)
    .config(cfg);
    if let Some(n) = shared {
        b = b.shared_budget(n);
    }
    let server = b.start().await.expect("server");
    let transport = if url.starts_with("ws") {
        Transport::Ws
    } else {
        Transport::Tcp
    };
    let addr = server.local_addr(transport).expect("address");
    (server, addr, sessions)
}

/// A TCP echo server with a 4 MiB session budget and 1 MiB frames.
async fn budget_server(events: &Events) -> (Server, SocketAddr, Sessions) {
    keeper_server(events, "tcp://127.0.0.1:0", four_mib_budget(), None).await
}

/// A 4 MiB session budget, 1 MiB frames.
fn four_mib_budget() -> SessionConfig {
    SessionConfig::default()
        .session_budget(4 * MIB)
        .max_frame_len(MIB + 4)
}

/// A length-delimited frame of `len` bytes.
fn big_frame(len: usize) -> Vec<u8> {
    let mut v = (len as u32).to_be_bytes().to_vec();
    v.resize(4 + len, 7);
    v
}

/// Waits until `sent` has stopped growing (the peer stopped reading from us) for a while.
async fn stalled(sent: &AtomicU64) {
    within("the writer stalls", async {
        let (mut last, mut same) = (u64::MAX, 0);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = sent.load(Ordering::SeqCst);
            same = if now == last { same + 1 } else { 0 };
            last = now;
            if same >= 5 {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_paused_at_its_byte_budget_and_its_fin_is_noticed() {
    let events = Events::default();
    let (server, addr, sessions) = budget_server(&events).await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (rd, mut wr) = stream.into_split();
    let _rd = rd;
    let sent = Arc::new(AtomicU64::new(0));
    let s2 = sent.clone();
    // Never reads; sends at most 200 MiB (it stalls long before, or the test fails).
    let writer = tokio::spawn(async move {
        let frame = big_frame(MIB);
        for _ in 0..200 {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
            s2.fetch_add(frame.len() as u64, Ordering::SeqCst);
        }
        wr
    });
    // Sample the gauge while the client pushes.
    let session = within("session opens", async {
        loop {
            if let Some(s) = sessions.lock().expect("sessions").first().cloned() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let peak = Arc::new(AtomicU64::new(0));
    let (p2, s3) = (peak.clone(), session.clone());
    let sampler = tokio::spawn(async move {
        loop {
            p2.fetch_max(s3.buffered_bytes() as u64, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    stalled(&sent).await;
    sampler.abort();
    let held = session.buffered_bytes();
    let peak = peak.load(Ordering::SeqCst) as usize;
    // The budget, plus at most one write in progress (a 1 MiB echo) counted as output.
    let bound = 4 * MIB + MIB + 64 * 1024;
    assert!(peak <= bound, "peak {peak} > {bound}");
    assert!(held >= MIB, "the gauge counts what is held: {held}");
    let sent_now = sent.load(Ordering::SeqCst) as usize;
    assert!(
        sent_now < 100 * MIB,
        "the server stopped reading: {} MiB sent",
        sent_now / MIB
    );
    assert!(server.shared_budget_used() <= 4 * MIB + MIB);

    // The client goes away (its unread echoes make the close a reset) while the session is
    // paused and writing to it is stuck: the session ends at once, not after a timeout (none
    // is configured).
    writer.abort();
    let wr = writer.await;
    drop((wr, _rd));
    let id = session.id();
    events
        .wait_until("the paused session closes", |e| e.contains(&Ev::Close(id)))
        .await;
    assert_eq!(session.buffered_bytes(), 0, "everything given back");
    assert_eq!(server.shared_budget_used(), 0);
    server.shutdown(Duration::from_secs(5)).await;
}

/// A listener that takes no messages: its session stops reading once its budget is full.
struct Stuck(Events);

impl EventListener for Stuck {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_open(&mut self, session: &Session<Bytes>) -> Result<(), qsocket::Error> {
        self.0.push(Ev::Open(session.id()));
        Ok(())
    }
    async fn on_error(&mut self, session: &Session<Bytes>, err: &qsocket::Error) {
        self.0.push(Ev::Error(session.id(), err.to_string()));
    }
    async fn on_close(&mut self, session: &Session<Bytes>) {
        self.0.push(Ev::Close(session.id()));
    }
    fn accepts_messages(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fin_while_the_session_is_paused_ends_it() {
    let events = Events::default();
    let ev = events.clone();
    let cfg = SessionConfig::default()
        .session_budget(MIB)
        .max_frame_len(64 * 1024);
    let server = Server::builder(codec(), move || Stuck(ev.clone()))
        .bind("tcp://127.0.0.1:0")
        .config(cfg)
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // A little more than the budget: the session reads up to its budget and stops; the rest
    // (a few frames) waits in the kernel's receive buffer, so the FIN behind it can travel.
    let frame = big_frame(8 * 1024);
    for _ in 0..132 {
        s.write_all(&frame).await.expect("write");
    }
    s.shutdown().await.expect("FIN");
    events
        .wait_until("the paused session closes", |e| {
            e.iter().any(|e| matches!(e, Ev::Close(_)))
        })
        .await;
    assert_eq!(
        events.count(|e| matches!(e, Ev::Error(_, m) if m.contains("hung up"))),
        1,
        "{:?}",
        events.snapshot()
    );
    assert_eq!(server.shared_budget_used(), 0);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_budget_makes_large_frames_wait_while_small_traffic_flows() {
    let events = Events::default();
    let (server, addr, sessions) = keeper_server(
        &events,
        "tcp://127.0.0.1:0",
        four_mib_budget(),
        Some(2 * MIB),
    )
    .await;
    // Three never-reading clients push large frames: together they spend the shared budget.
    let mut hogs = Vec::new();
    for _ in 0..3 {
        let (rd, mut wr) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        hogs.push(rd);
        tokio::spawn(async move {
            let frame = big_frame(MIB);
            for _ in 0..100 {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
    }
    eventually("the shared budget is spent", || {
        server.shared_budget_used() >= 2 * MIB
    })
    .await;
    // Small traffic still flows: a new client's small frames are echoed.
    let mut small = TcpStream::connect(addr).await.expect("connect");
    for i in 0..20u8 {
        let msg = vec![i; 100];
        let mut f = (msg.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&msg);
        small.write_all(&f).await.expect("write");
        let mut got = vec![0u8; f.len()];
        within("small echo", small.read_exact(&mut got))
            .await
            .expect("echo");
        assert_eq!(got, f);
    }
    // Bounded: the shared budget, plus the one frame that may complete past it, the
    // allowances, and one write in progress each (answers stay counted with their requests
    // until written).
    let held: Vec<usize> = sessions
        .lock()
        .expect("sessions")
        .iter()
        .map(Session::buffered_bytes)
        .collect();
    let total: usize = held.iter().sum();
    assert!(
        total <= 2 * MIB + (MIB + 4) + 4 * (16 * 1024) + 3 * (MIB + 64 * 1024),
        "{held:?}"
    );
    drop(hogs);
    server.shutdown(Duration::from_secs(5)).await;
}

/// An RPC request frame, written by hand.
fn request(id: u64, service: &str, method: &str, metadata: &[u8], body: &[u8]) -> BytesMut {
    let h = Header {
        kind: kind::REQUEST,
        codec: 1,
        id,
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

async fn rpc_server(cfg: RpcServerConfig) -> (RpcServer, SocketAddr) {
    let router = rpc_common::router(Arc::default()).add_service(
        Service::new("test.Park").unary("Forever", |_: EchoRequest, _: CallContext| {
            std::future::pending::<Result<EchoReply, Status>>()
        }),
    );
    let server = RpcServer::builder(router)
        .config(cfg)
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("rpc server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    (server, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_metadata_is_refused_with_invalid_argument() {
    let (server, addr) = rpc_server(RpcServerConfig::default()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = BytesMut::new();
    // An entry whose key claims 5 bytes where the block has 1 left.
    let bad = request(1, "test.Echo", "Echo", &[5, b'k', 0, 1], &[]);
    s.write_all(&bad).await.expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.kind, f.id), (kind::RESPONSE, 1));
    assert_eq!(f.status, Code::InvalidArgument as u16);
    assert!(String::from_utf8_lossy(&f.body()).contains("malformed metadata"));
    // The connection stays usable: a well-formed request is answered.
    let mut md = Vec::new();
    qsocket::rpc::frame::put_metadata(&mut md, "trace", b"t1").expect("md");
    s.write_all(&request(2, "test.Echo", "Echo", &md, &[]))
        .await
        .expect("write");
    let f = read_frame(&mut s, &mut buf).await;
    assert_eq!((f.id, f.status), (2, 0));
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_session_paused_by_its_in_flight_limit_notices_a_fin() {
    // Few requests in flight and a short queue, so the session stops reading quickly; no
    // session timeout, so only noticing the FIN can end it.
    let defaults = RpcServerConfig::default();
    let cfg = RpcServerConfig::default()
        .max_in_flight(2)
        .session(defaults.session.clone().recv_queue(2).session_timeout(None));
    let (server, addr) = rpc_server(cfg).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut all = BytesMut::new();
    for id in 1..=50 {
        all.extend_from_slice(&request(id, "test.Park", "Forever", &[], &[]));
    }
    s.write_all(&all).await.expect("write");
    eventually("the server has the session", || server.session_count() == 1).await;
    s.shutdown().await.expect("FIN");
    assert!(
        closed_by_peer(&mut s).await,
        "the server ends the session after the FIN"
    );
    eventually("the session is gone", || server.session_count() == 0).await;
    server.shutdown(Duration::from_secs(5)).await;
}

/// A raw WebSocket client: the upgrade by hand, then frames as bytes.
async fn ws_raw(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    within("upgrade response", async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("read");
            head.push(b[0]);
        }
    })
    .await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads server frames until a close frame; returns its status code.
async fn close_code(s: &mut TcpStream) -> u16 {
    let mut data = Vec::new();
    within("a close frame", async {
        loop {
            // Server frames are unmasked; lengths below 126 here except data frames.
            let mut i = 0;
            while i + 2 <= data.len() {
                let (op, len7) = (data[i] & 0x0f, (data[i + 1] & 0x7f) as usize);
                let (hdr, len) = match len7 {
                    126 if i + 4 <= data.len() => {
                        (4, u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize)
                    }
                    126 => break,
                    127 => panic!("unexpected huge server frame"),
                    n => (2, n),
                };
                if i + hdr + len > data.len() {
                    break;
                }
                if op == 0x8 {
                    assert!(len >= 2, "close frame without a status code");
                    return u16::from_be_bytes([data[i + hdr], data[i + hdr + 1]]);
                }
                i += hdr + len;
            }
            let mut b = [0u8; 512];
            let n = s.read(&mut b).await.expect("read");
            assert!(n > 0, "closed without a close frame");
            data.extend_from_slice(&b[..n]);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closes_carry_the_right_status_codes() {
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("ws://127.0.0.1:0/ws")
        .max_frame_len(64 * 1024)
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Ws).expect("ws");
    // A frame announcing more than the limit: 1009 (message too big).
    let mut s = ws_raw(addr, "/ws").await;
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 30).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&f).await.expect("write");
    assert_eq!(close_code(&mut s).await, 1009);
    // Reserved bits set: a protocol error, 1002.
    let mut s = ws_raw(addr, "/ws").await;
    s.write_all(&[0xf2, 0x80, 1, 2, 3, 4]).await.expect("write");
    assert_eq!(close_code(&mut s).await, 1002);
    // A payload the codec cannot decode (a length prefix past the codec's limit): 1007.
    let mut s = ws_raw(addr, "/ws").await;
    let payload = [0xff, 0xff, 0xff, 0xff];
    let mask = [9u8, 8, 7, 6];
    let mut f = vec![0x82, 0x80 | 4];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    s.write_all(&f).await.expect("write");
    assert_eq!(close_code(&mut s).await, 1007);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_datagram_peers_cannot_lock_new_udp_peers_out() {
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("udp://127.0.0.1:0")
        .udp_max_sessions(4)
        .start()
        .await
        .expect("server");
    let udp = server.local_addr(Transport::Udp).expect("udp");
    let echo = |sock: Arc<tokio::net::UdpSocket>, what: &'static [u8]| async move {
        let mut f = (what.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(what);
        sock.send(&f).await.expect("send");
        let mut got = [0u8; 64];
        let n = within("udp echo", sock.recv(&mut got)).await.expect("recv");
        assert_eq!(&got[..n], &f[..]);
    };
    let connected = || async {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        s.connect(udp).await.expect("connect");
        Arc::new(s)
    };
    // A proven peer: two datagrams.
    let proven = connected().await;
    echo(proven.clone(), b"p1").await;
    echo(proven.clone(), b"p2").await;
    // A flood of sources that each send one datagram (as forged source ports would).
    let mut flood = Vec::new();
    for _ in 0..40 {
        let s = connected().await;
        s.send(&[0, 0, 0, 1, 9]).await.expect("send");
        flood.push(s);
    }
    eventually("the flood has taken the free places", || {
        events.count(|e| matches!(e, Ev::Msg(_, m) if m[..] == [9])) >= 3
    })
    .await;
    // A new peer still gets a place, and the proven one keeps its session.
    let fresh = connected().await;
    echo(fresh, b"new").await;
    echo(proven.clone(), b"p3").await;
    let ids: Vec<u64> = events
        .snapshot()
        .iter()
        .filter_map(|e| match e {
            Ev::Msg(id, m) if m.starts_with(b"p") => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| *i == ids[0]), "one session: {ids:?}");
    assert!(server.udp_session_count() <= 4);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_still_arriving_count_against_the_budgets() {
    let events = Events::default();
    let cfg = SessionConfig::default()
        .session_budget(2 * MIB)
        .max_frame_len(2 * MIB - 64 * 1024);
    let (server, addr, sessions) =
        keeper_server(&events, "ws://127.0.0.1:0/ws", cfg, Some(2 * MIB)).await;
    // Two peers each send all but the last byte of a message of almost 2 MiB: together more
    // than the shared budget, which the server's WebSocket layer would otherwise gather unseen.
    let len = 2 * MIB - 64 * 1024;
    let mut writers = Vec::new();
    let sent = Arc::new(AtomicU64::new(0));
    for _ in 0..2 {
        let s = ws_raw(addr, "/ws").await;
        let (rd, mut wr) = s.into_split();
        let sent = sent.clone();
        writers.push((
            rd,
            tokio::spawn(async move {
                let mask = [1u8, 2, 3, 4];
                let mut f = vec![0x82, 0x80 | 127];
                f.extend_from_slice(&(len as u64).to_be_bytes());
                f.extend_from_slice(&mask);
                wr.write_all(&f).await.expect("header");
                let chunk: Vec<u8> = (0..64 * 1024).map(|i| mask[i % 4]).collect();
                let mut left = len - 1;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if wr.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    left -= n;
                    sent.fetch_add(n as u64, Ordering::SeqCst);
                }
                wr
            }),
        ));
    }
    eventually("both sessions open", || {
        sessions.lock().expect("sessions").len() == 2
    })
    .await;
    stalled(&sent).await;
    eventually("the partial messages are counted", || {
        let s = sessions.lock().expect("sessions");
        s.iter().map(Session::buffered_bytes).sum::<usize>() >= MIB
    })
    .await;
    let held: Vec<usize> = sessions
        .lock()
        .expect("sessions")
        .iter()
        .map(Session::buffered_bytes)
        .collect();
    let total: usize = held.iter().sum();
    assert!(total >= MIB, "partial messages are counted: {held:?}");
    // The shared budget, plus the one message that may complete past it, two allowances,
    // and at most one read past it each.
    assert!(
        total <= 2 * MIB + 2 * MIB + 2 * 16 * 1024 + 2 * 64 * 1024,
        "{held:?}"
    );
    assert!(server.shared_budget_used() <= 4 * MIB + 2 * 64 * 1024);
    for (rd, w) in writers {
        w.abort();
        drop(rd);
    }
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_that_stalls_hits_the_read_timeout() {
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("ws://127.0.0.1:0/ws")
        .read_timeout(Duration::from_millis(300))
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Ws).expect("ws");
    let mut s = ws_raw(addr, "/ws").await;
    // A message announcing 1,000 bytes, of which 10 come.
    let mut f = vec![0x82, 0x80 | 126];
    f.extend_from_slice(&1000u16.to_be_bytes());
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&[0; 10]);
    s.write_all(&f).await.expect("write");
    assert_eq!(close_code(&mut s).await, 1008, "closed as a timeout");
    events
        .wait_until("the session reports the read timeout", |e| {
            e.iter()
                .any(|e| matches!(e, Ev::Error(_, m) if m.contains("read timed out")))
        })
        .await;
    server.shutdown(Duration::from_secs(5)).await;
}

/// A listener that takes messages only while `open` is set (checked again at each cron tick).
struct Gated {
    open: Arc<std::sync::atomic::AtomicBool>,
    events: Events,
}

impl EventListener for Gated {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        self.events.push(Ev::Msg(ctx.session().id(), Bytes::new()));
        drop(msg);
    }
    async fn on_error(&mut self, session: &Session<Bytes>, err: &qsocket::Error) {
        self.events.push(Ev::Error(session.id(), err.to_string()));
    }
    fn accepts_messages(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_paused_by_its_own_listener_is_not_cut_by_the_read_timeout() {
    let events = Events::default();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ev, op) = (events.clone(), open.clone());
    let cfg = SessionConfig::default()
        .session_budget(256 * 1024)
        .max_frame_len(64 * 1024)
        .read_timeout(Some(Duration::from_millis(200)))
        .cron_period(Some(Duration::from_millis(20)));
    let server = Server::builder(codec(), move || Gated {
        open: op.clone(),
        events: ev.clone(),
    })
    .bind("tcp://127.0.0.1:0")
    .config(cfg)
    .start()
    .await
    .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // 1 MiB in 5,000-byte frames: the session reads its 256 KiB budget (mid-frame, most
    // likely) and waits for its listener.
    let frame = big_frame(5000);
    let writer = tokio::spawn(async move {
        for _ in 0..200 {
            s.write_all(&frame).await.expect("write");
        }
        s
    });
    // Paused by its own listener for several read timeouts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    open.store(true, Ordering::SeqCst);
    events
        .wait_until("every frame handled", |e| {
            e.iter().filter(|e| matches!(e, Ev::Msg(..))).count() == 200
        })
        .await;
    assert_eq!(
        events.count(|e| matches!(e, Ev::Error(..))),
        0,
        "{:?}",
        events.snapshot()
    );
    drop(writer.await.expect("writer"));
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_beyond_the_shared_budget_complete_in_turn() {
    let events = Events::default();
    let cfg = SessionConfig::default()
        .session_budget(2 * MIB)
        .max_frame_len(MIB + 4)
        .read_timeout(Some(Duration::from_secs(10)));
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tcp://127.0.0.1:0")
        .config(cfg)
        .shared_budget(2 * MIB)
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    // Six honest clients each send one 1 MiB frame at once: three times the shared budget.
    // Partial frames holding it between them would wait for one another; one at a time may
    // complete past it, so every frame gets through, each well within the read timeout.
    let mut clients = Vec::new();
    for i in 0..6u8 {
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut f = big_frame(MIB);
            f[4] = i;
            let (mut rd, mut wr) = s.split();
            let send = async { wr.write_all(&f).await.expect("write") };
            let mut got = vec![0u8; f.len()];
            let recv = async { rd.read_exact(&mut got).await.expect("echo") };
            tokio::join!(send, recv);
            assert_eq!(got, f);
        }));
    }
    for c in clients {
        within("every large frame is echoed", c)
            .await
            .expect("client");
    }
    // (A client that leaves once it has its echo may find its session paused: "hung up".)
    assert_eq!(
        events.count(|e| matches!(e, Ev::Error(_, m) if !m.contains("hung up"))),
        0,
        "{:?}",
        events.snapshot()
    );
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_largest_frame_arrives_whole_with_the_smallest_budget() {
    let events = Events::default();
    // The least budget the builders take: the largest frame plus 64 KiB. The reader's buffer
    // may reach the budget before the frame is in: what it already holds must still fill.
    let cfg = SessionConfig::default()
        .max_frame_len(MIB + 4)
        .session_budget(MIB + 4 + 64 * 1024);
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tcp://127.0.0.1:0")
        .config(cfg)
        .shared_budget(MIB + 4 + 64 * 1024)
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let f = big_frame(MIB);
    let (mut rd, mut wr) = s.split();
    let send = async {
        for part in f.chunks(1000) {
            wr.write_all(part).await.expect("write");
        }
    };
    let mut got = vec![0u8; f.len()];
    let recv = async {
        within("the echo", rd.read_exact(&mut got))
            .await
            .expect("echo")
    };
    tokio::join!(send, recv);
    assert_eq!(got, f);
    server.shutdown(Duration::from_secs(5)).await;
}
