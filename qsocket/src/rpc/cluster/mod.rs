//! Cluster strategies as a client layer: [`Cluster`] tries each call as its [`Policy`] says
//! (failfast, failover, failtry, failsafe, failback, forking, hedging), within a
//! [`RetryBudget`]. Policies are set per client, per service and per method, and a call can
//! carry its own ([`Call::policy`](crate::rpc::Call::policy)).
//!
//! The layer needs three facts from the layers below it, which the [`Channel`] gives every
//! call: the instance an attempt went to ([`Request::instance`]), whether the request may have
//! reached it ([`Status::sent`]), and whether the method is idempotent (the policy, or
//! [`CallOptions::idempotent`](crate::rpc::CallOptions::idempotent)).
//!
//! [`Channel`]: crate::rpc::Channel

mod budget;

pub use super::policy::{HedgeDelay, Policy, Strategy};
pub use budget::RetryBudget;

use super::balance::Node;
use super::client::{CallOptions, ClientLayer, Invoke, Request, Response, Spread};
use super::codec::Codec;
use super::metadata::MetadataMap;
use super::status::{Code, Sent, Status};
use budget::Bucket;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The policies of a [`Cluster`]: the client's default, and overrides per service and per
/// method (a call's own policy overrides them all).
#[derive(Debug, Clone, Default)]
struct Policies {
    default: Policy,
    services: Vec<(String, Policy)>,
    methods: Vec<(String, String, Policy)>,
}

impl Policies {
    /// The policy of a call: its own, else the layer's setting for the method, else for the
    /// service, else what the method declares, else the layer's default.
    #[inline]
    fn of(&self, service: &str, method: &str, options: &CallOptions) -> Policy {
        if let Some(p) = options.policy.as_deref() {
            return *p;
        }
        if !self.methods.is_empty() {
            if let Some((_, _, p)) = self
                .methods
                .iter()
                .find(|(s, m, _)| s == service && m == method)
            {
                return *p;
            }
        }
        if let Some((_, p)) = self.services.iter().find(|(s, _)| s == service) {
            return *p;
        }
        options.method_policy.copied().unwrap_or(self.default)
    }
}

/// What a [`Cluster`] layer counted (since it was made).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterCounters {
    /// Retries sent (failover, failtry).
    pub retries: u64,
    /// Hedges and extra forks sent.
    pub hedges: u64,
    /// Retries and hedges not sent because the retry budget was spent.
    pub budget_refused: u64,
    /// Errors a failsafe call turned into an empty result.
    pub failsafe: u64,
    /// Failed oneway calls queued for sending again (failback).
    pub failback_queued: u64,
    /// Queued calls that were then delivered.
    pub failback_delivered: u64,
    /// Queued calls that failed every retry.
    pub failback_failed: u64,
    /// Failed oneway calls dropped because the failback queue was full.
    pub failback_dropped: u64,
}

#[derive(Default)]
struct Counters {
    retries: AtomicU64,
    hedges: AtomicU64,
    budget_refused: AtomicU64,
    failsafe: AtomicU64,
    failback_queued: AtomicU64,
    failback_delivered: AtomicU64,
    failback_failed: AtomicU64,
    failback_dropped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Latencies of a method's last successful calls, for hedging's p95 delay.
struct Window {
    samples: VecDeque<Duration>,
}

/// How many latencies a p95 is computed from.
const WINDOW: usize = 200;
/// A p95 is used once this many were seen.
const WINDOW_MIN: usize = 20;

struct State {
    budget: Bucket,
    counters: Counters,
    /// Per (service, method): recent latencies (hedging with a p95 delay only).
    latencies: Mutex<Vec<(String, String, Window)>>,
    failback_capacity: usize,
}

impl State {
    fn new(budget: RetryBudget, failback_capacity: usize) -> Arc<State> {
        Arc::new(State {
            budget: Bucket::new(budget),
            counters: Counters::default(),
            latencies: Mutex::new(Vec::new()),
            failback_capacity,
        })
    }

