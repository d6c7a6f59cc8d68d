//! `compare`: the side-by-side harness. Every implementation serves the same unary echo (64-byte
//! payload) over 127.0.0.1; the server and the client are separate processes (this program's
//! hidden `serve` and `load` subcommands), each on a one-thread tokio runtime and, where
//! `taskset` exists, pinned to its own core (server: CPU 0, client: CPU 1). ONE connection;
//! N caller tasks each loop `call().await`; 1 s warm-up, S s measured; rounds alternate the
//! implementations for each N, so a noisy machine hits all alike. Reported: median calls/s,
//! p50, p99, the ratio to the baseline of the same round, each process's CPU use, and heap
//! allocations per call on each side (a counting global allocator).
//!
//! `qsocket-layers3`, `qsocket-tower`, `qsocket-stats`, `qsocket-token`,
//! `qsocket-accesskey` and `qsocket-macro` ([`Imp::QsocketLayered`]) run only when named with
//! `--impls`: `qsocket` with layers that do nothing (what the seams cost), with the shipped
//! statistics, cluster and auth layers (what they cost), or declared as a trait with
//! `#[qsocket::service]` (what generated code costs).
//!
//! `compare-idle`: server RSS growth over 10,000 idle connections (one call on each first),
//! per connection.
//!
//! `load IMP ADDR N SECS --calls C` (used by `costs`): exactly C calls shared by the N callers,
//! no warm-up, SECS as the time limit.

use crate::impl_qsocket::Layers;
use crate::{impl_baseline, impl_qsocket, Error, ALLOCS, PAYLOAD};
use bytes::Bytes;
use hdrhistogram::Histogram;
use qsocket::rpc::Codec;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An implementation under test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Imp {
    /// qsocket RPC over a transport with a codec.
    Qsocket(&'static str, Codec),
    /// `qsocket` (TCP + protobuf) with layers that do nothing: what the layer seams cost.
    ///
    /// * `qsocket-layers3` ([`Layers::Noop3`]): the client has three no-op client layers, each
    ///   a generic `Invoke` wrapper that awaits the inner invoker (`client.layer(..)` three
    ///   times: three more futures and `Arc` hops per call); the server has three no-op
    ///   `ServerLayer`s with `OBSERVES = true` (`RpcServerBuilder::layer` three times), so it
    ///   reads the clock for every call's latency as a statistics layer makes it do.
    /// * `qsocket-tower` ([`Layers::Tower`]): the client has one hand-written tower layer whose
    ///   service forwards `poll_ready` and `call`, through `qsocket::rpc::TowerLayer` (the
    ///   adapter copies the names into owned strings and boxes each call); no server layers.
    QsocketLayered(Layers),
    /// The hand-written limit.
    Baseline,
    /// tarpc (bincode over TCP).
    Tarpc,
    /// tonic (gRPC over HTTP/2).
    Tonic,
}

impl Imp {
    /// Every implementation, in report order.
    pub const ALL: [Imp; 7] = [
        Imp::Baseline,
        Imp::Qsocket("tcp", Codec::Protobuf),
        Imp::Qsocket("tcp", Codec::Json),
        Imp::Qsocket("udp", Codec::Protobuf),
        Imp::Qsocket("ws", Codec::Protobuf),
        Imp::Tarpc,
        Imp::Tonic,
    ];

    /// Implementations that run only when named with `--impls`.
    pub const EXTRA: [Imp; 6] = [
        Imp::QsocketLayered(Layers::Noop3),
        Imp::QsocketLayered(Layers::Tower),
        Imp::QsocketLayered(Layers::Stats),
        Imp::QsocketLayered(Layers::Token),
        Imp::QsocketLayered(Layers::AccessKey),
        Imp::QsocketLayered(Layers::Macro),
    ];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Imp::Qsocket("tcp", Codec::Protobuf) => "qsocket",
            Imp::Qsocket("tcp", Codec::Json) => "qsocket-json",
            Imp::Qsocket("udp", _) => "qsocket-udp",
            Imp::Qsocket(_, _) => "qsocket-ws",
            Imp::QsocketLayered(Layers::Noop3) => "qsocket-layers3",
            Imp::QsocketLayered(Layers::Tower) => "qsocket-tower",
            Imp::QsocketLayered(Layers::Stats) => "qsocket-stats",
            Imp::QsocketLayered(Layers::Token) => "qsocket-token",
            Imp::QsocketLayered(Layers::AccessKey) => "qsocket-accesskey",
            Imp::QsocketLayered(Layers::Macro) => "qsocket-macro",
            Imp::Baseline => "baseline",
            Imp::Tarpc => "tarpc",
            Imp::Tonic => "tonic",
        }
    }

    /// The implementation named `s` (in [`Imp::ALL`] or [`Imp::EXTRA`]).
    pub fn parse(s: &str) -> Result<Imp, Error> {
        Imp::ALL
            .into_iter()
            .chain(Imp::EXTRA)
            .find(|i| i.name() == s)
            .ok_or_else(|| format!("unknown implementation {s:?}").into())
    }
}

