//! Invoke statistics per service and method, on the client and on the server: calls,
//! successes, errors by status, calls in flight, retries and hedges, and latency percentiles
//! from a histogram.
//!
//! [`StatsLayer`] records them; it is both a client layer and a server layer. Every thread
//! records into a shard of its own (a lock no other thread takes while calls run), and a
//! [`Stats::snapshot`] merges the shards. The snapshot renders as a table (`Display`) and as
//! Prometheus text ([`Stats::prometheus`]); [`MetricsServer`] (feature `metrics`) serves that
//! at `/metrics` over HTTP.

#[cfg(feature = "metrics")]
mod http;
mod prometheus;

#[cfg(feature = "metrics")]
pub use http::MetricsServer;

use super::client::{ClientLayer, Invoke, Request, Response};
use super::context::CallContext;
use super::server::{Admit, ServerLayer};
use super::status::{Code, Status};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Latencies are recorded in microseconds, from 1 µs to an hour, to 2 significant digits.
const MAX_MICROS: u64 = 3_600_000_000;

/// How many status codes there are (`Code as usize` indexes the error counts).
const CODES: usize = 17;

/// Which side of a call statistics describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Calls this process made.
    Client,
    /// Calls this process served.
    Server,
}

impl Side {
    /// `"client"` or `"server"`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// The counts of one method in one shard.
struct Entry {
    service: Box<str>,
    method: Box<str>,
    calls: u64,
    ok: u64,
    errors: [u64; CODES],
    /// Started minus ended here (a call may end on another thread's shard).
    in_flight: i64,
    retries: u64,
    hedges: u64,
    latency: Option<Histogram<u64>>,
}

impl Entry {
    fn new(service: &str, method: &str) -> Self {
        Entry {
            service: service.into(),
            method: method.into(),
            calls: 0,
            ok: 0,
            errors: [0; CODES],
            in_flight: 0,
            retries: 0,
            hedges: 0,
            latency: None,
        }
    }
}

/// One thread's counts.
#[derive(Default)]
struct Shard {
    entries: Mutex<Vec<Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shard {
    /// Runs `f` on the entry of `service.method` (made on first use).
    #[inline]
    fn with<R>(&self, service: &str, method: &str, f: impl FnOnce(usize, &mut Entry) -> R) -> R {
        let mut entries = lock(&self.entries);
        // Most shards see a handful of methods: a short search, the last one used first.
        let i = match entries
            .iter()
            .rposition(|e| &*e.method == method && &*e.service == service)
        {
            Some(i) => i,
            None => {
                entries.push(Entry::new(service, method));
                entries.len() - 1
            }
        };
        f(i, &mut entries[i])
    }
}

/// A call being counted: where its counts are (the shard of the thread it started on). A
/// ticket dropped without [`end`](Ticket::end) — its call was given up by the caller — counts
/// the call as `cancelled`.
#[derive(Debug)]
#[must_use = "a started call is counted in flight until its ticket ends it"]
pub struct Ticket {
    shard: Arc<Shard>,
    index: usize,
    ended: bool,
}

impl Ticket {
    /// Records the end of the call: its outcome, latency, and the retries and hedges a
    /// strategy sent for it.
    #[inline]
    pub fn end(mut self, outcome: Result<(), Code>, latency: Duration, retries: u32, hedges: u32) {
        self.ended = true;
        self.record(outcome, Some(latency), retries, hedges);
    }

