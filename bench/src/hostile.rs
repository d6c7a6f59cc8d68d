//! `hostile`: memory attacks against a qsocket server with its default configuration.
//!
//! Each attack gets a fresh server child process (this program, hidden subcommand
//! `hostile-server echo|rpc`), so the child's peak RSS (`VmHWM` in /proc/PID/status) belongs to
//! that attack alone. Per attack: the idle RSS of the child before it, the peak, and the final
//! RSS after the attack's connections are closed (VmRSS polled every 100 ms for up to 5 s; the
//! value once it has made no new low for 1 s, or the last one). Every attack talks to 127.0.0.1
//! only and is bounded in count and in time:
//!
//! * `slow-reader-1m`, `slow-reader-max` (echo, TCP): 8 clients send length-delimited frames of
//!   1 MiB / 8 MiB (the codec's default maximum) as fast as the socket takes them and never read,
//!   for up to 10 s or until 2 GiB are sent in all.
//! * `slow-reader-rpc` (RPC, TCP): the same with `bench.Echo/Echo` requests of 4 MiB bodies
//!   (the default body limit).
//! * `headers-10k`, `headers-10k-rpc` (TCP): 10,000 connections each send only a header
//!   announcing the largest frame (8 MiB echo frame / 4 MiB RPC body) and nothing more; all are
//!   held open for 5 s.
//! * `near-complete-200` (echo, TCP): 200 connections each send an 8 MiB frame but its last
//!   byte; held open for 5 s.
//! * `parked-rpc` (RPC, TCP): one client sends 2,000 requests (64 KiB bodies, no deadline) to
//!   `bench.Echo/Sleep`, whose handler never finishes, never reads, then half-closes (FIN);
//!   reports how long until the server ends that session (the client reads EOF or a reset).
//!   If it has not within 10 s, the client resets the connection (`SO_LINGER` 0) and reports
//!   how long until the server closes its socket: a FIN waits behind the bytes the server has
//!   not read, so it never reaches a server that stopped reading.
//! * `ws-slow-reader` (echo, WebSocket): 8 clients send 1 MiB binary messages (each one
//!   length-delimited frame) and never read, for up to 10 s or 2 GiB. The WebSocket client is
//!   written by hand here (upgrade request, masked binary frames) so every byte is counted.
//! * `ws-near-complete-200` (echo, WebSocket): 200 connections each send an 8 MiB binary
//!   message but its last byte; held open for 5 s.
//!
//! "sent" counts the bytes the client's kernel accepted (several MiB per connection of it may
//! still sit in the socket buffers of either side). The notes also give the child's RSS when
//! the connections are closed and its open files (idle / at close / final), which tell a
//! session still open from memory the allocator kept after the sessions ended.

use crate::{raise_nofile, runtime, Echo, Error, BATCH};
use bytes::{BufMut, Bytes, BytesMut};
use qsocket::rpc::frame::{kind, Limits, HEADER_LEN, MAGIC, VERSION};
use qsocket::rpc::{CallContext, Codec, Router, RpcServer, Service, Status};
use qsocket::session::Server;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::LengthDelimitedCodec;

const MIB: u64 = 1024 * 1024;
/// Clients of the slow-reader attacks.
const SLOW_CLIENTS: usize = 8;
/// How long the slow-reader clients send.
const SLOW_LIMIT: Duration = Duration::from_secs(10);
/// What the slow-reader clients send at most, all together.
const SLOW_CAP: u64 = 2 * 1024 * MIB;
/// How long the slow-reader connections stay open after the clients stopped sending.
const SLOW_HOLD: Duration = Duration::from_secs(1);
/// `LengthDelimitedCodec`'s default `max_frame_length`.
const ECHO_MAX_FRAME: usize = 8 * 1024 * 1024;
/// Connections of the header-only attacks.
const HEADER_CONNS: usize = 10_000;
/// How long the header-only and near-complete connections are held open.
const HOLD: Duration = Duration::from_secs(5);
/// Time for opening all the connections of one attack.
const CONNECT_PHASE: Duration = Duration::from_secs(60);
/// Time for one connection (and its first write) to be set up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections of `near-complete-200`.
const NEAR_CONNS: usize = 200;
/// Time for `near-complete-200` to send its almost complete frames.
const NEAR_SEND_LIMIT: Duration = Duration::from_secs(30);
/// Requests of `parked-rpc`.
const PARKED_REQUESTS: u64 = 2_000;
/// Body size of each `parked-rpc` request.
const PARKED_BODY: usize = 64 * 1024;
/// Time for `parked-rpc` to write its requests, and then for the server to end its session.
const PARKED_LIMIT: Duration = Duration::from_secs(10);
/// The RPC service of the child.
const SERVICE: &str = "bench.Echo";
/// After the attack: poll period of the child's RSS, how long it must make no new low, and
/// how long to poll at most.
const SETTLE_POLL: Duration = Duration::from_millis(100);
const SETTLE_STABLE: u32 = 10;
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// The server a child process runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ServerKind {
    /// `LengthDelimitedCodec` echo over TCP and WebSocket (`/echo`).
    Echo,
    /// `bench.Echo` with `Echo` and `Sleep` over TCP.
    Rpc,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Echo => "echo",
            ServerKind::Rpc => "rpc",
        }
    }
}