    fn p95(&self, service: &str, method: &str) -> Option<Duration> {
        let all = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let (_, _, w) = all.iter().find(|(s, m, _)| s == service && m == method)?;
        if w.samples.len() < WINDOW_MIN {
            return None;
        }
        let mut v: Vec<Duration> = w.samples.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len() * 95 / 100).copied()
    }

    fn observe(&self, service: &str, method: &str, latency: Duration) {
        let mut all = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let i = match all.iter().position(|(s, m, _)| s == service && m == method) {
            Some(i) => i,
            None => {
                all.push((
                    service.to_string(),
                    method.to_string(),
                    Window {
                        samples: VecDeque::with_capacity(WINDOW),
                    },
                ));
                all.len() - 1
            }
        };
        let w = &mut all[i].2;
        if w.samples.len() == WINDOW {
            w.samples.pop_front();
        }
        w.samples.push_back(latency);
    }
}

/// The cluster strategies, as a client layer: each call is tried as its [`Policy`] says.
///
/// ```no_run
/// use qsocket::rpc::{Cluster, Policy, RpcClient};
/// # async fn demo() -> Result<(), qsocket::Error> {
/// let cluster = Cluster::new(Policy::failover(2))
///     .service("audit.Log", Policy::failback(5))
///     .method("bank.Ledger", "Balance", Policy::failover(3).idempotent());
/// let rpc = RpcClient::builder()
///     .endpoint("tcp://127.0.0.1:7000")
///     .endpoint("tcp://127.0.0.1:7001")
///     .start()
///     .await?
///     .layer(cluster.clone());
/// // … calls …
/// println!("retries so far: {}", cluster.counters().retries);
/// # Ok(()) }
/// ```
///
/// Clones share their counters and retry budget (the counters of a layer put on several
/// clients add up).
///
/// When a client has more than one cluster layer, the outermost one is in charge of a call
/// and the ones below pass it through, so retries never multiply. A generated client is that
/// outermost layer: give it the `Cluster` to use (`GreeterClient::with_cluster`).
#[derive(Clone)]
pub struct Cluster {
    policies: Arc<Policies>,
    state: Arc<State>,
    budget: RetryBudget,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("default", &self.policies.default)
            .field("services", &self.policies.services)
            .field("methods", &self.policies.methods)
            .field("counters", &self.counters())
            .finish()
    }
}

/// Failfast by default, until overridden per service, method or call.
impl Default for Cluster {
    fn default() -> Self {
        Cluster::new(Policy::failfast())
    }
}

/// Default capacity of the failback queue.
pub const DEFAULT_FAILBACK_QUEUE: usize = 1024;

impl Cluster {
    /// A layer that tries every call as `default` says (until overridden per service, per
    /// method or per call), with the default [`RetryBudget`].
    pub fn new(default: Policy) -> Self {
        Cluster {
            policies: Arc::new(Policies {
                default,
                ..Policies::default()
            }),
            state: State::new(RetryBudget::default(), DEFAULT_FAILBACK_QUEUE),
            budget: RetryBudget::default(),
        }
    }

    /// The policy of every method of `service` (unless a method has its own).
    pub fn service(mut self, service: &str, policy: Policy) -> Self {
        let p = Arc::make_mut(&mut self.policies);
        p.services.retain(|(s, _)| s != service);
        p.services.push((service.to_string(), policy));
        self
    }

    /// The policy of one method.
    pub fn method(mut self, service: &str, method: &str, policy: Policy) -> Self {
        let p = Arc::make_mut(&mut self.policies);
        p.methods.retain(|(s, m, _)| s != service || m != method);
        p.methods
            .push((service.to_string(), method.to_string(), policy));
        self
    }

