//! An echo client: connects to an echo server, sends N messages, prints the echoes, exits.
//!
//! ```text
//! cargo run -p qsocket-examples --bin echo_client -- tcp://127.0.0.1:9000
//! cargo run -p qsocket-examples --bin echo_client -- udp://127.0.0.1:9001 20
//! cargo run -p qsocket-examples --bin echo_client -- ws://127.0.0.1:9002/echo 5
//! ```
//!
//! The listener forwards every received message into a tokio channel, which `main` reads:
//! the usual way to get messages from a session's handler task to the rest of a program.
//! Over UDP a datagram can be lost; a message whose echo does not come back within 2 s is
//! reported as lost.

use bytes::{Bytes, BytesMut};
use qsocket::session::{Client, Ctx, EventListener};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::codec::LengthDelimitedCodec;

const CONNECT_WAIT: Duration = Duration::from_secs(5);
const ECHO_WAIT: Duration = Duration::from_secs(2);

/// Forwards every message the server sends into a channel.
struct Forward {
    tx: mpsc::Sender<BytesMut>,
}

impl EventListener for Forward {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_message(&mut self, _ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        // Awaiting here holds up only this session; the receiver is gone only when main exits.
        let _ = self.tx.send(msg).await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next().filter(|a| a != "-h" && a != "--help") else {
        eprintln!("usage: echo_client ENDPOINT [COUNT]   e.g. tcp://127.0.0.1:9000, udp://127.0.0.1:9001, ws://127.0.0.1:9002/echo");
        return Err("missing ENDPOINT".into());
    };
    let count: u32 = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|e| format!("COUNT must be a number, got {n:?}: {e}"))?,
        None => 10,
    };

    // The channel exists before the client: the factory gives each new session (a reconnect
    // makes a new one) a clone of the sender.
    let (tx, mut rx) = mpsc::channel::<BytesMut>(64);
    let client = Client::builder(&url, LengthDelimitedCodec::new(), move || Forward {
        tx: tx.clone(),
    })
    .start()
    .await
    .map_err(|e| format!("cannot start a client of {url}: {e}"))?;

    let session = match tokio::time::timeout(CONNECT_WAIT, client.session()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("cannot connect to {url}: {e}").into()),
        Err(_) => {
            return Err(format!(
                "cannot connect to {url} within {CONNECT_WAIT:?} (is the server running, is the URL right?)"
            )
            .into())
        }
    };
    println!(
        "connected to {url} ({} {} -> {})",
        session.transport(),
        session.local_addr(),
        session.peer_addr()
    );

    let mut echoed = 0u32;
    for i in 1..=count {
        let msg = format!("hello #{i}");
        session
            .send(Bytes::from(msg.clone()))
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        // Late echoes of messages given up on (UDP) are skipped.
        let got = tokio::time::timeout(ECHO_WAIT, async {
            while let Some(m) = rx.recv().await {
                if m[..] == *msg.as_bytes() {
                    return Some(m);
                }
                println!("late echo: {:?}", String::from_utf8_lossy(&m));
            }
            None
        })
        .await;
        match got {
            Ok(Some(m)) => {
                echoed += 1;
                println!("echo: {}", String::from_utf8_lossy(&m));
            }
            Ok(None) => return Err("the client's channel closed unexpectedly".into()),
            Err(_) => println!("no echo for {msg:?} within {ECHO_WAIT:?} (lost)"),
        }
    }

    let s = session.stats();
    println!(
        "{echoed}/{count} echoed; session counters: {} frames / {} bytes out, {} frames / {} bytes in",
        s.packets_out, s.bytes_out, s.packets_in, s.bytes_in
    );
    client.close(Duration::from_secs(2)).await;
    if echoed == 0 && count > 0 {
        return Err(format!("no echo at all from {url}").into());
    }
    Ok(())
}