/// One attack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attack {
    SlowReader1m,
    SlowReaderMax,
    SlowReaderRpc,
    Headers10k,
    Headers10kRpc,
    NearComplete200,
    ParkedRpc,
    WsSlowReader,
    WsNearComplete200,
}

impl Attack {
    const ALL: [Attack; 9] = [
        Attack::SlowReader1m,
        Attack::SlowReaderMax,
        Attack::SlowReaderRpc,
        Attack::Headers10k,
        Attack::Headers10kRpc,
        Attack::NearComplete200,
        Attack::ParkedRpc,
        Attack::WsSlowReader,
        Attack::WsNearComplete200,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::SlowReader1m => "slow-reader-1m",
            Attack::SlowReaderMax => "slow-reader-max",
            Attack::SlowReaderRpc => "slow-reader-rpc",
            Attack::Headers10k => "headers-10k",
            Attack::Headers10kRpc => "headers-10k-rpc",
            Attack::NearComplete200 => "near-complete-200",
            Attack::ParkedRpc => "parked-rpc",
            Attack::WsSlowReader => "ws-slow-reader",
            Attack::WsNearComplete200 => "ws-near-complete-200",
        }
    }

    fn parse(s: &str) -> Result<Attack, Error> {
        Attack::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Attack::ALL.iter().map(|a| a.name()).collect();
                format!("unknown attack {s:?} (attacks: {})", names.join(", ")).into()
            })
    }

    fn server(self) -> ServerKind {
        match self {
            Attack::SlowReaderRpc | Attack::Headers10kRpc | Attack::ParkedRpc => ServerKind::Rpc,
            _ => ServerKind::Echo,
        }
    }

    /// The server column: server kind and transport.
    fn label(self) -> String {
        let transport = if matches!(self, Attack::WsSlowReader | Attack::WsNearComplete200) {
            "ws"
        } else {
            "tcp"
        };
        format!("{} {transport}", self.server().name())
    }
}

// ---------------------------------------------------------------------------------------------
// The child

