//! qsocket's benchmark program.
//!
//! ```text
//! cargo run -p qsocket-bench --release -- echo [--secs S] [--inflight N]
//! cargo run -p qsocket-bench --release -- idle [--sessions N] [--fresh]
//! cargo run -p qsocket-bench --release -- rpc  [--secs S]
//! cargo run -p qsocket-bench --release -- all  [--secs S] [--inflight N] [--sessions N]
//! cargo run -p qsocket-bench --release -- compare [--impls A,B,…] [--n 1,32,256] [--secs S] [--rounds R]
//! cargo run -p qsocket-bench --release -- compare-idle [--impls A,B,…] [--sessions N]
//! cargo run -p qsocket-bench --release -- costs [--impls baseline,qsocket,qsocket-json] [--n 1,32]
//! cargo run -p qsocket-bench --release -- hostile [--attacks A,B,…] [--shared-budget-mib N]
//! ```
//!
//! * `echo`: for each of TCP, UDP and WebSocket, a qsocket echo server and a qsocket client
//!   (one session) in this process; N sender tasks each send a 64-byte frame and wait for its
//!   echo, again and again. One second of warm-up, then S seconds measured: messages per second
//!   and round-trip latency percentiles. Over UDP a message whose echo is not back within
//!   200 ms counts as lost.
//! * `idle`: server memory per idle TCP session. A child process (this program, hidden
//!   subcommand `idle-server`) runs a qsocket TCP echo server; this process opens N plain TCP
//!   connections to it, does one echo on each (none with `--fresh`: connections that never
//!   send anything), and compares the child's RSS before and after.
//! * `rpc [--secs S]`: unary echo calls through the RPC API per transport and codec at 1, 32
//!   and 256 calls in flight on one connection (see `rpc.rs`).
//! * `all`: everything below and above (about 15 minutes), as Markdown tables for the README.
//! * `compare`, `compare-idle`: every implementation (qsocket, a hand-written baseline, tarpc,
//!   tonic) side by side, server and client in separate pinned processes (see `compare.rs`).
//!   Five more run only when named with `--impls`, next to `qsocket` (TCP + protobuf), for
//!   what the layer seams and the shipped layers cost:
//!   * `qsocket-layers3`: a chain of three no-op layers on each side. The client's are generic
//!     `Invoke` wrappers that await the inner invoker (`client.layer(..)` three times); the
//!     server's are `ServerLayer`s that pass every call and observe outcomes
//!     (`OBSERVES = true`, `RpcServerBuilder::layer` three times), so the server times every
//!     call as a statistics layer would make it.
//!   * `qsocket-tower`: one tower layer on the client through the `TowerLayer` adapter (a
//!     hand-written `Layer` + `Service` forwarding `poll_ready` and `call`; the adapter copies
//!     the request's names and boxes each call); no server layers.
//!   * `qsocket-stats`: the client has a statistics layer outermost over a failover cluster
//!     layer (`failover(2)`; no call fails); the server has a statistics layer.
//!   * `qsocket-token`: `qsocket-stats` plus bearer-token auth (client layer under the cluster
//!     layer; server `Auth` with one token, after statistics).
//!   * `qsocket-accesskey`: `qsocket-stats` plus access-key auth (every call signed with
//!     HMAC-SHA256 over names, timestamp, nonce and the body's digest; the server verifies it
//!     and remembers its nonce).
//!   * `qsocket-macro`: the echo declared as a trait with `#[qsocket::service]`: the
//!     generated client (its cluster layer outermost, failfast) and server, the payload a plain
//!     `Bytes` argument carried as MessagePack (a map keyed by argument name).
//! * `costs`: per-call syscalls (strace) and instructions (callgrind) of the client and the
//!   server process, from two runs of fixed call counts (see `costs.rs`); `--impls` takes the
//!   same names as `compare`, the five `--impls`-only ones included.
//! * `hostile`: memory attacks (slow readers, header-only and almost complete frames, parked
//!   RPC calls) against a qsocket server with its default configuration in a child process
//!   (hidden subcommand `hostile-server`), a fresh one per attack: the child's idle, peak and
//!   final RSS (see `hostile.rs`).
//!
//! Progress goes to stderr, results to stdout.

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use qsocket::session::{Client, Ctx, EventListener, Server, Transport};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::LengthDelimitedCodec;