fn one_thread() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// CPU time of this process (user + system), in microseconds.
pub fn cpu_us() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: getrusage fills the struct we own.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A client of any implementation.
#[derive(Clone)]
enum AnyClient {
    Qsocket(impl_qsocket::Client),
    QsocketNoop3(impl_qsocket::Client<impl_qsocket::Noop3Invoke>),
    QsocketTower(impl_qsocket::Client<impl_qsocket::TowerInvoke>),
    QsocketStats(impl_qsocket::Client<impl_qsocket::StatsInvokeChain>),
    QsocketToken(impl_qsocket::Client<impl_qsocket::TokenInvoke>),
    QsocketAccessKey(impl_qsocket::Client<impl_qsocket::AccessKeyInvoke>),
    QsocketMacro(impl_qsocket::MacroEchoClient),
    Baseline(impl_baseline::Client),
    Tarpc(crate::impl_tarpc::Client),
    Tonic(crate::impl_tonic::Client),
}

impl AnyClient {
    async fn connect(imp: Imp, addr: &str) -> Result<AnyClient, Error> {
        Ok(match imp {
            Imp::Qsocket(_, codec) => {
                AnyClient::Qsocket(impl_qsocket::Client::connect(addr, codec).await?)
            }
            Imp::QsocketLayered(Layers::Noop3) => {
                AnyClient::QsocketNoop3(impl_qsocket::connect_noop3(addr).await?)
            }
            Imp::QsocketLayered(Layers::Tower) => {
                AnyClient::QsocketTower(impl_qsocket::connect_tower(addr).await?)
            }
            Imp::QsocketLayered(Layers::Stats) => {
                AnyClient::QsocketStats(impl_qsocket::connect_stats(addr).await?)
            }
            Imp::QsocketLayered(Layers::Token) => {
                AnyClient::QsocketToken(impl_qsocket::connect_token(addr).await?)
            }
            Imp::QsocketLayered(Layers::AccessKey) => {
                AnyClient::QsocketAccessKey(impl_qsocket::connect_access_key(addr).await?)
            }
            Imp::QsocketLayered(Layers::Macro) => {
                AnyClient::QsocketMacro(impl_qsocket::connect_macro(addr).await?)
            }
            Imp::Baseline => {
                AnyClient::Baseline(impl_baseline::Client::connect(addr.parse()?).await?)
            }
            Imp::Tarpc => {
                AnyClient::Tarpc(crate::impl_tarpc::Client::connect(addr.parse()?).await?)
            }
            Imp::Tonic => {
                AnyClient::Tonic(crate::impl_tonic::Client::connect(addr.parse()?).await?)
            }
        })
    }

    async fn call(&self, payload: Bytes) -> Result<Bytes, Error> {
        match self {
            AnyClient::Qsocket(c) => c.call(payload).await,
            AnyClient::QsocketNoop3(c) => c.call(payload).await,
            AnyClient::QsocketTower(c) => c.call(payload).await,
            AnyClient::QsocketStats(c) => c.call(payload).await,
            AnyClient::QsocketToken(c) => c.call(payload).await,
            AnyClient::QsocketAccessKey(c) => c.call(payload).await,
            AnyClient::QsocketMacro(c) => {
                use impl_qsocket::MacroEchoApi;
                Ok(c.echo(payload).await?)
            }
            AnyClient::Baseline(c) => c.call(payload).await,
            AnyClient::Tarpc(c) => c.call(payload).await,
            AnyClient::Tonic(c) => c.call(payload).await,
        }
    }
}

