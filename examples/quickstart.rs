//! qsocket in one page: an echo server on TCP, UDP and WebSocket at once, a client per
//! transport that sends a few messages and a heartbeat from `on_cron`, session counters, and a
//! graceful shutdown; then an RPC service declared as a trait (`#[qsocket::service]`) called
//! over the same three transports, in MessagePack and JSON, with an error status, a user error,
//! a oneway call and a deadline. Self-contained (everything on 127.0.0.1, ports picked by the system);
//! finishes by itself in about a second.
//!
//! ```text
//! cargo run -p qsocket-examples --bin quickstart
//! ```

use bytes::{Bytes, BytesMut};
use qsocket::rpc::{CallConfig, CallContext, Codec, Router, RpcServer, Status};
use qsocket::session::{Client, Ctx, EventListener, Server, Session, Transport};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::LengthDelimitedCodec;

type Error = Box<dyn std::error::Error>;

const HEARTBEAT: &[u8] = b"heartbeat";
const CRON_PERIOD: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(2);

/// The server's listener: one per session, echoes every frame.
struct Echo;

impl EventListener for Echo {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        ctx.send(msg.freeze());
    }
}

/// What the client's listener tells `main`.
enum Event {
    Echo(BytesMut),
    HeartbeatAnswered,
}

/// The client's listener: sends a heartbeat on every cron tick and forwards what comes back
/// to `main` through a channel.
struct Probe {
    tx: mpsc::Sender<Event>,
    ticks: u32,
}

impl EventListener for Probe {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_open(&mut self, session: &Session<Bytes>) -> Result<(), qsocket::Error> {
        println!(
            "  [{}] session #{} open: {} -> {}",
            session.transport(),
            session.id(),
            session.local_addr(),
            session.peer_addr()
        );
        Ok(())
    }

    async fn on_message(&mut self, _ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        let ev = if msg[..] == *HEARTBEAT {
            Event::HeartbeatAnswered
        } else {
            Event::Echo(msg)
        };
        let _ = self.tx.send(ev).await;
    }

    async fn on_cron(&mut self, ctx: &mut Ctx<'_, Bytes>) {
        self.ticks += 1;
        if self.ticks == 1 {
            println!(
                "  [{}] on_cron tick #1 after {CRON_PERIOD:?}: sending a heartbeat",
                ctx.session().transport()
            );
        }
        ctx.send(Bytes::from_static(HEARTBEAT));
    }
}

/// Talks to the server over one transport: a few echoes, one answered heartbeat, counters.
async fn try_transport(server: &Server, transport: Transport) -> Result<(), Error> {
    let url = server
        .endpoint(transport)
        .ok_or_else(|| format!("the server has no {transport} endpoint"))?
        .to_string();
    println!("{transport}: connecting to {url}");

    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let client = Client::builder(&url, LengthDelimitedCodec::new(), move || Probe {
        tx: tx.clone(),
        ticks: 0,
    })
    .cron_period(CRON_PERIOD)
    .start()
    .await?;
    let session = timeout(WAIT, client.session())
        .await
        .map_err(|_| format!("{transport}: no session within {WAIT:?}"))??;

    let mut heartbeats = 0u32;
    for i in 1..=3 {
        let msg = format!("hello over {transport} #{i}");
        // UDP may drop a datagram (very rarely on loopback): resend a couple of times.
        let attempts = if transport == Transport::Udp { 3 } else { 1 };
        let mut echoed = false;
        for _ in 0..attempts {
            session.send(Bytes::from(msg.clone())).await?;
            let got = timeout(WAIT, async {
                while let Some(ev) = rx.recv().await {
                    match ev {
                        Event::Echo(m) if m[..] == *msg.as_bytes() => return true,
                        Event::Echo(_) => {} // a late duplicate of an earlier message
                        Event::HeartbeatAnswered => heartbeats += 1,
                    }
                }
                false
            })
            .await;
            if got == Ok(true) {
                echoed = true;
                break;
            }
        }
        if !echoed {
            return Err(format!("{transport}: no echo for {msg:?}").into());
        }
        println!("  [{transport}] echo: {msg}");
    }

    if heartbeats == 0 {
        let answered = timeout(WAIT, async {
            while let Some(ev) = rx.recv().await {
                if let Event::HeartbeatAnswered = ev {
                    return true;
                }
            }
            false
        })
        .await;
        if answered != Ok(true) {
            return Err(format!("{transport}: no heartbeat answered within {WAIT:?}").into());
        }
        heartbeats = 1;
    }
    println!("  [{transport}] heartbeat answered ({heartbeats} so far)");

    let s = session.stats();
    println!(
        "  [{transport}] counters: {} frames / {} bytes out, {} frames / {} bytes in",
        s.packets_out, s.bytes_out, s.packets_in, s.bytes_in
    );
    client.close(Duration::from_secs(1)).await;
    Ok(())
}