    /// Caps retries and hedges (a fresh budget and fresh counters: set it before cloning).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self.state = State::new(budget, self.state.failback_capacity);
        self
    }

    /// How many failed oneway calls the failback queue holds (default
    /// [`DEFAULT_FAILBACK_QUEUE`]); more are dropped and counted (fresh counters: set it before
    /// cloning).
    pub fn failback_queue(mut self, capacity: usize) -> Self {
        self.state = State::new(self.budget, capacity.max(1));
        self
    }

    /// The policy a call to `service`/`method` gets when it carries none of its own (and
    /// the method declares none).
    pub fn policy_of(&self, service: &str, method: &str) -> Policy {
        self.policies.of(service, method, &CallOptions::default())
    }

    /// What the layer counted so far.
    pub fn counters(&self) -> ClusterCounters {
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClusterCounters {
            retries: get(&c.retries),
            hedges: get(&c.hedges),
            budget_refused: get(&c.budget_refused),
            failsafe: get(&c.failsafe),
            failback_queued: get(&c.failback_queued),
            failback_delivered: get(&c.failback_delivered),
            failback_failed: get(&c.failback_failed),
            failback_dropped: get(&c.failback_dropped),
        }
    }

    /// Whole retry tokens left in the budget.
    pub fn budget_tokens(&self) -> u64 {
        self.state.budget.tokens()
    }
}

impl<I: Invoke> ClientLayer<I> for Cluster {
    type Invoke = ClusterInvoke<I>;

    fn layer(self, inner: I) -> ClusterInvoke<I> {
        ClusterInvoke {
            inner: Arc::new(inner),
            policies: self.policies,
            state: self.state,
            failback: OnceLock::new(),
        }
    }
}

/// The invoker a [`Cluster`] layer makes.
pub struct ClusterInvoke<I> {
    inner: Arc<I>,
    policies: Arc<Policies>,
    state: Arc<State>,
    /// The failback queue, started on the first failed oneway failback call.
    failback: OnceLock<mpsc::Sender<Queued>>,
}

/// Whether a failed attempt may be tried again: `unavailable` — the request never left this
/// process (no connection, a session closed before the write, no live instance), or a server
/// answered that it cannot serve it now; for idempotent methods also a timeout, or a
/// connection lost after the request was written. Anything else (a refusal by a layer, a
/// request too large, a handler's own error) would fail again: it is not retried.
pub fn retryable(st: &Status, idempotent: bool) -> bool {
    match (st.code(), st.sent()) {
        (Code::Unavailable, Sent::No | Sent::Yes) => true,
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, Sent::Maybe) => idempotent,
        (Code::DeadlineExceeded, Sent::Yes) => idempotent,
        _ => false,
    }
}

impl<I: Invoke> ClusterInvoke<I> {
    /// One attempt, bounded by the policy's attempt timeout (one await of the inner invoker,
    /// so its state is held once).
    async fn attempt(&self, req: &mut Request<'_>, p: &Policy) -> Result<Response, Status> {
        let call_deadline = req.deadline;
        bound(req, p);
        let r = self.inner.invoke(req).await;
        req.deadline = call_deadline;
        r
    }

    /// Failover and failtry once the first attempt failed with `st`: tries again as the policy
    /// says. Only failed calls get here (boxed by the caller, so a call that succeeds at once
    /// carries none of this state).
    async fn retrying(
        &self,
        req: &mut Request<'_>,
        p: &Policy,
        mut st: Status,
    ) -> Result<Response, Status> {
        let idempotent = p.idempotent || req.options.idempotent;
        let mut tries = 0;
        loop {
            if tries >= p.retries || !retryable(&st, idempotent) || Instant::now() >= req.deadline {
                return Err(st);
            }
            if !self.state.budget.withdraw() {
                bump(&self.state.counters.budget_refused);
                return Err(st);
            }
            tries += 1;
            req.retries += 1;
            bump(&self.state.counters.retries);
            let failed = req.instance.as_ref().map(Node::key);
            if let Some(k) = failed {
                if p.strategy == Strategy::Failtry {
                    req.affinity = Some(k);
                } else if !req.exclude.contains(&k) {
                    req.exclude.push(k);
                }
            }
            tracing::debug!(service = req.service, method = req.method, status = %st, retry = tries, "retrying");
            st = match self.attempt(req, p).await {
                Ok(r) => return Ok(r),
                Err(st) => st,
            };
        }
    }