mod compare;
mod costs;
mod hostile;
mod impl_baseline;
mod impl_qsocket;
mod impl_tarpc;
mod impl_tonic;
mod rpc;

/// Heap allocations of this process (every `alloc` and `realloc`), for allocations per call.
pub(crate) static ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The system allocator, counting.
struct Counting;

#[allow(unsafe_code)]
// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Payload size of every echo message (the length prefix comes on top).
const PAYLOAD: usize = 64;
const WARMUP: Duration = Duration::from_secs(1);
/// Echo wait before a UDP message counts as lost.
const UDP_TIMEOUT: Duration = Duration::from_millis(200);
/// Echo wait over TCP and WebSocket (a timeout there would be a bug; it is reported as a loss).
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of messages one sender task sends, whatever the duration.
const MAX_PER_TASK: u64 = 100_000_000;
/// Connections opened at once by `idle`: below the server's listen backlog (1,024), or the
/// kernel drops SYNs and connects stall for a 1 s retransmit.
const BATCH: usize = 500;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        usage();
        return ExitCode::from(2);
    };
    let opts = match Opts::parse(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("qsocket-bench: {e}");
            usage();
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "echo" => cmd_echo(&opts).map(|rows| print!("{}", echo_table(&rows))),
        "idle" => cmd_idle(&opts).map(|r| println!("{}", r.line())),
        "rpc" => {
            rpc::cmd_rpc(opts.secs, &[1, 32, 256]).map(|rows| print!("{}", rpc::rpc_table(&rows)))
        }
        "all" => cmd_all(&opts),
        "compare" => opts
            .imps(&compare::Imp::ALL)
            .and_then(|imps| {
                let ns = opts.ns.as_deref().unwrap_or(&[1, 32, 256]);
                compare::cmd_compare(&imps, ns, opts.secs, opts.rounds)
            })
            .map(|t| print!("{t}")),
        "compare-idle" => opts
            .imps(&compare::Imp::ALL)
            .and_then(|imps| compare::cmd_compare_idle(&imps, opts.sessions))
            .map(|t| print!("{t}")),
        "costs" => opts
            .imps(&costs::DEFAULT_IMPS)
            .and_then(|imps| costs::cmd_costs(&imps, opts.ns.as_deref().unwrap_or(&[1, 32])))
            .map(|t| print!("{t}")),
        "serve" => opts
            .pos(0)
            .and_then(compare::Imp::parse)
            .and_then(compare::serve_main),
        "load" => (|| {
            let (imp, addr) = (compare::Imp::parse(opts.pos(0)?)?, opts.pos(1)?);
            let (n, secs) = (opts.pos(2)?.parse()?, opts.pos(3)?.parse()?);
            match opts.calls {
                Some(calls) => compare::load_calls(imp, addr, n, calls, secs),
                None => compare::load_main(imp, addr, n, secs),
            }
        })(),
        "idle-server" => idle_server(),
        "hostile" => hostile::cmd_hostile(opts.attacks.as_deref(), opts.shared_budget_mib)
            .map(|t| print!("{t}")),
        "hostile-server" => opts
            .pos(0)
            .and_then(|kind| hostile::hostile_server(kind, opts.shared_budget_mib)),
        "-h" | "--help" | "help" => {
            usage();
            Ok(())
        }
        other => Err(format!("unknown subcommand {other:?}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qsocket-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() {
    eprintln!(
        "usage: qsocket-bench echo [--secs S] [--inflight N]\n       \
         qsocket-bench idle [--sessions N] [--fresh]\n       \
         qsocket-bench rpc  [--secs S]\n       \
         qsocket-bench all  [--secs S] [--inflight N] [--sessions N] [--rounds R]   (everything)\n       \
         qsocket-bench compare [--impls A,B,…] [--n 1,32,256] [--secs S] [--rounds R]\n       \
         qsocket-bench compare-idle [--impls A,B,…] [--sessions N]\n       \
         qsocket-bench costs [--impls baseline,qsocket,qsocket-json] [--n 1,32]\n       \
         qsocket-bench hostile [--attacks A,B,…] [--shared-budget-mib N]\n\
         implementations: baseline, qsocket, qsocket-json, qsocket-udp, qsocket-ws, tarpc, tonic\n                 \
         (only with --impls: qsocket-layers3, qsocket-tower, qsocket-stats, qsocket-token, qsocket-accesskey, qsocket-macro)"
    );
}

struct Opts {
    secs: u64,
    inflight: usize,
    sessions: usize,
    rounds: usize,
    /// `--n`: callers in flight, for `compare` and `costs` (each has its default).
    ns: Option<Vec<usize>>,
    impls: Option<String>,
    /// `--calls`: the call count of the hidden `load` subcommand.
    calls: Option<u64>,
    /// `--attacks`: the attacks of `hostile` (comma-separated; default all).
    attacks: Option<String>,
    /// `--shared-budget-mib`: passed to the `hostile` server child.
    shared_budget_mib: Option<u64>,
    /// `--fresh`: `idle` opens connections that never send anything.
    fresh: bool,
    positional: Vec<String>,
}

impl Opts {
    fn pos(&self, i: usize) -> Result<&str, Error> {
        self.positional
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {}", i + 1).into())
    }

    /// `--impls`, or `default`.
    fn imps(&self, default: &[compare::Imp]) -> Result<Vec<compare::Imp>, Error> {
        match &self.impls {
            None => Ok(default.to_vec()),
            Some(list) => list.split(',').map(compare::Imp::parse).collect(),
        }
    }

    fn parse(args: &[String]) -> Result<Self, Error> {
        let mut o = Opts {
            secs: 3,
            inflight: 32,
            sessions: 10_000,
            rounds: 3,
            ns: None,
            impls: None,
            calls: None,
            attacks: None,
            shared_budget_mib: None,
            fresh: false,
            positional: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| format!("{flag} needs a value"))
                    .cloned()
            };
            match flag.as_str() {
                "--secs" => o.secs = value()?.parse()?,
                "--inflight" => o.inflight = value()?.parse()?,
                "--sessions" => o.sessions = value()?.parse()?,
                "--fresh" => o.fresh = true,
                "--rounds" => o.rounds = value()?.parse()?,
                "--n" => {
                    o.ns = Some(
                        value()?
                            .split(',')
                            .map(str::parse)
                            .collect::<Result<_, _>>()?,
                    )
                }
                "--calls" => o.calls = Some(value()?.parse()?),
                "--impls" => o.impls = Some(value()?),
                "--attacks" => o.attacks = Some(value()?),
                "--shared-budget-mib" => o.shared_budget_mib = Some(value()?.parse()?),
                f if !f.starts_with("--") => o.positional.push(f.to_string()),
                _ => return Err(format!("unknown option {flag:?}").into()),
            }
        }
        if o.secs == 0 || o.inflight == 0 || o.sessions == 0 {
            return Err("--secs, --inflight and --sessions must be at least 1".into());
        }
        if o.ns.as_ref().is_some_and(|ns| ns.contains(&0)) {
            return Err("--n values must be at least 1".into());
        }
        Ok(o)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------------------------------------
// echo

/// The server's listener: echoes every frame.
struct Echo;

impl EventListener for Echo {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        ctx.send(msg.freeze());
    }
}

/// The client's listener: hands each echo to the sender task named in its first 4 bytes.
struct Router {
    tasks: Arc<Vec<mpsc::UnboundedSender<BytesMut>>>,
}

impl EventListener for Router {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_message(&mut self, _ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        if msg.len() < 12 {
            return;
        }
        let task = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
        if let Some(tx) = self.tasks.get(task) {
            let _ = tx.send(msg);
        }
    }
}

/// What one transport measured.
struct EchoRow {
    transport: Transport,
    msgs_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    losses: u64,
    sent: u64,
}

/// What one sender task measured.
struct TaskResult {
    hist: Histogram<u64>,
    done: u64,
    lost: u64,
    sent: u64,
}

fn cmd_echo(opts: &Opts) -> Result<Vec<EchoRow>, Error> {
    let rt = runtime()?;
    let mut rows = Vec::new();
    for transport in [Transport::Tcp, Transport::Udp, Transport::Ws] {
        eprintln!(
            "echo {transport}: {} senders, {} s warm-up + {} s measured ...",
            opts.inflight,
            WARMUP.as_secs(),
            opts.secs
        );
        let row = rt.block_on(echo_one(transport, opts))?;
        eprintln!(
            "echo {transport}: {:.0} msgs/s, p50 {:.1} µs, p99 {:.1} µs, {} lost of {} sent",
            row.msgs_per_sec, row.p50_us, row.p99_us, row.losses, row.sent
        );
        rows.push(row);
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(rows)
}

async fn echo_one(transport: Transport, opts: &Opts) -> Result<EchoRow, Error> {
    let url = match transport {
        Transport::Ws => "ws://127.0.0.1:0/echo".to_string(),
        t => format!("{t}://127.0.0.1:0"),
    };
    let server = Server::builder(LengthDelimitedCodec::new(), || Echo)
        .bind(&url)
        .start()
        .await?;
    let endpoint = server
        .endpoint(transport)
        .ok_or("the server has no endpoint")?
        .to_string();

    let (txs, rxs): (Vec<_>, Vec<_>) = (0..opts.inflight)
        .map(|_| mpsc::unbounded_channel::<BytesMut>())
        .unzip();
    let tasks = Arc::new(txs);
    let client = Client::builder(&endpoint, LengthDelimitedCodec::new(), move || Router {
        tasks: tasks.clone(),
    })
    .start()
    .await?;
    let session = tokio::time::timeout(Duration::from_secs(5), client.session())
        .await
        .map_err(|_| format!("no {transport} session within 5 s"))??;

    let wait = if transport == Transport::Udp {
        UDP_TIMEOUT
    } else {
        STREAM_TIMEOUT
    };
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs(opts.secs);
    let mut handles = Vec::new();
    for (id, mut rx) in rxs.into_iter().enumerate() {
        let session = session.clone();
        handles.push(tokio::spawn(async move {
            let mut r = TaskResult {
                hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
                done: 0,
                lost: 0,
                sent: 0,
            };
            let mut payload = [0u8; PAYLOAD];
            payload[..4].copy_from_slice(&(id as u32).to_be_bytes());
            for seq in 0..MAX_PER_TASK {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                payload[4..12].copy_from_slice(&seq.to_be_bytes());
                session.send(Bytes::copy_from_slice(&payload)).await?;
                let measured = t0 >= measure_from;
                if measured {
                    r.sent += 1;
                }
                let deadline = tokio::time::Instant::from_std(t0 + wait);
                loop {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(m)) => {
                            if m[4..12] != seq.to_be_bytes() {
                                continue; // late echo of a message already counted as lost
                            }
                            if measured {
                                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                                r.hist.saturating_record(ns.max(1));
                                r.done += 1;
                            }
                            break;
                        }
                        Ok(None) => return Err::<TaskResult, Error>("echo channel closed".into()),
                        Err(_) => {
                            if measured {
                                r.lost += 1;
                            }
                            break;
                        }
                    }
                }
            }
            Ok(r)
        }));
    }

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut done, mut lost, mut sent) = (0u64, 0u64, 0u64);
    let mut failure: Option<Error> = None;
    for h in handles {
        // Every task ends by `end` plus one echo wait.
        let bound = end + wait + Duration::from_secs(5);
        match tokio::time::timeout_at(bound.into(), h).await {
            Ok(Ok(Ok(r))) => {
                hist.add(&r.hist)?;
                done += r.done;
                lost += r.lost;
                sent += r.sent;
            }
            Ok(Ok(Err(e))) => failure = Some(e),
            Ok(Err(e)) => failure = Some(e.into()),
            Err(_) => failure = Some("a sender task did not finish in time".into()),
        }
    }
    let measured = end.saturating_duration_since(measure_from).as_secs_f64();
    let _ =
        tokio::time::timeout(Duration::from_secs(3), client.close(Duration::from_secs(1))).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        server.shutdown(Duration::from_secs(2)),
    )
    .await;
    if let Some(e) = failure {
        return Err(format!("echo over {transport}: {e}").into());
    }
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(EchoRow {
        transport,
        msgs_per_sec: done as f64 / measured,
        p50_us: if done > 0 { q(0.5) } else { f64::NAN },
        p99_us: if done > 0 { q(0.99) } else { f64::NAN },
        losses: lost,
        sent,
    })
}