/// One implementation's client as the load loops use it. Each loop is compiled for one
/// implementation ([`with_client!`]): dispatching every call through [`AnyClient`] would make
/// each call's code and state those of a function that holds every implementation's call
/// (the largest one's state, and a call path spread over all of their code).
trait Caller: Clone + Send + Sync + 'static {
    fn call(
        &self,
        payload: Bytes,
    ) -> impl std::future::Future<Output = Result<Bytes, Error>> + Send;
}

impl<I: qsocket::rpc::Invoke> Caller for impl_qsocket::Client<I> {
    fn call(
        &self,
        payload: Bytes,
    ) -> impl std::future::Future<Output = Result<Bytes, Error>> + Send {
        impl_qsocket::Client::call(self, payload)
    }
}

impl Caller for impl_qsocket::MacroEchoClient {
    async fn call(&self, payload: Bytes) -> Result<Bytes, Error> {
        use impl_qsocket::MacroEchoApi;
        Ok(self.echo(payload).await?)
    }
}

/// `Caller` for clients whose own `call` already has its shape.
macro_rules! caller_by_own_call {
    ($($client:ty),*) => {$(
        impl Caller for $client {
            fn call(
                &self,
                payload: Bytes,
            ) -> impl std::future::Future<Output = Result<Bytes, Error>> + Send {
                <$client>::call(self, payload)
            }
        }
    )*};
}

caller_by_own_call!(
    impl_baseline::Client,
    crate::impl_tarpc::Client,
    crate::impl_tonic::Client
);

/// `$run(client, $args…).await` with the client of `$any`'s own type.
macro_rules! with_client {
    ($any:expr, $run:ident($($arg:expr),*)) => {
        match $any {
            AnyClient::Qsocket(c) => $run(c, $($arg),*).await,
            AnyClient::QsocketNoop3(c) => $run(c, $($arg),*).await,
            AnyClient::QsocketTower(c) => $run(c, $($arg),*).await,
            AnyClient::QsocketStats(c) => $run(c, $($arg),*).await,
            AnyClient::QsocketToken(c) => $run(c, $($arg),*).await,
            AnyClient::QsocketAccessKey(c) => $run(c, $($arg),*).await,
            AnyClient::QsocketMacro(c) => $run(c, $($arg),*).await,
            AnyClient::Baseline(c) => $run(c, $($arg),*).await,
            AnyClient::Tarpc(c) => $run(c, $($arg),*).await,
            AnyClient::Tonic(c) => $run(c, $($arg),*).await,
        }
    };
}