    fn record(
        &self,
        outcome: Result<(), Code>,
        latency: Option<Duration>,
        retries: u32,
        hedges: u32,
    ) {
        let mut entries = lock(&self.shard.entries);
        let Some(e) = entries.get_mut(self.index) else {
            return;
        };
        e.in_flight -= 1;
        match outcome {
            Ok(()) => e.ok += 1,
            Err(code) => e.errors[code as usize % CODES] += 1,
        }
        e.retries += u64::from(retries);
        e.hedges += u64::from(hedges);
        let Some(latency) = latency else {
            return;
        };
        if e.latency.is_none() {
            e.latency = Histogram::new_with_bounds(1, MAX_MICROS, 2).ok();
        }
        if let Some(h) = e.latency.as_mut() {
            h.saturating_record((latency.as_micros() as u64).clamp(1, MAX_MICROS));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.ended {
            self.record(Err(Code::Cancelled), None, 0, 0);
        }
    }
}

impl fmt::Debug for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shard")
    }
}

struct Registry {
    id: usize,
    side: Side,
    shards: Mutex<Vec<Arc<Shard>>>,
}

/// A thread's shard of one registry: the registry's id, the registry, the shard.
type ThreadShard = (usize, Weak<Registry>, Arc<Shard>);

thread_local! {
    /// This thread's shard of every registry it recorded into (registries are few).
    static SHARDS: RefCell<Vec<ThreadShard>> = const { RefCell::new(Vec::new()) };
}

/// Invoke statistics of one side (client or server): cheap to clone (one `Arc`), shared by
/// the layers that record into it and the code that reads it.
///
/// ```
/// use qsocket::rpc::{Side, Stats};
/// let stats = Stats::new(Side::Client);
/// assert!(stats.snapshot().methods.is_empty());
/// ```
#[derive(Clone)]
pub struct Stats {
    registry: Arc<Registry>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("side", &self.registry.side)
            .finish_non_exhaustive()
    }
}

impl Stats {
    /// Empty statistics of `side`.
    pub fn new(side: Side) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        Stats {
            registry: Arc::new(Registry {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                side,
                shards: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Which side these statistics describe.
    pub fn side(&self) -> Side {
        self.registry.side
    }

    /// The layer that records into these statistics (a client layer and a server layer).
    pub fn layer(&self) -> StatsLayer {
        StatsLayer {
            stats: self.clone(),
        }
    }

    /// This thread's shard.
    #[inline]
    fn shard(&self) -> Arc<Shard> {
        let id = self.registry.id;
        SHARDS.with(|cell| {
            let Ok(mut shards) = cell.try_borrow_mut() else {
                // Re-entered (cannot happen: nothing runs inside); a shard of its own.
                return self.new_shard();
            };
            if let Some((_, _, s)) = shards.iter().find(|(i, _, _)| *i == id) {
                return s.clone();
            }
            // Forget the shards of registries that are gone.
            shards.retain(|(_, r, _)| r.strong_count() > 0);
            let s = self.new_shard();
            shards.push((id, Arc::downgrade(&self.registry), s.clone()));
            s
        })
    }

    fn new_shard(&self) -> Arc<Shard> {
        let s = Arc::new(Shard::default());
        lock(&self.registry.shards).push(s.clone());
        s
    }

    /// Records the start of a call; the ticket ends it ([`Ticket::end`]).
    #[inline]
    pub fn start(&self, service: &str, method: &str) -> Ticket {
        let shard = self.shard();
        let index = shard.with(service, method, |i, e| {
            e.calls += 1;
            e.in_flight += 1;
            i
        });
        Ticket {
            shard,
            index,
            ended: false,
        }
    }
    /// Every method's counts, merged over the shards, sorted by service and method.
    pub fn snapshot(&self) -> StatsSnapshot {
        let shards: Vec<Arc<Shard>> = lock(&self.registry.shards).clone();
        let mut merged: Vec<(Entry, Histogram<u64>)> = Vec::new();
        for shard in shards {
            let entries = lock(&shard.entries);
            for e in entries.iter() {
                let i = match merged
                    .iter()
                    .position(|(m, _)| m.service == e.service && m.method == e.method)
                {
                    Some(i) => i,
                    None => {
                        let Ok(h) = Histogram::new_with_bounds(1, MAX_MICROS, 2) else {
                            continue;
                        };
                        merged.push((Entry::new(&e.service, &e.method), h));
                        merged.len() - 1
                    }
                };
                let (m, h) = &mut merged[i];
                m.calls += e.calls;
                m.ok += e.ok;
                for (a, b) in m.errors.iter_mut().zip(e.errors) {
                    *a += b;
                }
                m.in_flight += e.in_flight;
                m.retries += e.retries;
                m.hedges += e.hedges;
                if let Some(l) = &e.latency {
                    let _ = h.add(l);
                }
            }
        }
        let mut methods: Vec<MethodStats> = merged
            .into_iter()
            .map(|(e, h)| {
                let q =
                    |q: f64| (!h.is_empty()).then(|| Duration::from_micros(h.value_at_quantile(q)));
                MethodStats {
                    service: e.service.into(),
                    method: e.method.into(),
                    calls: e.calls,
                    ok: e.ok,
                    errors: e
                        .errors
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(c, n)| (Code::from_u16(c as u16), *n))
                        .collect(),
                    in_flight: e.in_flight.max(0) as u64,
                    retries: e.retries,
                    hedges: e.hedges,
                    p50: q(0.5),
                    p90: q(0.9),
                    p99: q(0.99),
                    max: (!h.is_empty()).then(|| Duration::from_micros(h.max())),
                }
            })
            .collect();
        methods.sort_by(|a, b| (&a.service, &a.method).cmp(&(&b.service, &b.method)));
        StatsSnapshot {
            side: self.registry.side,
            methods,
        }
    }

    /// The snapshot in Prometheus text format (see [`StatsSnapshot::encode_prometheus`]).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        prometheus::encode(&[self.snapshot()], &mut out);
        out
    }
}

/// The counts of one method (see [`Stats::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MethodStats {
    /// The service.
    pub service: String,
    /// The method.
    pub method: String,
    /// Calls started.
    pub calls: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed, by status code.
    pub errors: Vec<(Code, u64)>,
    /// Calls started and not ended.
    pub in_flight: u64,
    /// Retries sent for these calls (client, under a cluster layer).
    pub retries: u64,
    /// Hedges and extra forks sent for these calls.
    pub hedges: u64,
    /// Latency percentiles and maximum of ended calls (`None` before the first).
    pub p50: Option<Duration>,
    /// 90th percentile.
    pub p90: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
    /// Maximum.
    pub max: Option<Duration>,
}

