//! In-memory session harnesses for the fuzz targets in `fuzz/` (feature `fuzzing`; not a public
//! API, no stability promised).
//!
//! Each harness runs one session through the crate's own code paths — `conn::stream_session`
//! for a byte stream, `conn::run_conn` (so `ws::ws_reader`, `ws::WsSink` and `handler::drive`)
//! for WebSocket — over a `tokio::io::duplex` pair instead of a socket, with an echo listener.
//! The fuzz input is what the peer sends: it is written to the peer's side in chunks, then the
//! peer's write side is shut down, while everything the session writes back is read (and
//! checked or discarded). Every harness then checks that:
//!
//! * the session ended, within [`DEADLINE`] of the runtime's (real) clock;
//! * its byte budget gave everything back: [`Session::buffered_bytes`] is 0, and so is what it
//!   drew from the shared budget of its "server".
//!
//! A broken invariant panics (libFuzzer reports a panic as a crash; a panic in a task the
//! session spawned aborts the process under libFuzzer's panic hook, so it is reported too).
//!
//! # Input layout
//!
//! `[options][chunk 1][chunk 2][chunk 3]` then the bytes the peer sends (missing header bytes
//! count as 0):
//!
//! * options bits 0–1: the session's limits — 0: defaults (frames up to 64 KiB, 16 MiB budget,
//!   no shared budget); 1: the smallest budgets `validate()` accepts, shared beyond a 1 KiB
//!   allowance; 2: small (1 KiB frames, queues of 2, smallest budgets, 256-byte allowance); 3: tiny
//!   (64-byte frames, queues of 1, smallest budgets, 16-byte allowance). Every profile is a
//!   configuration the library accepts (checked on each run);
//! * bit 2: a 16-byte pipe instead of a 64 KiB one (short reads, writes that wait);
//! * bit 3: (WebSocket) `BytesCodec` instead of `LengthDelimitedCodec`;
//! * bit 4: the peer reads the session's output slowly;
//! * chunk bytes: the peer writes its bytes in chunks of `chunk + 1` bytes, cycling through the
//!   three sizes and yielding to the session after each.

use super::budget::Pool;
use super::config::SessionConfig;
use super::conn;
use super::endpoint::Transport;
use super::{Ctx, EventListener, Session, SessionStats};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::runtime::Runtime;
use tokio_util::codec::LengthDelimitedCodec;
use tokio_util::sync::CancellationToken;

/// How long a session may take to end, from the start of its run.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The largest frame (payload) of the harnesses' `LengthDelimitedCodec`.
pub const MAX_FRAME: usize = 64 * 1024;

/// The header bytes before the data of an input (see the module's documentation).
pub const HEADER: usize = 4;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What the session wrote back to the peer (transport framing included).
    pub output: Vec<u8>,
    /// The session's counters when it ended.
    pub stats: SessionStats,
}

/// Sends every message back.
struct Echo;

impl EventListener for Echo {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        ctx.send(msg.freeze());
    }
}

/// How one input is run.
struct Plan<'a> {
    opts: u8,
    chunks: [usize; 3],
    data: &'a [u8],
}

impl<'a> Plan<'a> {
    fn of(input: &'a [u8]) -> Self {
        let head = input.len().min(HEADER);
        let mut h = [0u8; HEADER];
        h[..head].copy_from_slice(&input[..head]);
        Plan {
            opts: h[0],
            chunks: [h[1], h[2], h[3]].map(|b| usize::from(b) + 1),
            data: &input[head..],
        }
    }