/// `serve IMP`: runs a server, prints `ADDR <address>`, answers `stats` lines on stdin with
/// `STATS allocs=… cpu_us=… rss_kib=…`, exits at end of input.
pub fn serve_main(imp: Imp) -> Result<(), Error> {
    let rt = one_thread()?;
    rt.block_on(async move {
        let mut _keep = None;
        let addr = match imp {
            Imp::Qsocket(t, _) => {
                let url = match t {
                    "ws" => "ws://127.0.0.1:0/rpc".to_string(),
                    t => format!("{t}://127.0.0.1:0"),
                };
                let server = impl_qsocket::serve(&url).await?;
                let ep = server.local_endpoints()[0].to_string();
                _keep = Some(server);
                ep
            }
            Imp::QsocketLayered(layers) => {
                let server = impl_qsocket::serve_layered("tcp://127.0.0.1:0", layers).await?;
                let ep = server.local_endpoints()[0].to_string();
                _keep = Some(server);
                ep
            }
            other => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?.to_string();
                tokio::spawn(async move {
                    let r = match other {
                        Imp::Baseline => impl_baseline::serve(listener).await,
                        Imp::Tarpc => crate::impl_tarpc::serve(listener).await,
                        _ => crate::impl_tonic::serve(listener).await,
                    };
                    if let Err(e) = r {
                        eprintln!("serve: {e}");
                    }
                });
                addr
            }
        };
        println!("ADDR {addr}");
        std::io::stdout().flush()?;
        std::thread::spawn(|| {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                if line.trim() == "stats" {
                    println!(
                        "STATS allocs={} cpu_us={} rss_kib={}",
                        ALLOCS.load(Ordering::Relaxed),
                        cpu_us(),
                        rss_kib()
                    );
                    let _ = std::io::stdout().flush();
                }
            }
            std::process::exit(0);
        });
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// `load IMP ADDR N SECS`: N callers on one connection; prints `MEASURE_START`, `MEASURE_END`
/// and `RESULT …` lines.
pub fn load_main(imp: Imp, addr: &str, n: usize, secs: u64) -> Result<(), Error> {
    let rt = one_thread()?;
    rt.block_on(async move {
        let client = AnyClient::connect(imp, addr).await?;
        with_client!(client, load_timed(n, secs))
    })
}

async fn load_timed<C: Caller>(client: C, n: usize, secs: u64) -> Result<(), Error> {
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let warm_end = Instant::now() + Duration::from_secs(1);
    let end = warm_end + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
                let (mut done, mut errors) = (0u64, 0u64);
                for _ in 0..100_000_000u64 {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let r = client.call(payload.clone()).await;
                    let ok = matches!(&r, Ok(p) if p.len() == PAYLOAD);
                    if t0 >= warm_end {
                        if ok {
                            done += 1;
                            let _ = hist.record(t0.elapsed().as_nanos() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                }
                (hist, done, errors)
            })
        })
        .collect();
    tokio::time::sleep_until(warm_end.into()).await;
    let (a0, c0) = (ALLOCS.load(Ordering::Relaxed), cpu_us());
    println!("MEASURE_START");
    std::io::stdout().flush()?;
    tokio::time::sleep_until(end.into()).await;
    let (a1, c1) = (ALLOCS.load(Ordering::Relaxed), cpu_us());
    println!("MEASURE_END");
    std::io::stdout().flush()?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut done, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (h, d, e) = t.await?;
        hist.add(&h)?;
        done += d;
        errors += e;
    }
    println!(
        "RESULT calls={done} errors={errors} p50_ns={} p99_ns={} allocs={} cpu_us={}",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        a1 - a0,
        c1 - c0
    );
    Ok(())
}

/// `load IMP ADDR N SECS --calls C`: N callers on one connection share exactly `calls` calls
/// (an atomic counter), without warm-up, within `secs` seconds; prints
/// `RESULT calls=… errors=…`.
pub fn load_calls(imp: Imp, addr: &str, n: usize, calls: u64, secs: u64) -> Result<(), Error> {
    let rt = one_thread()?;
    rt.block_on(async move {
        let client = AnyClient::connect(imp, addr).await?;
        with_client!(client, load_counted(n, calls, secs))
    })
}

async fn load_counted<C: Caller>(client: C, n: usize, calls: u64, secs: u64) -> Result<(), Error> {
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let next = Arc::new(AtomicU64::new(0));
    let tasks = (0..n).map(|_| {
        let (client, payload, next) = (client.clone(), payload.clone(), next.clone());
        tokio::spawn(async move {
            let (mut done, mut errors) = (0u64, 0u64);
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                match client.call(payload.clone()).await {
                    Ok(p) if p.len() == PAYLOAD => done += 1,
                    _ => errors += 1,
                }
            }
            (done, errors)
        })
    });
    let all = futures_util::future::join_all(tasks);
    let results = tokio::time::timeout(Duration::from_secs(secs), all)
        .await
        .map_err(|_| format!("{calls} calls took over {secs} s"))?;
    let (mut done, mut errors) = (0u64, 0u64);
    for r in results {
        let (d, e) = r?;
        done += d;
        errors += e;
    }
    println!("RESULT calls={done} errors={errors}");
    std::io::stdout().flush()?;
    Ok(())
}