    /// Failsafe.
    async fn failsafe(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        match self.inner.invoke(req).await {
            Ok(r) => Ok(r),
            Err(st) => {
                bump(&self.state.counters.failsafe);
                tracing::warn!(service = req.service, method = req.method, status = %st, "failsafe: the error becomes an empty result");
                Ok(Response {
                    codec: req.codec,
                    body: Bytes::new(),
                    metadata: MetadataMap::new(),
                })
            }
        }
    }

    /// Forking and hedging: attempts on distinct instances, the first success wins.
    async fn racing(&self, req: &mut Request<'_>, p: &Policy) -> Result<Response, Status> {
        let hedging = p.strategy == Strategy::Hedging;
        let extra = if hedging {
            p.retries
        } else {
            p.forks.saturating_sub(1)
        } as usize;
        let spread = Arc::new(Spread::default());
        let mut attempts: Vec<Request<'_>> = (0..=extra)
            .map(|_| {
                let mut a = req.attempt_copy();
                a.spread = Some(spread.clone());
                a
            })
            .collect();
        let delay = match p.hedge {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::P95 { floor } => self
                .state
                .p95(req.service, req.method)
                .map_or(floor, |d| d.max(floor)),
        };
        let started = Instant::now();
        let idempotent = p.idempotent || req.options.idempotent;
        let mut waiting = attempts.iter_mut();
        let mut running = FuturesUnordered::new();
        // The first attempt (and, forking, all of them) go out at once.
        let first = if hedging { 1 } else { extra + 1 };
        for (i, a) in waiting.by_ref().take(first).enumerate() {
            if i > 0 {
                if !self.state.budget.withdraw() {
                    bump(&self.state.counters.budget_refused);
                    break;
                }
                bump(&self.state.counters.hedges);
                req.hedges += 1;
            }
            bound(a, p);
            running.push(attempt_on(&*self.inner, a));
        }
        let mut last: Option<(Status, Option<Node>)> = None;
        let mut more = hedging && extra > 0;
        loop {
            let wait = more;
            let next_hedge = async move {
                if wait {
                    tokio::time::sleep(delay).await
                } else {
                    std::future::pending::<()>().await
                }
            };
            let mut send = false;
            tokio::select! {
                done = running.next() => match done {
                    Some((Ok(resp), instance)) => {
                        // Only a call its first attempt answered before any hedge tells the
                        // method's own latency (a hedge's win includes the delay).
                        if hedging && req.hedges == 0 && matches!(p.hedge, HedgeDelay::P95 { .. }) {
                            self.state.observe(req.service, req.method, started.elapsed());
                        }
                        req.instance = instance;
                        return Ok(resp);
                    }
                    Some((Err(st), instance)) => {
                        // The next hedge goes out at once when every attempt so far failed
                        // in a way that may be tried again.
                        send = more && running.is_empty() && retryable(&st, idempotent);
                        last = Some((st, instance));
                    }
                    None => {}
                },
                () = next_hedge => send = true,
            }
            if send {
                more = false;
                if let Some(a) = waiting.next() {
                    if self.state.budget.withdraw() {
                        bump(&self.state.counters.hedges);
                        req.hedges += 1;
                        bound(a, p);
                        running.push(attempt_on(&*self.inner, a));
                        more = waiting.len() > 0;
                    } else {
                        bump(&self.state.counters.budget_refused);
                    }
                }
            }
            if running.is_empty() {
                break;
            }
        }
        drop(running);
        let (st, instance) = last.unwrap_or_else(|| {
            (
                Status::internal("no attempt was made").with_sent(Sent::No),
                None,
            )
        });
        req.instance = instance;
        Err(st)
    }