impl MethodStats {
    /// Failed calls (all codes).
    pub fn failed(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }

    /// Failed calls with `code`.
    pub fn errors_of(&self, code: Code) -> u64 {
        self.errors
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(0, |(_, n)| *n)
    }
}

/// Every method's counts at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Client or server.
    pub side: Side,
    /// By service and method.
    pub methods: Vec<MethodStats>,
}

impl StatsSnapshot {
    /// The counts of `service.method`, if it was called.
    pub fn method(&self, service: &str, method: &str) -> Option<&MethodStats> {
        self.methods
            .iter()
            .find(|m| m.service == service && m.method == method)
    }

    /// Appends the snapshot to `out` in Prometheus text format: counters
    /// `qsocket_rpc_calls_total`, `qsocket_rpc_errors_total` (label `code`),
    /// `qsocket_rpc_retries_total`, `qsocket_rpc_hedges_total`, gauges `qsocket_rpc_in_flight`
    /// and `qsocket_rpc_latency_seconds` (label `quantile`: 0.5, 0.9, 0.99, 1), all labelled
    /// `side`, `service` and `method`.
    pub fn encode_prometheus(&self, out: &mut String) {
        prometheus::encode(std::slice::from_ref(self), out);
    }
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2}", d.as_secs_f64() * 1000.0),
        None => "-".into(),
    }
}

/// A table: one row per method (latencies in milliseconds).
impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = [
            "service",
            "method",
            "calls",
            "ok",
            "errors",
            "in flight",
            "retries",
            "hedges",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
        ];
        let rows: Vec<[String; 12]> = self
            .methods
            .iter()
            .map(|m| {
                let errors = if m.errors.is_empty() {
                    "0".to_string()
                } else {
                    m.errors
                        .iter()
                        .map(|(c, n)| format!("{}:{n}", c.as_str()))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                [
                    m.service.clone(),
                    m.method.clone(),
                    m.calls.to_string(),
                    m.ok.to_string(),
                    errors,
                    m.in_flight.to_string(),
                    m.retries.to_string(),
                    m.hedges.to_string(),
                    ms(m.p50),
                    ms(m.p90),
                    ms(m.p99),
                    ms(m.max),
                ]
            })
            .collect();
        let mut width: [usize; 12] = head.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        writeln!(f, "{} calls", self.side.name())?;
        let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                if i < 2 {
                    write!(f, "{c:<w$}")?;
                } else {
                    write!(f, "{c:>w$}")?;
                }
                if i + 1 < cells.len() {
                    f.write_str("  ")?;
                }
            }
            writeln!(f)
        };
        line(f, &head)?;
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            line(f, &cells)?;
        }
        Ok(())
    }
}

/// Records every call into a [`Stats`]: as a client layer (put it outermost to count each
/// call once with its retries and hedges) or as a server layer (put it first, so that calls
/// later layers refuse are counted too). At debug level it also makes a `tracing` span per
/// call (`rpc.call`: side, service, method) and an event with its status and latency.
#[derive(Clone, Debug)]
pub struct StatsLayer {
    stats: Stats,
}

