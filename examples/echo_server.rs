//! An echo server on TCP, UDP and WebSocket at once.
//!
//! On TCP and UDP every frame (length-delimited: a 4-byte big-endian length, then the payload)
//! is sent back as it came. On WebSocket every message is sent back whole, whatever it holds:
//! a browser's `ws.send("hi")` gets `"hi"` back (as a binary message), and `echo_client`'s
//! length-prefixed messages come back unchanged. Run it, then talk to it with `echo_client`:
//!
//! ```text
//! cargo run -p qsocket-examples --bin echo_server
//! cargo run -p qsocket-examples --bin echo_server -- tcp://127.0.0.1:7000 ws://127.0.0.1:7001/echo
//! cargo run -p qsocket-examples --bin echo_client -- ws://127.0.0.1:9002/echo 5
//! ```
//!
//! With no arguments it listens on `tcp://127.0.0.1:9000`, `udp://127.0.0.1:9001` and
//! `ws://127.0.0.1:9002/echo`. Ctrl-C shuts it down gracefully (5 s grace period).

use bytes::{Bytes, BytesMut};
use qsocket::session::{Ctx, EventListener, Server, Session};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::codec::{BytesCodec, LengthDelimitedCodec};

const DEFAULT_ENDPOINTS: [&str; 3] = [
    "tcp://127.0.0.1:9000",
    "udp://127.0.0.1:9001",
    "ws://127.0.0.1:9002/echo",
];

/// One per session: echoes every frame and reports when the session opens and closes.
struct Echo;

// `LengthDelimitedCodec` (TCP, UDP) and `BytesCodec` (WebSocket: each message whole) both
// decode into `BytesMut` and encode `Bytes`, so one listener serves both.
impl EventListener for Echo {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_open(&mut self, session: &Session<Bytes>) -> Result<(), qsocket::Error> {
        println!(
            "open   #{} {} from {}",
            session.id(),
            session.transport(),
            session.peer_addr()
        );
        Ok(())
    }

    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        ctx.send(msg.freeze());
    }

    async fn on_error(&mut self, session: &Session<Bytes>, err: &qsocket::Error) {
        println!("error  #{}: {err}", session.id());
    }

    async fn on_close(&mut self, session: &Session<Bytes>) {
        let s = session.stats();
        println!(
            "close  #{} {} from {}: {} frames / {} bytes in, {} frames / {} bytes out",
            session.id(),
            session.transport(),
            session.peer_addr(),
            s.packets_in,
            s.bytes_in,
            s.packets_out,
            s.bytes_out
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: echo_server [ENDPOINT...]   (default: {DEFAULT_ENDPOINTS:?})");
        return Ok(());
    }
    let endpoints: Vec<String> = if args.is_empty() {
        DEFAULT_ENDPOINTS.iter().map(|s| s.to_string()).collect()
    } else {
        args
    };

    // Length-delimited frames on TCP and UDP; each WebSocket message is one frame whole.
    let (ws, framed): (Vec<&String>, Vec<&String>) = endpoints
        .iter()
        .partition(|url| url.starts_with("ws://") || url.starts_with("wss://"));
    let mut servers = Vec::new();
    if !framed.is_empty() {
        let mut builder = Server::builder(LengthDelimitedCodec::new(), || Echo);
        for url in &framed {
            builder = builder.bind(url);
        }
        servers.push(
            builder
                .start()
                .await
                .map_err(|e| format!("cannot start the echo server on {framed:?}: {e}"))?,
        );
    }
    if !ws.is_empty() {
        let mut builder = Server::builder(BytesCodec::new(), || Echo);
        for url in &ws {
            builder = builder.bind(url);
        }
        servers.push(
            builder
                .start()
                .await
                .map_err(|e| format!("cannot start the echo server on {ws:?}: {e}"))?,
        );
    }
    for ep in servers.iter().flat_map(|s| s.local_endpoints()) {
        println!("listening on {ep}");
    }
    println!("press Ctrl-C to stop");

    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot listen for Ctrl-C: {e}"))?;
    let open: usize = servers.iter().map(Server::session_count).sum();
    println!("shutting down ({open} sessions open, 5 s grace period)");
    for server in servers {
        server.shutdown(Duration::from_secs(5)).await;
    }
    println!("bye");
    Ok(())
}