    /// Failback: a failed oneway call is queued for the background sender.
    async fn failback(&self, req: &mut Request<'_>, p: &Policy) -> Result<Response, Status> {
        let r = self.inner.invoke(req).await;
        let st = match r {
            Ok(resp) => return Ok(resp),
            Err(st) if !req.options.oneway || p.retries == 0 => return Err(st),
            Err(st) => st,
        };
        let queued = Queued {
            service: req.service.to_string(),
            method: req.method.to_string(),
            codec: req.codec,
            metadata: req.metadata.clone(),
            body: req.body.clone(),
            hash_key: req.hash_key,
            // A oneway call's deadline bounds only its sending: each resend gets what was left
            // of it, at least a second.
            timeout: req
                .deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
            retries: p.retries,
        };
        let tx = self.failback.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.state.failback_capacity);
            tokio::spawn(resend(self.inner.clone(), self.state.clone(), rx));
            tx
        });
        match tx.try_send(queued) {
            Ok(()) => {
                bump(&self.state.counters.failback_queued);
                tracing::debug!(service = req.service, method = req.method, status = %st, "failback: queued for sending again");
                Ok(Response {
                    codec: req.codec,
                    ..Response::default()
                })
            }
            Err(_) => {
                bump(&self.state.counters.failback_dropped);
                tracing::warn!(service = req.service, method = req.method, status = %st, "failback queue full: call dropped");
                Err(st)
            }
        }
    }
}

impl<I: Invoke> Invoke for ClusterInvoke<I> {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        if req.clustered {
            // A cluster layer above this one is in charge: one try here, or retries would
            // multiply.
            return Box::pin(self.inner.invoke(req)).await;
        }
        req.clustered = true;
        let p = self.policies.of(req.service, req.method, &req.options);
        self.state.budget.deposit();
        match p.strategy {
            // The common strategies try once inline (one await of the inner invoker, in this
            // future's own state); only a failure that may be retried goes on, boxed.
            Strategy::Failfast | Strategy::Failover | Strategy::Failtry => {
                let call_deadline = req.deadline;
                bound(req, &p);
                let r = self.inner.invoke(req).await;
                req.deadline = call_deadline;
                match r {
                    Ok(r) => Ok(r),
                    Err(st) if p.strategy == Strategy::Failfast || p.retries == 0 => Err(st),
                    Err(st) => Box::pin(self.retrying(req, &p, st)).await,
                }
            }
            // The rest are boxed: they keep more state, which would otherwise make every
            // call's future larger.
            Strategy::Failsafe => Box::pin(self.failsafe(req)).await,
            Strategy::Failback => Box::pin(self.failback(req, &p)).await,
            Strategy::Forking | Strategy::Hedging => Box::pin(self.racing(req, &p)).await,
        }
    }
}

/// Bounds an attempt sent now by the policy's attempt timeout (within the call's deadline).
fn bound(a: &mut Request<'_>, p: &Policy) {
    if let Some(t) = p.attempt_timeout {
        a.deadline = a.deadline.min(Instant::now() + t);
    }
}

/// One attempt of a forking or hedging call, with the instance it went to.
async fn attempt_on<I: Invoke>(
    inner: &I,
    a: &mut Request<'_>,
) -> (Result<Response, Status>, Option<Node>) {
    let r = inner.invoke(a).await;
    (r, a.instance.take())
}

/// A failed oneway call waiting to be sent again.
struct Queued {
    service: String,
    method: String,
    codec: Codec,
    metadata: MetadataMap,
    body: Bytes,
    hash_key: Option<u64>,
    timeout: Duration,
    retries: u32,
}

/// The failback sender: sends each queued call again with exponential backoff (100 ms,
/// doubling, at most 5 s), up to its retries; ends when the layer is dropped.
async fn resend<I: Invoke>(inner: Arc<I>, state: Arc<State>, mut rx: mpsc::Receiver<Queued>) {
    while let Some(q) = rx.recv().await {
        let mut backoff = Duration::from_millis(100);
        let mut delivered = false;
        for _ in 0..q.retries {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let timeout = q.timeout.max(Duration::from_millis(1));
            let mut req = Request::new(
                &q.service,
                &q.method,
                q.codec,
                q.body.clone(),
                Instant::now() + timeout,
            );
            req.metadata = q.metadata.clone();
            req.hash_key = q.hash_key;
            req.options.oneway = true;
            if inner.invoke(&mut req).await.is_ok() {
                delivered = true;
                break;
            }
        }
        if delivered {
            bump(&state.counters.failback_delivered);
        } else {
            bump(&state.counters.failback_failed);
            tracing::warn!(service = %q.service, method = %q.method, "failback: every retry failed; call dropped");
        }
    }
}