    /// The session's settings and its server's shared budget.
    fn config(&self) -> (SessionConfig, Option<Arc<Pool>>) {
        // A whole largest frame, length prefix included.
        let mut cfg = SessionConfig::default().max_frame_len(MAX_FRAME + 4);
        // The tight profiles use the smallest session and shared budgets the library accepts
        // (`SessionConfig::validate`, and the server's check of its shared budget), so a
        // session that does not end is a bug, not a configuration that starves it.
        let (allowance, queue) = match self.opts & 3 {
            0 => return (cfg, None),
            1 => (1024, cfg.recv_queue),
            2 => {
                cfg.max_frame_len = 1024;
                (256, 2)
            }
            _ => {
                cfg.max_frame_len = 64;
                (16, 1)
            }
        };
        cfg.session_budget = cfg.min_budget();
        cfg.session_allowance = allowance;
        cfg.send_queue = queue;
        cfg.recv_queue = queue;
        if self.opts & 3 >= 2 {
            cfg.read_buffer = 512;
        }
        if let Err(e) = cfg.validate() {
            panic!("fuzzing profile {}: {e}", self.opts & 3);
        }
        let shared = Pool::new(cfg.min_budget());
        (cfg, Some(shared))
    }

    fn pipe(&self) -> usize {
        if self.opts & 4 != 0 {
            16
        } else {
            64 * 1024
        }
    }

    fn bytes_codec(&self) -> bool {
        self.opts & 8 != 0
    }

    fn slow_reader(&self) -> bool {
        self.opts & 16 != 0
    }
}

/// The runtime all runs share: one current-thread runtime per process.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread tokio runtime")
    })
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// The peer's sending side: the data in chunks, yielding after each, then a shutdown. Stops
/// early if the session is gone.
async fn feed(mut wr: WriteHalf<DuplexStream>, plan: &Plan<'_>) {
    let mut rest = plan.data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = plan.chunks[i % 3].min(rest.len());
        if wr.write_all(&rest[..n]).await.is_err() {
            return;
        }
        rest = &rest[n..];
        i += 1;
        tokio::task::yield_now().await;
    }
    let _ = wr.shutdown().await;
}