/// The hidden `hostile-server echo|rpc` subcommand: a qsocket server with its default
/// configuration on 127.0.0.1. Prints its endpoints on one line (`tcp://…` and, for echo,
/// `ws://…/echo`, separated by spaces), then serves until killed or until its stdin closes.
pub(crate) fn hostile_server(kind: &str, shared_budget_mib: Option<u64>) -> Result<(), Error> {
    raise_nofile();
    let budget = shared_budget_mib.map_or(qsocket::session::DEFAULT_SHARED_BUDGET, |m| {
        usize::try_from(m << 20).unwrap_or(usize::MAX)
    });
    let rt = runtime()?;
    // The server (a session `Server` or an `RpcServer`) is kept until the end.
    let (endpoints, server) = match kind {
        "echo" => {
            let builder = Server::builder(LengthDelimitedCodec::new(), || Echo)
                .bind("tcp://127.0.0.1:0")
                .bind("ws://127.0.0.1:0/echo")
                .shared_budget(budget);
            let server = rt.block_on(builder.start())?;
            let endpoints = server.local_endpoints().to_vec();
            (endpoints, Box::new(server) as Box<dyn std::any::Any>)
        }
        "rpc" => {
            let svc = Service::new(SERVICE)
                .unary("Echo", |m: Bytes, _ctx: CallContext| async move {
                    Ok::<_, Status>(m)
                })
                .unary("Sleep", |_m: Bytes, _ctx: CallContext| async move {
                    std::future::pending::<Result<Bytes, Status>>().await
                });
            let builder = RpcServer::builder(Router::new().add_service(svc))
                .bind("tcp://127.0.0.1:0")
                .shared_budget(budget);
            let server = rt.block_on(builder.start())?;
            let endpoints = server.local_endpoints().to_vec();
            (endpoints, Box::new(server) as Box<dyn std::any::Any>)
        }
        other => return Err(format!("unknown hostile-server kind {other:?} (echo, rpc)").into()),
    };
    let endpoints: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", endpoints.join(" "))?;
    out.flush()?;
    drop(out);
    // The server runs on the runtime's worker threads; this thread waits for the parent to
    // kill it, or to go away (end of stdin), so the child never outlives it.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    drop(server);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// A `hostile-server` child process; killed when dropped.
struct ServerChild {
    child: Child,
    /// Held open: the child exits when it closes.
    _stdin: ChildStdin,
    tcp: SocketAddr,
    /// `ws://127.0.0.1:PORT/echo` (echo servers).
    ws: Option<String>,
}

impl ServerChild {
    fn spawn(kind: ServerKind, shared_budget_mib: Option<u64>) -> Result<Self, Error> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("hostile-server").arg(kind.name());
        if let Some(mib) = shared_budget_mib {
            cmd.arg("--shared-budget-mib").arg(mib.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        match Self::endpoints(&mut child) {
            Ok((tcp, ws)) => {
                let Some(stdin) = child.stdin.take() else {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("no stdin pipe to the child".into());
                };
                Ok(ServerChild {
                    child,
                    _stdin: stdin,
                    tcp,
                    ws,
                })
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Reads the child's endpoint line (waiting 10 s at most).
    fn endpoints(child: &mut Child) -> Result<(SocketAddr, Option<String>), Error> {
        let stdout = child.stdout.take().ok_or("no stdout pipe from the child")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the server child printed no endpoints within 10 s")??;
        let (mut tcp, mut ws) = (None, None);
        for word in line.split_whitespace() {
            if let Some(addr) = word.strip_prefix("tcp://") {
                tcp = Some(addr.parse()?);
            } else if word.starts_with("ws://") {
                ws = Some(word.to_string());
            }
        }
        let tcp = tcp.ok_or_else(|| format!("no tcp endpoint in the child's line {line:?}"))?;
        Ok((tcp, ws))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the child ended, if it has.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS and VmHWM of process `pid` in KiB (None once it is gone or a zombie).
fn proc_mem_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// How many files (sockets, mostly) process `pid` has open.
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Samples the child's memory every 100 ms on a thread of its own, so its peak is known even
/// if it dies during the attack.
struct Sampler {
    pid: u32,
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak_kib.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((_, hwm)) = proc_mem_kib(pid) {
                        peak.fetch_max(hwm, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Sampler {
            pid,
            stop,
            peak_kib,
            thread,
        }
    }

    /// Stops sampling; the peak RSS in KiB (0 if never read).
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        if let Some((_, hwm)) = proc_mem_kib(self.pid) {
            self.peak_kib.fetch_max(hwm, Ordering::Relaxed);
        }
        self.peak_kib.load(Ordering::Relaxed)
    }
}

/// How the RSS poll after the attack ended.
enum Settled {
    /// No new low for 1 s: the value, and when its last low was first seen.
    Stable(u64, Duration),
    /// Still making new lows at the 5 s limit: the last value.
    StillFalling(u64),
    /// The child's memory could not be read (it is gone).
    Unknown,
}

/// Polls the child's RSS after the attack's connections are closed: every 100 ms, up to 5 s;
/// the value once there has been no new low for 1 s, or the last one.
fn settled_rss_kib(pid: u32) -> Settled {
    let start = Instant::now();
    let (mut low, mut low_at, mut since_low, mut last) = (u64::MAX, Duration::ZERO, 0u32, None);
    while start.elapsed() < SETTLE_MAX {
        std::thread::sleep(SETTLE_POLL);
        let Some((rss, _)) = proc_mem_kib(pid) else {
            break;
        };
        last = Some(rss);
        if rss < low {
            (low, low_at, since_low) = (rss, start.elapsed(), 0);
        } else {
            since_low += 1;
            if since_low >= SETTLE_STABLE {
                return Settled::Stable(rss, low_at);
            }
        }
    }
    last.map_or(Settled::Unknown, Settled::StillFalling)
}

// ---------------------------------------------------------------------------------------------
// The parent

/// What an attack did; its connections stay open until the parent has read the RSS at close.
#[derive(Default)]
struct Outcome {
    /// The clients/connections column.
    conns: String,
    /// Bytes the clients wrote.
    sent: u64,
    notes: Vec<String>,
    streams: Vec<TcpStream>,
}

/// One line of the table.
struct Row {
    attack: Attack,
    conns: String,
    sent_mib: Option<f64>,
    idle_mib: Option<f64>,
    peak_mib: Option<f64>,
    final_mib: Option<f64>,
    notes: String,
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs the attacks named in `attacks` (comma-separated; default all); the Markdown table.
pub(crate) fn cmd_hostile(
    attacks: Option<&str>,
    shared_budget_mib: Option<u64>,
) -> Result<String, Error> {
    let list: Vec<Attack> = match attacks {
        None => Attack::ALL.to_vec(),
        Some(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Attack::parse)
            .collect::<Result<_, _>>()?,
    };
    if list.is_empty() {
        return Err("--attacks names no attack".into());
    }
    let nofile = raise_nofile();
    let rt = runtime()?;
    let mut rows = Vec::new();
    for attack in list {
        eprintln!(
            "hostile {}: fresh {} server child ...",
            attack.name(),
            attack.server().name()
        );
        let started = Instant::now();
        let row = run_one(&rt, attack, shared_budget_mib, nofile).unwrap_or_else(|e| Row {
            attack,
            conns: "–".into(),
            sent_mib: None,
            idle_mib: None,
            peak_mib: None,
            final_mib: None,
            notes: format!("error: {e}"),
        });
        eprintln!(
            "hostile {}: {:.1} s; sent {} MiB, RSS idle {} → peak {} → final {} MiB; {}",
            attack.name(),
            started.elapsed().as_secs_f64(),
            mib(row.sent_mib),
            mib(row.idle_mib),
            mib(row.peak_mib),
            mib(row.final_mib),
            row.notes
        );
        rows.push(row);
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(table(&rows))
}

fn run_one(
    rt: &tokio::runtime::Runtime,
    attack: Attack,
    shared_budget_mib: Option<u64>,
    nofile: libc::rlim_t,
) -> Result<Row, Error> {
    let mut child = ServerChild::spawn(attack.server(), shared_budget_mib)?;
    let pid = child.pid();
    // Let the child's runtime settle before the baseline.
    std::thread::sleep(Duration::from_millis(300));
    let (idle, _) = proc_mem_kib(pid).ok_or("cannot read the server child's memory")?;
    let idle_fds = open_fds(pid);
    let sampler = Sampler::start(pid);
    let result = rt.block_on(run_attack(attack, &child, nofile, idle_fds));
    let at_close = proc_mem_kib(pid).map(|(rss, _)| rss);
    let close_fds = open_fds(pid);
    let (mut outcome, error) = match result {
        Ok(o) => (o, None),
        Err(e) => (Outcome::default(), Some(e)),
    };
    let streams = std::mem::take(&mut outcome.streams);
    rt.block_on(async move { drop(streams) });
    let settled = settled_rss_kib(pid);
    let final_fds = open_fds(pid);
    let peak = sampler.finish();
    let mut notes = outcome.notes;
    if let Some(e) = error {
        notes.push(format!("error: {e}"));
    }
    if let Some(rss) = at_close {
        notes.push(format!("RSS at close {:.1} MiB", kib_to_mib(rss)));
    }
    let final_rss = match settled {
        Settled::Stable(rss, at) => {
            notes.push(format!(
                "final RSS reached {:.1} s after close",
                at.as_secs_f64()
            ));
            Some(rss)
        }
        Settled::StillFalling(rss) => {
            notes.push(format!(
                "RSS still falling {} s after close",
                SETTLE_MAX.as_secs()
            ));
            Some(rss)
        }
        Settled::Unknown => None,
    };
    let fds = |n: Option<usize>| n.map_or("–".into(), |n| n.to_string());
    notes.push(format!(
        "server fds idle/at close/final: {}/{}/{}",
        fds(idle_fds),
        fds(close_fds),
        fds(final_fds)
    ));
    if let Some(status) = child.exited() {
        notes.push(format!("server child exited: {status}"));
    }
    drop(child);
    Ok(Row {
        attack,
        conns: outcome.conns,
        sent_mib: Some(outcome.sent as f64 / MIB as f64),
        idle_mib: Some(kib_to_mib(idle)),
        peak_mib: (peak > 0).then(|| kib_to_mib(peak)),
        final_mib: final_rss.map(kib_to_mib),
        notes: notes.join("; "),
    })
}

async fn run_attack(
    attack: Attack,
    child: &ServerChild,
    nofile: libc::rlim_t,
    idle_fds: Option<usize>,
) -> Result<Outcome, Error> {
    let addr = child.tcp;
    let max_body = Limits::default().max_body as usize;
    match attack {
        Attack::SlowReader1m => slow_readers(addr, None, echo_frames(MIB as usize)).await,
        Attack::SlowReaderMax => slow_readers(addr, None, echo_frames(ECHO_MAX_FRAME)).await,
        Attack::SlowReaderRpc => {
            let body = pb_bytes_body(max_body);
            let make: MakeFrame = Arc::new(move |id| {
                [
                    rpc_request(id, 0, "Echo", body.len()).freeze(),
                    body.clone(),
                ]
            });
            slow_readers(addr, None, make).await
        }
        Attack::Headers10k => {
            let header = Bytes::copy_from_slice(&(ECHO_MAX_FRAME as u32).to_be_bytes());
            many_headers(addr, header, nofile).await
        }
        Attack::Headers10kRpc => {
            // The 28-byte header alone: names, metadata and body never follow.
            let header = rpc_request(1, 0, "Echo", max_body).split_to(HEADER_LEN);
            many_headers(addr, header.freeze(), nofile).await
        }
        Attack::NearComplete200 => {
            let head = Bytes::copy_from_slice(&(ECHO_MAX_FRAME as u32).to_be_bytes());
            near_complete(addr, None, head, ECHO_MAX_FRAME - 1).await
        }
        Attack::WsNearComplete200 => {
            let url = child
                .ws
                .as_deref()
                .ok_or("the server child has no ws endpoint")?;
            let (ws_addr, path) = parse_ws_url(url)?;
            // One binary message of the largest size, all but its last byte (mask key 0, so
            // the masked payload is the plain one).
            let mut head = BytesMut::with_capacity(14);
            head.put_u8(0x82);
            head.put_u8(0x80 | 127);
            head.put_u64(ECHO_MAX_FRAME as u64);
            head.put_slice(&[0; 4]);
            near_complete(ws_addr, Some(path), head.freeze(), ECHO_MAX_FRAME - 1).await
        }
        Attack::ParkedRpc => parked_rpc(addr, child.pid(), idle_fds).await,
        Attack::WsSlowReader => {
            let url = child
                .ws
                .as_deref()
                .ok_or("the server child has no ws endpoint")?;
            let (ws_addr, path) = parse_ws_url(url)?;
            let make = ws_frames(MIB as usize);
            slow_readers(ws_addr, Some(path), make).await
        }
    }
}

/// Builds the bytes of frame number `seq` (from 1) as parts written one after the other.
type MakeFrame = Arc<dyn Fn(u64) -> [Bytes; 2] + Send + Sync>;

/// Length-delimited echo frames: a 4-byte big-endian length, then `payload` bytes.
fn echo_frames(payload: usize) -> MakeFrame {
    let head = Bytes::copy_from_slice(&(payload as u32).to_be_bytes());
    let data = Bytes::from(vec![b'x'; payload]);
    Arc::new(move |_| [head.clone(), data.clone()])
}

/// WebSocket binary messages, each holding one length-delimited frame of `payload` bytes:
/// a client frame header (FIN, binary, 64-bit length, mask key), then the masked message.
fn ws_frames(payload: usize) -> MakeFrame {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut msg = Vec::with_capacity(4 + payload);
    msg.extend_from_slice(&(payload as u32).to_be_bytes());
    msg.resize(4 + payload, b'x');
    for (i, b) in msg.iter_mut().enumerate() {
        *b ^= KEY[i % 4];
    }
    let mut head = BytesMut::with_capacity(14);
    head.put_u8(0x82);
    head.put_u8(0x80 | 127);
    head.put_u64(msg.len() as u64);
    head.put_slice(&KEY);
    let (head, msg) = (head.freeze(), Bytes::from(msg));
    Arc::new(move |_| [head.clone(), msg.clone()])
}

/// `ws://127.0.0.1:PORT/path` → the address and the path.
fn parse_ws_url(url: &str) -> Result<(SocketAddr, String), Error> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("not a ws:// url: {url:?}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    Ok((authority.parse()?, path.to_string()))
}

/// The WebSocket upgrade, by hand: the request, then the response head (101 expected).
async fn ws_handshake(s: &mut TcpStream, addr: SocketAddr, path: &str) -> Result<(), Error> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 1024];
    while !resp.windows(4).any(|w| w == b"\r\n\r\n") {
        if resp.len() > 16 * 1024 {
            return Err("websocket upgrade response too long".into());
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err("connection closed during the websocket upgrade".into());
        }
        resp.extend_from_slice(&buf[..n]);
    }
    if !resp.starts_with(b"HTTP/1.1 101") {
        let first = resp.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(format!(
            "websocket upgrade refused: {}",
            String::from_utf8_lossy(first)
        )
        .into());
    }
    Ok(())
}

/// A protobuf message with one `bytes` field (tag 1) — `bytes::Bytes` as the RPC `Message`
/// (a `BytesValue`) — whose encoding is exactly `total` bytes long.
fn pb_bytes_body(total: usize) -> Bytes {
    let varint_len = |mut v: usize| {
        let mut n = 1;
        while v >= 0x80 {
            v >>= 7;
            n += 1;
        }
        n
    };
    let (data, vlen) = (1..=10)
        .filter_map(|vlen| Some((total.checked_sub(1 + vlen)?, vlen)))
        .find(|&(data, vlen)| varint_len(data) == vlen)
        .unwrap_or((total.saturating_sub(2), 1));
    let mut b = BytesMut::with_capacity(1 + vlen + data);
    b.put_u8(0x0a); // field 1, wire type 2 (length-delimited)
    let mut v = data;
    while v >= 0x80 {
        b.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
    b.put_bytes(b'x', data);
    b.freeze()
}

/// The start of an RPC request frame (PROTOCOL.md) to `bench.Echo/<method>`: the 28-byte
/// header announcing `body_len` body bytes (protobuf, no metadata), then the service and method
/// names. The body follows separately.
fn rpc_request(id: u64, timeout_ms: u32, method: &str, body_len: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADER_LEN + SERVICE.len() + method.len());
    b.put_slice(&MAGIC);
    b.put_u8(VERSION);
    b.put_u8(kind::REQUEST);
    b.put_u8(Codec::Protobuf.id());
    b.put_u8(0); // flags
    b.put_u16(0); // status
    b.put_u64(id);
    b.put_u32(timeout_ms);
    b.put_u8(SERVICE.len() as u8);
    b.put_u8(method.len() as u8);
    b.put_u16(0); // metadata length
    b.put_u32(body_len as u32);
    b.put_slice(SERVICE.as_bytes());
    b.put_slice(method.as_bytes());
    b
}

/// How a bounded write ended.
enum Wrote {
    Done,
    Deadline,
    Failed(std::io::Error),
}

/// Writes `buf` until done, `deadline` or an error, adding every byte written to `sent`.
async fn write_counted(
    s: &mut TcpStream,
    mut buf: &[u8],
    deadline: tokio::time::Instant,
    sent: &mut u64,
) -> Wrote {
    while !buf.is_empty() {
        match tokio::time::timeout_at(deadline, s.write(buf)).await {
            Err(_) => return Wrote::Deadline,
            Ok(Ok(0)) => return Wrote::Failed(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => {
                *sent += n as u64;
                buf = &buf[n..];
            }
            Ok(Err(e)) => return Wrote::Failed(e),
        }
    }
    Wrote::Done
}

/// Opens a connection within [`CONNECT_TIMEOUT`].
async fn connect(addr: SocketAddr) -> Result<TcpStream, Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(format!("connect to {addr} took over {CONNECT_TIMEOUT:?}").into()),
    }
}

/// How many of `streams` the server has closed (EOF or reset), without blocking.
fn closed_by_server(streams: &[TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    streams
        .iter()
        .filter(|s| match s.try_read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

/// Counts equal strings: "3× a, 5× b".
fn tally(items: impl IntoIterator<Item = String>) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for item in items {
        match counts.iter_mut().find(|(s, _)| *s == item) {
            Some((_, n)) => *n += 1,
            None => counts.push((item, 1)),
        }
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n}× {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The slow-reader attacks: [`SLOW_CLIENTS`] connections (WebSocket upgrades when `ws_path`
/// is given) each send frames from `make` as fast as the socket takes them and never read, for
/// up to [`SLOW_LIMIT`] or until [`SLOW_CAP`] bytes are sent in all.
async fn slow_readers(
    addr: SocketAddr,
    ws_path: Option<String>,
    make: MakeFrame,
) -> Result<Outcome, Error> {
    let deadline = tokio::time::Instant::now() + SLOW_LIMIT;
    let reserved = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..SLOW_CLIENTS {
        let (make, reserved, ws_path) = (make.clone(), reserved.clone(), ws_path.clone());
        handles.push(tokio::spawn(async move {
            let mut s = connect(addr).await?;
            if let Some(path) = &ws_path {
                tokio::time::timeout(CONNECT_TIMEOUT, ws_handshake(&mut s, addr, path))
                    .await
                    .map_err(|_| "websocket upgrade took over 5 s")??;
            }
            let mut sent = 0u64;
            let mut seq = 0u64;
            let end = 'frames: loop {
                if tokio::time::Instant::now() >= deadline {
                    break "10 s limit".to_string();
                }
                seq += 1;
                let parts = make(seq);
                let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
                if reserved.fetch_add(len, Ordering::Relaxed) + len > SLOW_CAP {
                    break "2 GiB cap".to_string();
                }
                for part in &parts {
                    match write_counted(&mut s, part, deadline, &mut sent).await {
                        Wrote::Done => {}
                        Wrote::Deadline => break 'frames "10 s limit".to_string(),
                        Wrote::Failed(e) => break 'frames format!("closed by server ({e})"),
                    }
                }
            };
            Ok::<_, Error>((s, sent, end))
        }));
    }
    let mut out = Outcome::default();
    let (mut per_client, mut ends, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let bound = deadline + CONNECT_TIMEOUT * 2;
    for h in handles {
        match tokio::time::timeout_at(bound, h).await {
            Ok(Ok(Ok((s, sent, end)))) => {
                out.streams.push(s);
                out.sent += sent;
                per_client.push(format!("{:.0}", sent as f64 / MIB as f64));
                ends.push(end);
            }
            Ok(Ok(Err(e))) => errors.push(e.to_string()),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => errors.push("client task overran its time limit".into()),
        }
    }
    tokio::time::sleep(SLOW_HOLD).await;
    out.conns = if errors.is_empty() {
        SLOW_CLIENTS.to_string()
    } else {
        format!("{} of {SLOW_CLIENTS}", out.streams.len())
    };
    out.notes.push(format!(
        "MiB per client: {}",
        if per_client.is_empty() {
            "–".into()
        } else {
            per_client.join(", ")
        }
    ));
    if !ends.is_empty() {
        out.notes.push(format!("stopped by: {}", tally(ends)));
    }
    if !errors.is_empty() {
        out.notes.push(format!("client errors: {}", tally(errors)));
    }
    Ok(out)
}

/// The header-only attacks: up to [`HEADER_CONNS`] connections (in batches of [`BATCH`]) each
/// send `header` and nothing more; all are held open for [`HOLD`].
async fn many_headers(
    addr: SocketAddr,
    header: Bytes,
    nofile: libc::rlim_t,
) -> Result<Outcome, Error> {
    let mut out = Outcome::default();
    // Leave room for this process's other files.
    let n = HEADER_CONNS.min((nofile as usize).saturating_sub(100));
    if n < HEADER_CONNS {
        out.notes.push(format!(
            "open-file limit {nofile}: attempted {n} connections only"
        ));
    }
    let phase_end = Instant::now() + CONNECT_PHASE;
    let (mut attempted, mut errors) = (0usize, Vec::new());
    let t0 = Instant::now();
    while attempted < n && Instant::now() < phase_end {
        let batch = BATCH.min(n - attempted);
        attempted += batch;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let header = header.clone();
            set.spawn(tokio::time::timeout(CONNECT_TIMEOUT, async move {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(&header).await?;
                Ok::<_, std::io::Error>(s)
            }));
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(Ok(s))) => {
                    out.sent += header.len() as u64;
                    out.streams.push(s);
                }
                Ok(Ok(Err(e))) => errors.push(e.to_string()),
                Ok(Err(_)) => errors.push("connect + write took over 5 s".into()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if attempted % 2000 == 0 || attempted == n {
            eprintln!(
                "  {} connections open, {} failed",
                out.streams.len(),
                errors.len()
            );
        }
    }
    let open = out.streams.len();
    out.notes.push(format!(
        "{open} connected in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    if attempted < n {
        out.notes.push(format!(
            "connect phase hit its {} s limit after {attempted} attempts",
            CONNECT_PHASE.as_secs()
        ));
    }
    if !errors.is_empty() {
        out.notes.push(format!(
            "connect errors: {}",
            tally(errors.into_iter().take(1000))
        ));
    }
    tokio::time::sleep(HOLD).await;
    let closed = closed_by_server(&out.streams);
    out.notes.push(format!(
        "closed by server during the {} s hold: {closed}",
        HOLD.as_secs()
    ));
    out.conns = if open == HEADER_CONNS {
        open.to_string()
    } else {
        format!("{open} of {HEADER_CONNS}")
    };
    Ok(out)
}

/// `near-complete-200`, `ws-near-complete-200`: [`NEAR_CONNS`] connections (WebSocket ones
/// when `ws_path` is given) each send `head` and `body_len` bytes of body — an 8 MiB frame or
/// message but its last byte — then are held open for [`HOLD`].
async fn near_complete(
    addr: SocketAddr,
    ws_path: Option<String>,
    head: Bytes,
    body_len: usize,
) -> Result<Outcome, Error> {
    let body = Bytes::from(vec![b'x'; body_len]);
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + NEAR_SEND_LIMIT;
    let mut handles = Vec::new();
    for _ in 0..NEAR_CONNS {
        let (head, body, ws_path) = (head.clone(), body.clone(), ws_path.clone());
        handles.push(tokio::spawn(async move {
            let mut s = connect(addr).await?;
            if let Some(path) = &ws_path {
                ws_handshake(&mut s, addr, path).await?;
            }
            let mut sent = 0u64;
            let mut end = "complete".to_string();
            for part in [&head, &body] {
                match write_counted(&mut s, part, deadline, &mut sent).await {
                    Wrote::Done => {}
                    Wrote::Deadline => {
                        end = "send limit".into();
                        break;
                    }
                    Wrote::Failed(e) => {
                        end = format!("closed by server ({e})");
                        break;
                    }
                }
            }
            Ok::<_, Error>((s, sent, end))
        }));
    }
    let mut out = Outcome::default();
    let (mut ends, mut errors) = (Vec::new(), Vec::new());
    for h in handles {
        match tokio::time::timeout_at(deadline + CONNECT_TIMEOUT, h).await {
            Ok(Ok(Ok((s, sent, end)))) => {
                out.streams.push(s);
                out.sent += sent;
                ends.push(end);
            }
            Ok(Ok(Err(e))) => errors.push(e.to_string()),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => errors.push("client task overran its time limit".into()),
        }
    }
    out.notes.push(format!(
        "sends: {} in {:.1} s",
        tally(ends),
        t0.elapsed().as_secs_f64()
    ));
    if !errors.is_empty() {
        out.notes.push(format!("client errors: {}", tally(errors)));
    }
    tokio::time::sleep(HOLD).await;
    let closed = closed_by_server(&out.streams);
    out.notes.push(format!(
        "closed by server during the {} s hold: {closed}",
        HOLD.as_secs()
    ));
    out.conns = if out.streams.len() == NEAR_CONNS {
        NEAR_CONNS.to_string()
    } else {
        format!("{} of {NEAR_CONNS}", out.streams.len())
    };
    Ok(out)
}

/// Bytes `s` has queued but the peer has not acknowledged (`TIOCOUTQ`).
#[allow(unsafe_code)] // one plain ioctl on an open socket
fn unacked_bytes(s: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: the descriptor is open for the duration of the call and `n` is a valid, writable
    // c_int, which is what TIOCOUTQ writes.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (r == 0).then_some(n as usize)
}

/// `parked-rpc`: one connection sends [`PARKED_REQUESTS`] requests to `bench.Echo/Sleep`
/// (never answered) without a deadline and never reads; then half-closes and measures how long
/// until the server ends the session (the client reads EOF or a reset). If it has not within
/// [`PARKED_LIMIT`], the client resets the connection (`SO_LINGER` 0) and the time until the
/// server child's open files are back to `idle_fds` is reported as well: a FIN is queued behind
/// the bytes the server has not read, so it cannot reach a server that stopped reading.
async fn parked_rpc(addr: SocketAddr, pid: u32, idle_fds: Option<usize>) -> Result<Outcome, Error> {
    let mut s = connect(addr).await?;
    let body = pb_bytes_body(PARKED_BODY);
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + PARKED_LIMIT;
    let mut out = Outcome {
        conns: "1".into(),
        ..Outcome::default()
    };
    let mut written = 0u64;
    let mut end = "all written".to_string();
    'requests: for id in 1..=PARKED_REQUESTS {
        let head = rpc_request(id, 0, "Sleep", body.len());
        for part in [&head[..], &body[..]] {
            match write_counted(&mut s, part, deadline, &mut out.sent).await {
                Wrote::Done => {}
                Wrote::Deadline => {
                    end = format!("{} s write limit", PARKED_LIMIT.as_secs());
                    break 'requests;
                }
                Wrote::Failed(e) => {
                    end = format!("closed by server ({e})");
                    break 'requests;
                }
            }
        }
        written += 1;
    }
    out.notes.push(format!(
        "{written} of {PARKED_REQUESTS} requests written in {:.1} s ({end})",
        t0.elapsed().as_secs_f64()
    ));
    let unacked = unacked_bytes(&s);
    // Half-close.
    let fin = s.shutdown().await;
    let fin_at = Instant::now();
    let gone_by = tokio::time::Instant::now() + PARKED_LIMIT;
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let gone = loop {
        match tokio::time::timeout_at(gone_by, s.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) => break Some("EOF".to_string()),
            Ok(Ok(n)) => received += n,
            Ok(Err(e)) => break Some(format!("{:?}", e.kind())),
        }
    };
    let after = fin_at.elapsed().as_secs_f64();
    let queued = unacked.map_or(String::new(), |n| {
        format!(
            " (behind {:.1} MiB the server had not acknowledged)",
            n as f64 / MIB as f64
        )
    });
    let fin_ok = fin.is_ok();
    out.notes.push(match (fin, &gone) {
        (Err(e), _) => format!("FIN failed: {e}"),
        (Ok(()), Some(how)) => format!("after FIN{queued}: session gone in {after:.2} s ({how})"),
        (Ok(()), None) => format!(
            "after FIN{queued}: session not gone within {} s",
            PARKED_LIMIT.as_secs()
        ),
    });
    if received > 0 {
        out.notes.push(format!("{received} bytes received"));
    }
    if gone.is_some() || !fin_ok {
        out.streams.push(s);
        return Ok(out);
    }
    // Reset instead: an RST overtakes unsent data.
    s.set_zero_linger()?;
    drop(s);
    let reset_at = Instant::now();
    let idle_fds = idle_fds.ok_or("the server child's open files are unknown")?;
    let gone_after = loop {
        match open_fds(pid) {
            Some(n) if n > idle_fds => {}
            _ => break Some(reset_at.elapsed()),
        }
        if reset_at.elapsed() >= PARKED_LIMIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    out.notes.push(match gone_after {
        Some(t) => format!(
            "after a reset: server session gone (its socket closed) in {:.2} s",
            t.as_secs_f64()
        ),
        None => format!(
            "after a reset: server session still open after {} s",
            PARKED_LIMIT.as_secs()
        ),
    });
    Ok(out)
}

/// A MiB value for the table: one decimal, two below 1 MiB; "–" when unknown.
fn mib(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// The Markdown table.
fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| attack | server | clients/connections | sent (MiB) | idle RSS (MiB) | peak RSS (MiB) \
         | final RSS (MiB) | notes |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.attack.name(),
            r.attack.label(),
            r.conns,
            mib(r.sent_mib),
            mib(r.idle_mib),
            mib(r.peak_mib),
            mib(r.final_mib),
            r.notes.replace('|', "\\|")
        );
    }
    s
}