/// Starts this program with `args`, its stdin and stdout piped: pinned to `cpu` with `taskset`
/// where it exists, and run under the command `wrap` (e.g. `strace -c -o FILE`) unless empty.
pub(crate) fn spawn_self(
    cpu: Option<u32>,
    wrap: &[String],
    args: &[String],
) -> Result<Child, Error> {
    let exe = std::env::current_exe()?;
    let taskset = cpu.filter(|_| Command::new("taskset").arg("-V").output().is_ok());
    let mut prefix: Vec<std::ffi::OsString> = Vec::new();
    if let Some(c) = taskset {
        prefix.extend(["taskset".into(), "-c".into(), c.to_string().into()]);
    }
    prefix.extend(wrap.iter().map(Into::into));
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(&exe);
            cmd
        }
        None => Command::new(&exe),
    };
    Ok(cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// Waits at most `limit` for `child` to exit; kills it after that.
pub(crate) fn wait_bounded(child: &mut Child, limit: Duration) -> Result<ExitStatus, Error> {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "process {} did not exit within {} s",
                child.id(),
                limit.as_secs()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number after `key=` in `line`, 0 if absent.
pub(crate) fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A started server process (`serve IMP`); it exits when its stdin closes, so also when this
/// is dropped.
pub(crate) struct ServerProc {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    /// The address it listens on.
    pub(crate) addr: String,
}

/// How long a server may take to exit once its stdin is closed (under valgrind, callgrind
/// writes its profile then).
const SERVER_EXIT: Duration = Duration::from_secs(60);

impl ServerProc {
    /// Starts `serve IMP`, pinned to `cpu`, under `wrap` (see [`spawn_self`]).
    pub(crate) fn start(imp: Imp, cpu: Option<u32>, wrap: &[String]) -> Result<ServerProc, Error> {
        let mut child = spawn_self(cpu, wrap, &["serve".into(), imp.name().into()])?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let addr = line
            .strip_prefix("ADDR ")
            .ok_or_else(|| format!("server said {line:?}"))?
            .trim()
            .to_string();
        Ok(ServerProc { child, out, addr })
    }

    /// `(allocs, cpu_us, rss_kib)`.
    fn stats(&mut self) -> Result<(u64, u64, u64), Error> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        stdin.write_all(b"stats\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        Ok((
            field(&line, "allocs"),
            field(&line, "cpu_us"),
            field(&line, "rss_kib"),
        ))
    }

    /// Closes its stdin and waits (bounded) for it to exit.
    pub(crate) fn stop(mut self) -> Result<ExitStatus, Error> {
        drop(self.child.stdin.take());
        wait_bounded(&mut self.child, SERVER_EXIT)
    }
}

/// One measured point.
#[derive(Debug, Clone, Copy, Default)]
pub struct Point {
    calls_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    client_cpu: f64,
    server_cpu: f64,
    client_allocs: f64,
    server_allocs: f64,
}