impl StatsLayer {
    /// A layer recording into `stats`.
    pub fn new(stats: &Stats) -> Self {
        stats.layer()
    }
}

impl<I: Invoke> ClientLayer<I> for StatsLayer {
    type Invoke = StatsInvoke<I>;

    fn layer(self, inner: I) -> StatsInvoke<I> {
        StatsInvoke {
            inner,
            stats: self.stats,
        }
    }
}

/// The invoker a [`StatsLayer`] makes on a client.
pub struct StatsInvoke<I> {
    inner: I,
    stats: Stats,
}

impl<I: Invoke> Invoke for StatsInvoke<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        let (service, method) = (req.service, req.method);
        let ticket = self.stats.start(service, method);
        // The typed front's clock reading, when there is one (it was taken just now).
        let started = match req.now {
            Some(t) => t,
            None => {
                let t = Instant::now();
                req.now = Some(t);
                t
            }
        };
        let r = if tracing::enabled!(tracing::Level::DEBUG) {
            // Boxed: only at debug level, and it would otherwise enlarge every call's state.
            Box::pin(async {
                let span = tracing::debug_span!("rpc.call", side = "client", service, method);
                let r = self.inner.invoke(req).instrument(span.clone()).await;
                let _in = span.enter();
                trace_outcome(&r.as_ref().map(|_| ()), started.elapsed());
                r
            })
            .await
        } else {
            self.inner.invoke(req).await
        };
        ticket.end(
            r.as_ref().map(|_| ()).map_err(Status::code),
            started.elapsed(),
            req.retries,
            req.hedges,
        );
        r
    }
}

fn trace_outcome(r: &Result<(), &Status>, latency: Duration) {
    match r {
        Ok(()) => tracing::debug!(
            status = "ok",
            latency_us = latency.as_micros() as u64,
            "rpc call ended"
        ),
        Err(st) => tracing::debug!(
            status = st.code().as_str(),
            message = st.message(),
            latency_us = latency.as_micros() as u64,
            "rpc call ended"
        ),
    }
}

impl ServerLayer for StatsLayer {
    const OBSERVES: bool = true;

    fn on_request(&self, call: &mut CallContext) -> Admit {
        self.stats
            .shard()
            .with(call.service(), call.method(), |_, e| {
                e.calls += 1;
                e.in_flight += 1;
            });
        Admit::Pass
    }

    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let span = tracing::debug_span!(
                "rpc.call",
                side = "server",
                service = call.service(),
                method = call.method()
            );
            let _in = span.enter();
            trace_outcome(&status, latency);
        }
        // The call's entry in this thread's shard (it may have started on another thread's:
        // the sums come out right either way).
        let shard = self.stats.shard();
        let index = shard.with(call.service(), call.method(), |i, _| i);
        Ticket {
            shard,
            index,
            ended: false,
        }
        .end(status.map_err(Status::code), latency, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_over_threads_and_render() {
        let stats = Stats::new(Side::Client);
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let s = stats.clone();
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        let ticket = s.start("svc", "Get");
                        let outcome = if i % 10 == 0 {
                            Err(Code::Unavailable)
                        } else {
                            Ok(())
                        };
                        ticket.end(outcome, Duration::from_micros(100 + i), t, 0);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        let _open = stats.start("svc", "Put");
        let snap = stats.snapshot();
        let get = snap.method("svc", "Get").expect("Get");
        assert_eq!((get.calls, get.ok, get.failed()), (400, 360, 40));
        assert_eq!(get.errors_of(Code::Unavailable), 40);
        assert_eq!(get.retries, 100 * (1 + 2 + 3));
        assert_eq!(get.in_flight, 0);
        let p50 = get.p50.expect("p50").as_micros();
        assert!((145..=155).contains(&p50), "{p50}");
        assert_eq!(get.max.expect("max").as_micros(), 199);
        let put = snap.method("svc", "Put").expect("Put");
        assert_eq!((put.calls, put.in_flight, put.p50), (1, 1, None));
        let table = snap.to_string();
        assert!(table.contains("unavailable:40"), "{table}");
        let text = stats.prometheus();
        assert!(
            text.contains(
                "qsocket_rpc_calls_total{side=\"client\",service=\"svc\",method=\"Get\"} 400"
            ),
            "{text}"
        );
    }
}