async fn run() -> Result<(), Error> {
    let server = Server::builder(LengthDelimitedCodec::new(), || Echo)
        .bind("tcp://127.0.0.1:0")
        .bind("udp://127.0.0.1:0")
        .bind("ws://127.0.0.1:0/echo")
        .start()
        .await?;
    for ep in server.local_endpoints() {
        println!("server listening on {ep}");
    }

    for transport in [Transport::Tcp, Transport::Udp, Transport::Ws] {
        try_transport(&server, transport).await?;
    }

    // Closed clients end their TCP and WebSocket sessions; a UDP peer never says goodbye, so
    // its server session lasts until its idle timeout or, here, the shutdown.
    println!(
        "server: {} session(s) open, shutting down gracefully",
        server.session_count()
    );
    timeout(
        Duration::from_secs(6),
        server.shutdown(Duration::from_secs(5)),
    )
    .await
    .map_err(|_| "the server did not shut down in time")?;
    Ok(())
}

/// Why an addition failed: the service's own error type, which reaches the client as it was.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AddError {
    /// The sum does not fit in an `i64`.
    Overflow,
}

/// The demo service, declared once as a trait: `#[qsocket::service]` generates the client
/// (`GreeterClient`), a client trait for mocks (`GreeterApi`) and the server
/// (`GreeterServer`). Arguments and results are plain Rust types, carried as MessagePack (or
/// JSON, per call).
#[qsocket::service(name = "demo.Greeter", version = "1.0")]
pub trait Greeter {
    /// Says hello; on failure, tried again on another instance (up to 2 more times).
    #[qsocket(strategy = "failover", retries = 2, timeout_ms = 500, idempotent)]
    async fn hello(&self, name: String) -> Result<String, qsocket::Status>;
    /// Adds two numbers, or says why it cannot.
    #[qsocket(strategy = "failfast")]
    async fn add(&self, a: i64, b: i64) -> Result<i64, AddError>;
    /// Logs a line; no answer is waited for.
    #[qsocket(oneway)]
    async fn log(&self, line: String);
    /// Sleeps `ms` milliseconds, then returns them.
    async fn sleep(&self, ms: u64) -> u64;
}

/// The server's implementation: plain async methods. Each reads its call's context (peer,
/// deadline, metadata) with `CallContext::current()`, without an argument for it.
struct Greeting {
    logged: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Greeter for Greeting {
    async fn hello(&self, name: String) -> Result<String, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        let peer = CallContext::current().map(|ctx| ctx.peer_addr().to_string());
        Ok(format!(
            "hello, {name} (from {})",
            peer.as_deref().unwrap_or("?")
        ))
    }

    async fn add(&self, a: i64, b: i64) -> Result<i64, AddError> {
        a.checked_add(b).ok_or(AddError::Overflow)
    }

    async fn log(&self, line: String) {
        let _ = self.logged.send(line);
    }

    async fn sleep(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

/// RPC: one service on three transports; calls in both codecs, a status error, a user
/// error, a oneway call and a deadline.
async fn rpc_demo() -> Result<(), Error> {
    let (logged, mut lines) = mpsc::unbounded_channel();
    let router = Router::new().add_service(GreeterServer::new(Greeting { logged }));
    let server = RpcServer::builder(router)
        .bind("tcp://127.0.0.1:0")
        .bind("udp://127.0.0.1:0")
        .bind("ws://127.0.0.1:0/rpc")
        .start()
        .await?;
    for ep in server.local_endpoints() {
        let client = GreeterClient::connect(&ep.to_string()).await?;
        let msgpack = client.hello("quickstart".into()).await?;
        let json = client
            .with(CallConfig::new().codec(Codec::Json))
            .hello("json".into())
            .await?;
        println!("rpc {ep}: msgpack -> {msgpack:?}, json -> {json:?}");
        let err = client
            .hello(String::new())
            .await
            .err()
            .ok_or("an empty name must be refused")?;
        let sum = client.add(40, 2).await?;
        let overflow = client.add(i64::MAX, 1).await?;
        println!(
            "rpc {ep}: empty name -> {err}; add(40, 2) -> {sum:?}; add(MAX, 1) -> {overflow:?}"
        );
        client.log(format!("logged over {ep}")).await?;
        let line = timeout(WAIT, lines.recv())
            .await
            .map_err(|_| "the oneway log line did not arrive")?
            .ok_or("the log channel closed")?;
        let late = client
            .with(CallConfig::new().timeout(Duration::from_millis(50)))
            .sleep(500)
            .await
            .err()
            .ok_or("a 500 ms sleep must miss a 50 ms deadline")?;
        println!("rpc {ep}: oneway -> server got {line:?}; 500 ms sleep, 50 ms deadline -> {late}");
        client.rpc().close().await;
    }
    timeout(
        Duration::from_secs(6),
        server.shutdown(Duration::from_secs(5)),
    )
    .await
    .map_err(|_| "the rpc server did not shut down in time")?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let all = async {
        run().await?;
        rpc_demo().await
    };
    match timeout(Duration::from_secs(30), all).await {
        Ok(Ok(())) => {
            println!("quickstart: all transports OK (sessions and rpc)");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("quickstart failed: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("quickstart failed: it did not finish within 30 s");
            ExitCode::FAILURE
        }
    }
}