fn run_point(imp: Imp, n: usize, secs: u64) -> Result<Point, Error> {
    let mut server = ServerProc::start(imp, Some(0), &[])?;
    let mut client = spawn_self(
        Some(1),
        &[],
        &[
            "load".into(),
            imp.name().into(),
            server.addr.clone(),
            n.to_string(),
            secs.to_string(),
        ],
    )?;
    let out = BufReader::new(client.stdout.take().ok_or("no stdout")?);
    let (mut s0, mut s1) = ((0, 0, 0), (0, 0, 0));
    let mut result = None;
    for line in out.lines() {
        let line = line?;
        match line.as_str() {
            "MEASURE_START" => s0 = server.stats()?,
            "MEASURE_END" => s1 = server.stats()?,
            l if l.starts_with("RESULT") => result = Some(l.to_string()),
            _ => {}
        }
    }
    let status = client.wait()?;
    server.stop()?;
    let r =
        result.ok_or_else(|| format!("{} x{n}: the load process failed ({status})", imp.name()))?;
    let calls = field(&r, "calls").max(1) as f64;
    let window = secs as f64 * 1e6;
    Ok(Point {
        calls_per_sec: calls / secs as f64,
        p50_us: field(&r, "p50_ns") as f64 / 1000.0,
        p99_us: field(&r, "p99_ns") as f64 / 1000.0,
        errors: field(&r, "errors"),
        client_cpu: 100.0 * field(&r, "cpu_us") as f64 / window,
        server_cpu: 100.0 * (s1.1.saturating_sub(s0.1)) as f64 / window,
        client_allocs: field(&r, "allocs") as f64 / calls,
        server_allocs: (s1.0.saturating_sub(s0.0)) as f64 / calls,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the comparison and returns the Markdown report.
pub fn cmd_compare(imps: &[Imp], ns: &[usize], secs: u64, rounds: usize) -> Result<String, Error> {
    // results[n][imp] = points of every round
    let mut results: Vec<Vec<Vec<Point>>> = vec![vec![Vec::new(); imps.len()]; ns.len()];
    for round in 1..=rounds {
        for (ni, &n) in ns.iter().enumerate() {
            for (ii, &imp) in imps.iter().enumerate() {
                eprintln!("round {round}/{rounds}: {} x{n} ...", imp.name());
                let p = run_point(imp, n, secs)?;
                eprintln!(
                    "  {:.0} calls/s, p50 {:.1} µs, p99 {:.1} µs, cpu client {:.0}% server {:.0}%, allocs/call client {:.2} server {:.2}, errors {}",
                    p.calls_per_sec, p.p50_us, p.p99_us, p.client_cpu, p.server_cpu, p.client_allocs, p.server_allocs, p.errors
                );
                results[ni][ii].push(p);
            }
        }
    }
    let base = imps.iter().position(|i| *i == Imp::Baseline);
    let mut out = String::new();
    for (ni, &n) in ns.iter().enumerate() {
        out.push_str(&format!(
            "\n**{n} in flight**\n\n| implementation | calls/s | × baseline | p50 µs | × baseline | p99 µs | CPU client / server | allocs/call client / server | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        ));
        for (ii, imp) in imps.iter().enumerate() {
            let pts = &results[ni][ii];
            let ratio = |f: fn(&Point) -> f64| {
                base.map(|b| {
                    median(
                        pts.iter()
                            .zip(&results[ni][b])
                            .map(|(p, q)| f(p) / f(q).max(f64::MIN_POSITIVE))
                            .collect(),
                    )
                })
                .unwrap_or(f64::NAN)
            };
            let m = |f: fn(&Point) -> f64| median(pts.iter().map(f).collect());
            out.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.1} | {:.2} | {:.1} | {:.0}% / {:.0}% | {:.2} / {:.2} | {} |\n",
                imp.name(),
                m(|p| p.calls_per_sec),
                ratio(|p| p.calls_per_sec),
                m(|p| p.p50_us),
                ratio(|p| p.p50_us),
                m(|p| p.p99_us),
                m(|p| p.client_cpu),
                m(|p| p.server_cpu),
                m(|p| p.client_allocs),
                m(|p| p.server_allocs),
                pts.iter().map(|p| p.errors).sum::<u64>(),
            ));
        }
    }
    Ok(out)
}

/// Server RSS growth per idle connection, for each implementation.
pub fn cmd_compare_idle(imps: &[Imp], sessions: usize) -> Result<String, Error> {
    crate::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut out =
        String::from("\n| implementation | server RSS per idle connection |\n| --- | ---: |\n");
    for &imp in imps {
        if matches!(imp, Imp::Qsocket("udp", _)) {
            continue; // UDP has no connections
        }
        let mut server = ServerProc::start(imp, None, &[])?;
        let before = server.stats()?.2;
        let addr = server.addr.clone();
        let held = rt.block_on(async {
            let mut held = Vec::with_capacity(sessions);
            while held.len() < sessions {
                let batch = 500.min(sessions - held.len());
                let conns = (0..batch).map(|_| async {
                    let c = AnyClient::connect(imp, &addr).await?;
                    c.call(Bytes::from_static(b"one call")).await?;
                    Ok::<_, Error>(c)
                });
                for c in futures_util::future::join_all(conns).await {
                    held.push(c?);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Error>(held)
        })?;
        let after = server.stats()?.2;
        let per = (after.saturating_sub(before)) as f64 / sessions as f64;
        eprintln!(
            "idle {}: {before} KiB -> {after} KiB over {sessions}: {per:.2} KiB each",
            imp.name()
        );
        out.push_str(&format!("| {} | {per:.2} KiB |\n", imp.name()));
        drop(held);
        server.stop()?;
    }
    Ok(out)
}