fn echo_table(rows: &[EchoRow]) -> String {
    let mut s = String::from(
        "| transport | msgs/s | p50 µs | p99 µs | losses |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {:.0} | {:.1} | {:.1} | {} of {} |\n",
            r.transport, r.msgs_per_sec, r.p50_us, r.p99_us, r.losses, r.sent
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------
// idle

struct IdleResult {
    sessions: usize,
    before_kib: u64,
    after_kib: u64,
    /// The connections never sent anything.
    fresh: bool,
}

impl IdleResult {
    fn per_session_kib(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / self.sessions as f64
    }

    fn line(&self) -> String {
        format!(
            "idle TCP sessions ({}): {} → server RSS {} KiB → {} KiB: {:.2} KiB per session",
            if self.fresh {
                "never used"
            } else {
                "after one echo"
            },
            self.sessions,
            self.before_kib,
            self.after_kib,
            self.per_session_kib()
        )
    }
}

/// Raises the soft limit of open files to the hard limit; returns the new soft limit.
#[allow(unsafe_code)] // two plain libc calls on a local struct
pub(crate) fn raise_nofile() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// This process's resident set size in KiB, from /proc/self/status.
fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The hidden `idle-server` subcommand: a qsocket TCP echo server on 127.0.0.1:0. Prints its
/// port, then answers each `rss` line on stdin with its VmRSS in KiB; exits at end of input.
fn idle_server() -> Result<(), Error> {
    raise_nofile();
    let rt = runtime()?;
    let server = rt.block_on(
        Server::builder(LengthDelimitedCodec::new(), || Echo)
            .bind("tcp://127.0.0.1:0")
            .start(),
    )?;
    let port = server
        .local_addr(Transport::Tcp)
        .ok_or("no TCP address")?
        .port();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{port}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "rss" => writeln!(out, "{}", vm_rss_kib().unwrap_or(0))?,
            "quit" => break,
            other => writeln!(out, "error: unknown command {other:?}")?,
        }
        out.flush()?;
    }
    drop(server);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The child process running `idle-server`; killed when dropped.
struct IdleChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl IdleChild {
    fn spawn() -> Result<(Self, u16), Error> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("idle-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err("no pipes to the child".into());
        };
        let mut me = IdleChild {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let port = me.read_line()?.parse()?;
        Ok((me, port))
    }

    fn read_line(&mut self) -> Result<String, Error> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("the idle-server child exited".into());
        }
        Ok(line.trim().to_string())
    }

    fn rss_kib(&mut self) -> Result<u64, Error> {
        writeln!(self.stdin, "rss")?;
        self.stdin.flush()?;
        let line = self.read_line()?;
        line.parse()
            .map_err(|e| format!("bad rss answer {line:?}: {e}").into())
    }
}