/// The peer's receiving side: everything the session writes, until it ends.
async fn drain(mut rd: ReadHalf<DuplexStream>, slow: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if slow {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Runs `session` (which reports its handle through the slot) with the peer's two sides, all
/// bounded by [`DEADLINE`]; checks the invariants shared by every harness; returns what the
/// session wrote and its counters.
fn run<F>(
    what: &str,
    plan: &Plan<'_>,
    pool: Option<&Arc<Pool>>,
    peer: DuplexStream,
    slot: &OnceLock<Session<Bytes>>,
    session: F,
) -> (Vec<u8>, SessionStats)
where
    F: Future<Output = Result<(), crate::Error>>,
{
    let (peer_rd, peer_wr) = tokio::io::split(peer);
    let all = async {
        let (ended, (), out) = tokio::join!(
            session,
            feed(peer_wr, plan),
            drain(peer_rd, plan.slow_reader())
        );
        (ended, out)
    };
    let (ended, out) = match runtime().block_on(tokio::time::timeout(DEADLINE, all)) {
        Ok(r) => r,
        Err(_) => panic!(
            "{what}: the session did not end within {DEADLINE:?} ({} bytes of input)",
            plan.data.len()
        ),
    };
    if let Err(e) = ended {
        panic!("{what}: the session was refused: {e}");
    }
    let Some(s) = slot.get() else {
        panic!("{what}: the session never went live");
    };
    assert_eq!(
        s.buffered_bytes(),
        0,
        "{what}: the ended session still counts bytes against its budget"
    );
    if let Some(p) = pool {
        assert_eq!(
            p.used(),
            0,
            "{what}: the ended session did not give back the shared budget it drew on"
        );
    }
    (out, s.stats())
}

/// The frame of `LengthDelimitedCodec` at the start of `rest`: its whole length, or `None` if
/// it is incomplete or over the codec's limit.
fn frame_at(rest: &[u8]) -> Option<usize> {
    let head = rest.get(..4)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    (len <= MAX_FRAME && rest.len() >= len + 4).then_some(len + 4)
}

/// Checks what the echo session over a byte stream wrote back for `data`: the input's whole
/// frames, in order and unchanged, from the first on. It may stop only where the next frame is
/// incomplete, over the codec's limit, or longer than `max_frame_len` (which bounds a *partial*
/// frame: one that ends within the read that takes it past the limit is still accepted).
fn check_echo(data: &[u8], out: &[u8], max_frame_len: usize) -> Result<(), String> {
    if !data.starts_with(out) {
        let at = out.iter().zip(data).position(|(a, b)| a != b);
        return Err(format!(
            "echoed {} bytes that are not a prefix of the input's {} (first difference at byte {})",
            out.len(),
            data.len(),
            at.unwrap_or(data.len())
        ));
    }
    let mut at = 0;
    loop {
        let next = frame_at(&data[at..]);
        if at == out.len() {
            return match next {
                Some(total) if total <= max_frame_len => Err(format!(
                    "the echo stops at byte {at}, before a whole frame of {total} bytes within \
                     the limits"
                )),
                _ => Ok(()),
            };
        }
        match next {
            Some(total) if at + total <= out.len() => at += total,
            _ => {
                return Err(format!(
                    "the echo ({} bytes) goes past the input's whole frames, from byte {at}",
                    out.len()
                ))
            }
        }
    }
}

/// Runs `input` (see the module's documentation) through a byte-stream session with a
/// `LengthDelimitedCodec` (frames up to [`MAX_FRAME`]) and an echo listener, over an in-memory
/// pipe.
///
/// # Panics
///
/// If the session panics, does not end within [`DEADLINE`], keeps bytes counted against its
/// budgets after it ended, or echoes anything but the input's whole frames in order (all of
/// them up to the first that is incomplete or over a limit).
pub fn run_stream_session(input: &[u8]) -> Outcome {
    // `drive` spawns the reader as the session's future is made.
    let _rt = runtime().enter();
    let plan = Plan::of(input);
    let (cfg, pool) = plan.config();
    let (ours, peer) = tokio::io::duplex(plan.pipe());
    let (rd, wr) = tokio::io::split(ours);
    let force = CancellationToken::new();
    let slot = OnceLock::new();
    let what = (
        Echo,
        codec(),
        (Transport::Tcp, addr(1), addr(2)),
        CancellationToken::new(),
        pool.as_ref(),
    );
    let session = conn::stream_session(rd, wr, what, &cfg, &force, |s| {
        let _ = slot.set(s.clone());
    });
    let (out, stats) = run("stream session", &plan, pool.as_ref(), peer, &slot, session);
    if let Err(e) = check_echo(plan.data, &out, cfg.max_frame_len) {
        panic!("stream session: {e}");
    }
    Outcome { output: out, stats }
}

/// Runs `input` (see the module's documentation) through a WebSocket session (server role, no
/// handshake: the data is what a client sends after the upgrade) with an echo listener, over
/// an in-memory pipe. What the session writes back is read and discarded.
///
/// # Panics
///
/// If the session panics, does not end within [`DEADLINE`], or keeps bytes counted against its
/// budgets after it ended.
#[cfg(feature = "ws")]
pub fn run_ws_session(input: &[u8]) -> Outcome {
    if Plan::of(input).bytes_codec() {
        ws_session(input, tokio_util::codec::BytesCodec::new())
    } else {
        ws_session(input, codec())
    }
}

#[cfg(feature = "ws")]
fn ws_session<C: super::Framing<BytesMut, Bytes>>(input: &[u8], codec: C) -> Outcome {
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    let _rt = runtime().enter();
    let plan = Plan::of(input);
    let (cfg, pool) = plan.config();
    let (ours, peer) = tokio::io::duplex(plan.pipe());
    let force = CancellationToken::new();
    let slot = OnceLock::new();
    let session = async {
        let ws = WebSocketStream::from_raw_socket(
            super::ws::Metered::new(super::io::Stream::Duplex(ours)),
            Role::Server,
            Some(super::ws::ws_config(&cfg)),
        )
        .await;
        let conn = conn::Conn {
            io: conn::Io::Ws(Box::new(ws)),
            transport: Transport::Ws,
            local: addr(1),
            peer: addr(2),
        };
        let token = CancellationToken::new();
        conn::run_conn(
            conn,
            Echo,
            codec,
            &cfg,
            (token, pool.as_ref()),
            &force,
            |s| {
                let _ = slot.set(s.clone());
            },
        )
        .await
    };
    let (out, stats) = run(
        "websocket session",
        &plan,
        pool.as_ref(),
        peer,
        &slot,
        session,
    );
    Outcome { output: out, stats }
}