impl Drop for IdleChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens one connection and does one echo on it, so the server session is fully set up.
/// A connection to the idle server; unless `fresh`, after one echo on it.
async fn open_one(port: u16, fresh: bool) -> Result<TcpStream, Error> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    if fresh {
        return Ok(s);
    }
    let mut frame = BytesMut::with_capacity(4 + PAYLOAD);
    frame.put_u32(PAYLOAD as u32);
    frame.put_bytes(b'x', PAYLOAD);
    s.write_all(&frame).await?;
    let mut back = [0u8; 4 + PAYLOAD];
    s.read_exact(&mut back).await?;
    if back[..] != frame[..] {
        return Err("wrong echo".into());
    }
    Ok(s)
}

fn cmd_idle(opts: &Opts) -> Result<IdleResult, Error> {
    let n = opts.sessions;
    let limit = raise_nofile();
    if limit < (n + 64) as libc::rlim_t {
        return Err(format!("open-file limit is {limit}, too low for {n} sessions").into());
    }
    let (mut child, port) = IdleChild::spawn()?;
    eprintln!(
        "idle: server child pid {} on 127.0.0.1:{port}",
        child.child.id()
    );
    let rt = runtime()?;
    // Let the child's runtime settle before the baseline.
    std::thread::sleep(Duration::from_millis(300));
    let before = child.rss_kib()?;
    let t0 = Instant::now();
    let streams = rt.block_on(async {
        let mut streams = Vec::with_capacity(n);
        while streams.len() < n {
            let batch = BATCH.min(n - streams.len());
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..batch {
                set.spawn(tokio::time::timeout(
                    Duration::from_secs(10),
                    open_one(port, opts.fresh),
                ));
            }
            while let Some(r) = set.join_next().await {
                match r? {
                    Ok(Ok(s)) => streams.push(s),
                    Ok(Err(e)) => return Err(format!("session {}: {e}", streams.len()).into()),
                    Err(_) => return Err::<_, Error>("a connection took over 10 s".into()),
                }
            }
            if streams.len() % 2000 == 0 || streams.len() == n {
                eprintln!("idle: {} sessions open", streams.len());
            }
        }
        Ok(streams)
    })?;
    eprintln!(
        "idle: {n} sessions set up in {:.1} s, waiting 1 s",
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = child.rss_kib()?;
    drop(streams);
    drop(child);
    rt.shutdown_timeout(Duration::from_secs(1));
    let r = IdleResult {
        sessions: n,
        before_kib: before,
        after_kib: after,
        fresh: opts.fresh,
    };
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// all

fn cmd_all(opts: &Opts) -> Result<(), Error> {
    let rows = cmd_echo(opts)?;
    let rpc_rows = rpc::cmd_rpc(opts.secs, &[1, 32, 256])?;
    let idle = cmd_idle(opts)?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "qsocket-bench, {}: {cpus} CPUs ({model}); 64-byte echo, {} in flight over one session, \
         client and server in one process, {} s measured after {} s warm-up",
        today(),
        opts.inflight,
        opts.secs,
        WARMUP.as_secs()
    );
    println!();
    print!("{}", echo_table(&rows));
    println!();
    println!(
        "RPC unary echo (64-byte payload) through the public API, one connection; server and \
         client each on its own thread with a one-thread runtime:"
    );
    println!();
    print!("{}", rpc::rpc_table(&rpc_rows));
    println!();
    println!("{}", idle.line());
    // The side-by-side harness: every implementation, default settings of each part.
    let imps = compare::Imp::ALL;
    println!("\n## compare (calls/s, latency, CPU, allocations per call)");
    print!(
        "{}",
        compare::cmd_compare(&imps, &[1, 32, 256], opts.secs, opts.rounds)?
    );
    println!("\n## compare-idle (server memory per idle connection)");
    print!("{}", compare::cmd_compare_idle(&imps, opts.sessions)?);
    println!("\n## costs (syscalls and instructions per call)");
    print!("{}", costs::cmd_costs(&costs::DEFAULT_IMPS, &[1, 32])?);
    println!("\n## hostile (server memory under attack)");
    print!("{}", hostile::cmd_hostile(None, None)?);
    Ok(())
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
