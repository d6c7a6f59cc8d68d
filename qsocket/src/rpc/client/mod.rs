//! The RPC client. A typed front ([`RpcClient::call`], [`Call`]) encodes each message once
//! into an untyped [`Request`], which flows through the client's layers ([`Invoke`],
//! [`ClientLayer`]) down to the [`Channel`]: it picks an instance with the balancer and sends
//! the request on one of that instance's connections. Many calls are in flight per connection,
//! matched by request id in a pending table; deadlines travel to the server as time
//! remaining; dropping a call cancels it.

mod channel;
mod conn;
mod layer;
mod live;
mod pending;
mod request;
mod scratch;
#[cfg(feature = "tower")]
mod tower;

pub use channel::Channel;
pub use layer::{
    layer_fn, BoxCallFuture, BoxInvoke, BoxLayer, ClientLayer, DynInvoke, Identity, Invoke,
    LayerFn, Stack,
};
pub(crate) use request::Spread;
pub use request::{CallOptions, Request, Response};
#[cfg(feature = "tower")]
pub use tower::{FromTower, TowerInner, TowerLayer, TowerRequest, TowerResponse};

use super::balance::{hash_key, Balancer, Breaker, RoundRobin};
use super::codec::{unspoken, Codec, Message};
use super::context::current_deadline;
use super::frame::Limits;
use super::instance::{Instance, InstanceSource, StaticInstances};
use super::metadata::{MetadataMap, Reply};
use super::policy::Policy;
use super::status::{Sent, Status};
use crate::session::SessionConfig;
use crate::Error;
use live::{Balancers, Live};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of an RPC client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcClientConfig {
    /// Body codec of calls that do not choose one (when the message types speak it). Default
    /// protobuf.
    pub codec: Codec,
    /// Deadline of calls that set none (and are not made inside a handler). Default 30 s.
    pub timeout: Duration,
    /// Sessions per instance. Default 1.
    pub sessions_per_endpoint: usize,
    /// A session with no traffic for this long sends a heartbeat; one silent for three times
    /// as long is closed and replaced. Default 10 s.
    pub heartbeat: Duration,
    /// Calls in flight per UDP session; the rest wait. Default 64.
    pub udp_max_in_flight: usize,
    /// With no live connection, calls wait for one up to their deadline instead of failing
    /// fast with `unavailable` once every instance has refused. Default false.
    pub wait_for_connection: bool,
    /// Frame size limits.
    pub limits: Limits,
    /// Session settings (its cron period and timeout are set from `heartbeat`).
    pub session: SessionConfig,
    /// A circuit breaker per instance. Default none.
    pub breaker: Option<Breaker>,
}

impl Default for RpcClientConfig {
    fn default() -> Self {
        RpcClientConfig {
            codec: Codec::Protobuf,
            timeout: Duration::from_secs(30),
            sessions_per_endpoint: 1,
            heartbeat: Duration::from_secs(10),
            udp_max_in_flight: 64,
            wait_for_connection: false,
            limits: Limits::default(),
            session: SessionConfig::default(),
            breaker: None,
        }
    }
}

impl RpcClientConfig {
    /// Sets [`codec`](field@Self::codec): the body codec of calls that do not choose one.
    /// Default [`Codec::Protobuf`].
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Sets [`timeout`](field@Self::timeout): the deadline of calls that set none. Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`sessions_per_endpoint`](field@Self::sessions_per_endpoint): sessions per
    /// instance. Default 1.
    pub fn sessions_per_endpoint(mut self, n: usize) -> Self {
        self.sessions_per_endpoint = n;
        self
    }

    /// Sets [`heartbeat`](field@Self::heartbeat): the idle time after which a session sends a
    /// heartbeat (three times as long silent closes it). Default 10 s.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Sets [`udp_max_in_flight`](field@Self::udp_max_in_flight): calls in flight per UDP
    /// session. Default 64.
    pub fn udp_max_in_flight(mut self, n: usize) -> Self {
        self.udp_max_in_flight = n;
        self
    }

    /// Sets [`wait_for_connection`](field@Self::wait_for_connection): whether calls wait for a
    /// connection up to their deadline instead of failing fast. Default false.
    pub fn wait_for_connection(mut self, wait: bool) -> Self {
        self.wait_for_connection = wait;
        self
    }

    /// Sets [`breaker`](field@Self::breaker): a circuit breaker per instance. Default none.
    pub fn breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Sets [`limits`](field@Self::limits): frame size limits. Default [`Limits::default`]
    /// (4 MiB bodies, 8 KiB metadata).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`session`](field@Self::session): session settings (its cron period and timeout
    /// are set from `heartbeat`). Default [`SessionConfig::default`].
    pub fn session(mut self, session: SessionConfig) -> Self {
        self.session = session;
        self
    }
}

/// An RPC client: typed calls over a chain of layers `I` (by default none: the [`Channel`]
/// itself). Cheap to clone.
///
/// ```no_run
/// use qsocket::rpc::{RpcClient, Status};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = RpcClient::builder()
///     .endpoint("tcp://127.0.0.1:7000")
///     .endpoint("tcp://127.0.0.1:7001")
///     .start()
///     .await?;
/// client.ready().await?; // optional: wait until some instance is connected
/// let reply: String = client.call("greeter.Greeter", "Hello", &"qsocket".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct RpcClient<I = Channel> {
    invoke: Arc<I>,
    channel: Channel,
    codec: Codec,
    timeout: Duration,
}

impl<I> Clone for RpcClient<I> {
    fn clone(&self) -> Self {
        RpcClient {
            invoke: self.invoke.clone(),
            channel: self.channel.clone(),
            codec: self.codec,
            timeout: self.timeout,
        }
    }
}

impl<I> std::fmt::Debug for RpcClient<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("channel", &self.channel)
            .finish()
    }
}

impl RpcClient {
    /// Starts building a client.
    pub fn builder() -> RpcClientBuilder {
        RpcClientBuilder {
            instances: Vec::new(),
            source: None,
            cfg: RpcClientConfig::default(),
            balancer: None,
            per_service: Vec::new(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// A client of one endpoint URL with the default settings.
    pub async fn connect(url: &str) -> Result<RpcClient, Error> {
        RpcClient::builder().endpoint(url).start().await
    }
}

impl<I: Invoke> RpcClient<I> {
    /// A unary call with the client's default codec and timeout.
    #[inline(always)]
    pub fn call<'a, Req: Message, Resp: Message>(
        &'a self,
        service: &'a str,
        method: &'a str,
        req: &'a Req,
    ) -> impl std::future::Future<Output = Result<Resp, Status>> + 'a {
        self.request(service, method).call(req)
    }

    /// A call with options: `client.request(svc, m).timeout(d).codec(Codec::Json).call(&req)`.
    #[inline(always)]
    pub fn request<'a>(&'a self, service: &'a str, method: &'a str) -> Call<'a, I> {
        Call {
            client: self,
            service,
            method,
            deadline: None,
            codec: None,
            metadata: MetadataMap::new(),
            metadata_error: None,
            hash_key: None,
            options: CallOptions::default(),
        }
    }

    /// Sends an untyped request through the client's layers (what [`Call`] does after
    /// encoding).
    pub async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        self.invoke.invoke(req).await
    }

    /// This client with one more layer on the outside: it sees every request first and every
    /// outcome last. The connections are shared with `self`.
    pub fn layer<L: ClientLayer<Arc<I>>>(&self, layer: L) -> RpcClient<L::Invoke> {
        RpcClient {
            invoke: Arc::new(layer.layer(self.invoke.clone())),
            channel: self.channel.clone(),
            codec: self.codec,
            timeout: self.timeout,
        }
    }

    /// This client with its layers' type erased (for clients chosen at run time).
    pub fn boxed(&self) -> RpcClient<BoxInvoke> {
        RpcClient {
            invoke: Arc::new(BoxInvoke::new(self.invoke.clone())),
            channel: self.channel.clone(),
            codec: self.codec,
            timeout: self.timeout,
        }
    }

    /// The transport under the layers.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Waits until some instance is connected, up to the client's default timeout; fails with
    /// `unavailable` and the causes if none is by then.
    pub async fn ready(&self) -> Result<(), Status> {
        self.channel.ready().await
    }

    /// Calls in flight on all connections.
    pub fn in_flight(&self) -> usize {
        self.channel.in_flight()
    }

    /// Closes every connection (calls pending on them fail) and stops following the instance
    /// source.
    pub async fn close(&self) {
        self.channel.close().await
    }
}

/// Builder of an [`RpcClient`] (see [`RpcClient::builder`]).
pub struct RpcClientBuilder {
    instances: Vec<Result<Instance, Error>>,
    source: Option<Box<dyn InstanceSource>>,
    cfg: RpcClientConfig,
    balancer: Option<Arc<dyn Balancer>>,
    per_service: Vec<(String, Arc<dyn Balancer>)>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl RpcClientBuilder {
    /// Adds an instance by endpoint URL (`tcp://`, `udp://`, `ws://…/path`, `tls://`,
    /// `wss://`).
    pub fn endpoint(mut self, url: &str) -> Self {
        self.instances.push(Instance::parse(url));
        self
    }

    /// Adds an instance with its weight, group, version and tags.
    pub fn instance(mut self, instance: Instance) -> Self {
        self.instances.push(Ok(instance));
        self
    }

    /// Takes the instances from a source that may change (an [`InstanceList`](super::InstanceList),
    /// a registry) instead of a fixed list: instances that join are connected, those that
    /// leave stop being picked at once and are closed once their calls end.
    pub fn instances(mut self, source: impl InstanceSource) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The balancer of every service (default: [`RoundRobin`]).
    pub fn balancer(mut self, balancer: impl Balancer) -> Self {
        self.balancer = Some(Arc::new(balancer));
        self
    }

    /// The balancer of one service, instead of the client's.
    pub fn service_balancer(mut self, service: &str, balancer: impl Balancer) -> Self {
        self.per_service.retain(|(s, _)| s != service);
        self.per_service
            .push((service.to_string(), Arc::new(balancer)));
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, cfg: RpcClientConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Default body codec.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.cfg.codec = codec;
        self
    }

    /// Default call timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.cfg.timeout = timeout;
        self
    }

    /// Sessions per instance.
    pub fn sessions_per_endpoint(mut self, n: usize) -> Self {
        self.cfg.sessions_per_endpoint = n;
        self
    }

    /// Heartbeat interval of idle sessions.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.cfg.heartbeat = every;
        self
    }

    /// Calls in flight per UDP session.
    pub fn udp_max_in_flight(mut self, n: usize) -> Self {
        self.cfg.udp_max_in_flight = n;
        self
    }

    /// With no live connection, calls wait for one up to their deadline instead of failing
    /// fast once every instance has refused.
    pub fn wait_for_connection(mut self, wait: bool) -> Self {
        self.cfg.wait_for_connection = wait;
        self
    }

    /// A circuit breaker per instance: after a run of failures an instance is skipped for a
    /// cool-down, then probed with one call (see [`Breaker`]).
    pub fn breaker(mut self, breaker: Breaker) -> Self {
        self.cfg.breaker = Some(breaker);
        self
    }

    /// Frame size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.cfg.limits = limits;
        self
    }

    /// Session settings.
    pub fn session_config(mut self, cfg: SessionConfig) -> Self {
        self.cfg.session = cfg;
        self
    }

    /// TLS for `tls://` and `wss://` endpoints.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Starts connecting to every instance (in the background: [`RpcClient::ready`] waits
    /// for a connection; calls wait while instances are still connecting for the first time).
    pub async fn start(self) -> Result<RpcClient, Error> {
        let fixed = self.instances.into_iter().collect::<Result<Vec<_>, _>>()?;
        if self.cfg.heartbeat.is_zero() || self.cfg.udp_max_in_flight == 0 {
            return Err(Error::Config(
                "heartbeat and udp_max_in_flight must be non-zero".into(),
            ));
        }
        if self.cfg.sessions_per_endpoint == 0 {
            return Err(Error::Config(
                "sessions_per_endpoint must be at least 1".into(),
            ));
        }
        let (source, background): (Box<dyn InstanceSource>, bool) = match self.source {
            Some(s) if fixed.is_empty() => (s, true),
            Some(_) => {
                return Err(Error::Config(
                    "an rpc client takes fixed endpoints or an instance source, not both".into(),
                ))
            }
            None if fixed.is_empty() => {
                return Err(Error::Config(
                    "an rpc client needs at least one endpoint".into(),
                ))
            }
            None => (Box::new(StaticInstances::new(fixed)), false),
        };
        let balancers = Balancers {
            default: self.balancer.unwrap_or_else(|| Arc::new(RoundRobin::new())),
            per_service: self.per_service,
        };
        #[cfg(feature = "tls")]
        let tls = self.tls;
        #[cfg(not(feature = "tls"))]
        let tls = None::<()>;
        let (codec, timeout) = (self.cfg.codec, self.cfg.timeout);
        let channel = Channel::new(
            Arc::new(Live::new(balancers, self.cfg.breaker)),
            self.cfg,
            tls,
        );
        channel.follow(source.as_ref(), background).await;
        Ok(RpcClient {
            invoke: Arc::new(channel.clone()),
            channel,
            codec,
            timeout,
        })
    }
}

/// One call being prepared (see [`RpcClient::request`]).
#[must_use = "a call does nothing until `call`, `reply` or `oneway` is awaited"]
pub struct Call<'a, I = Channel> {
    client: &'a RpcClient<I>,
    service: &'a str,
    method: &'a str,
    deadline: Option<Instant>,
    codec: Option<Codec>,
    metadata: MetadataMap,
    metadata_error: Option<Status>,
    hash_key: Option<u64>,
    options: CallOptions,
}

impl<'a, I: Invoke> Call<'a, I> {
    /// Bounds the call by `timeout` from now.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(crate::session::deadline_after(Instant::now(), timeout));
        self
    }

    /// Bounds the call by an absolute deadline.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The body codec of this call (refused with `invalid_argument` if the message types do
    /// not speak it). By default the client's codec, or the first one both types speak.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Adds a metadata entry (e.g. a trace id).
    pub fn metadata(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        if let Err(e) = self.metadata.insert(key, value) {
            self.metadata_error = Some(e);
        }
        self
    }

    /// A key for balancers that keep a key on one instance (e.g. [`HashRing`](super::balance::HashRing)).
    pub fn hash_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.hash_key = Some(hash_key(key.as_ref()));
        self
    }

    /// Marks the method as safe to run twice (strategies may retry it even after it may have
    /// reached a server).
    pub fn idempotent(mut self) -> Self {
        self.options.idempotent = true;
        self
    }

    /// With no live connection, waits for one up to the deadline instead of failing fast.
    pub fn wait_for_connection(mut self) -> Self {
        self.options.wait_for_connection = true;
        self
    }

    /// The cluster policy of this call (read by a [`Cluster`](crate::rpc::Cluster) layer, over
    /// the policy it would give the method): a [`Policy`], or an `Arc<Policy>` that many
    /// calls share.
    pub fn policy(mut self, policy: impl Into<Arc<Policy>>) -> Self {
        self.options.policy = Some(policy.into());
        self
    }

    /// The policy the method declares (what generated clients pass from a method's
    /// attributes, as a `const`): a [`Cluster`](crate::rpc::Cluster) layer's own settings for
    /// the service or method override it, and so does [`policy`](Self::policy).
    ///
    /// ```
    /// use qsocket::rpc::{Call, Policy};
    /// const GET: Policy = Policy::failover(2).idempotent();
    /// fn get(call: Call<'_>) -> Call<'_> {
    ///     call.method_policy(&GET)
    /// }
    /// # let _ = get;
    /// ```
    pub fn method_policy(mut self, policy: &'static Policy) -> Self {
        self.options.method_policy = Some(policy);
        self
    }

    /// The codec of this call for these message types.
    fn pick_codec<Req: Message, Resp: Message>(&self) -> Result<Codec, Status> {
        if let Some(c) = self.codec {
            if !Req::speaks(c) {
                return Err(unspoken::<Req>(c, Req::CODECS));
            }
            if !Resp::speaks(c) {
                return Err(unspoken::<Resp>(c, Resp::CODECS));
            }
            return Ok(c);
        }
        let default = self.client.codec;
        if Req::speaks(default) && Resp::speaks(default) {
            return Ok(default);
        }
        Req::CODECS
            .iter()
            .copied()
            .find(|c| Resp::speaks(*c))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{} and {} speak no codec in common",
                    std::any::type_name::<Req>(),
                    std::any::type_name::<Resp>()
                ))
            })
    }

    /// Encodes `msg` into the untyped request of this call (no await: the typed front adds no
    /// state of its own to the call's future).
    #[inline(always)]
    fn prepare<Req: Message, Resp: Message>(
        self,
        msg: &Req,
        oneway: bool,
    ) -> Result<Request<'a>, Status> {
        let no = |st: Status| st.with_sent(Sent::No);
        if let Some(e) = self.metadata_error {
            return Err(no(e));
        }
        let codec = self.pick_codec::<Req, Resp>().map_err(no)?;
        let body =
            scratch::encode(msg.size_hint(codec), |b| msg.encode_body(codec, b)).map_err(no)?;
        // One clock read per call: the deadline and the time remaining both come from it.
        let now = Instant::now();
        let own = self
            .deadline
            .unwrap_or_else(|| crate::session::deadline_after(now, self.client.timeout));
        let deadline = match current_deadline() {
            Some(inherited) if inherited < own => inherited,
            _ => own,
        };
        let options = CallOptions {
            oneway,
            ..self.options
        };
        let (metadata, body) = (self.metadata, body.freeze());
        Ok(Request::first(
            self.service,
            self.method,
            codec,
            body,
            deadline,
            metadata,
            self.hash_key,
            options,
            Some(now),
        ))
    }

    /// Sends the request and waits for the response.
    ///
    /// The message is encoded before this returns; the future holds only the encoded request
    /// (and the layers' state), not the builder.
    #[inline(always)]
    pub fn call<Req: Message, Resp: Message>(
        self,
        req: &Req,
    ) -> impl Future<Output = Result<Resp, Status>> + Send + 'a {
        self.call_map(req, |resp| resp)
    }

    /// [`call`](Self::call), then `f` turns the response into what the caller wants (inside
    /// the call's own future: no second future wraps it). Generated clients unwrap
    /// [`Serde`](crate::rpc::Serde) responses this way.
    #[inline(always)]
    pub fn call_map<Req: Message, Resp: Message, T: 'a>(
        self,
        req: &Req,
        f: fn(Resp) -> T,
    ) -> impl Future<Output = Result<T, Status>> + Send + 'a {
        let client = self.client;
        let mut prepared = self.prepare::<Req, Resp>(req, false);
        async move {
            let req = prepared_request(&mut prepared)?;
            let resp = client.invoke.invoke(req).await?;
            decode::<Resp>(resp.codec, resp.body).map(f)
        }
    }

    /// Sends the request and waits for the response and its metadata.
    pub fn reply<Req: Message, Resp: Message>(
        self,
        req: &Req,
    ) -> impl Future<Output = Result<Reply<Resp>, Status>> + Send + 'a {
        let client = self.client;
        let mut prepared = self.prepare::<Req, Resp>(req, false);
        async move {
            let req = prepared_request(&mut prepared)?;
            let resp = client.invoke.invoke(req).await?;
            Ok(Reply {
                body: decode::<Resp>(resp.codec, resp.body)?,
                metadata: resp.metadata,
            })
        }
    }

    /// Sends the request without waiting for any response (a oneway call). Returns once the
    /// request is queued on a connection.
    pub fn oneway<Req: Message>(
        self,
        req: &Req,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        let client = self.client;
        let mut prepared = self.prepare::<Req, ()>(req, true);
        async move {
            let req = prepared_request(&mut prepared)?;
            client.invoke.invoke(req).await.map(|_| ())
        }
    }
}

/// Settings for every call of a generated client, over the defaults its methods declare: a
/// deadline or timeout, a codec, metadata, a cluster policy, a hash key (see the generated
/// client's `with`).
///
/// ```
/// use qsocket::rpc::{CallConfig, Codec, Policy};
/// use std::time::Duration;
/// let cfg = CallConfig::new()
///     .timeout(Duration::from_millis(200))
///     .codec(Codec::Json)
///     .metadata("trace-id", "abc")
///     .policy(Policy::failover(1));
/// # let _ = cfg;
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallConfig {
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    codec: Option<Codec>,
    /// Entries for every call, in a block the calls share (no allocation per call).
    metadata: MetadataMap,
    metadata_error: Option<Status>,
    /// Shared by the calls.
    policy: Option<Arc<Policy>>,
    /// Hashed once, here (what [`Call::hash_key`] would compute per call).
    hash_key: Option<u64>,
    wait_for_connection: bool,
}

impl CallConfig {
    /// No settings: each method's own.
    pub fn new() -> Self {
        CallConfig::default()
    }

    /// Each call is bounded by `timeout` from when it starts (over a method's `timeout_ms`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Every call is bounded by this deadline.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The body codec of the calls (the message types must speak it).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// A metadata entry sent with every call.
    pub fn metadata(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        let mut map = std::mem::take(&mut self.metadata);
        if let Err(e) = map.insert(key, value) {
            self.metadata_error = Some(e);
        }
        self.metadata = map.shared();
        self
    }

    /// The cluster policy of the calls (over a method's `strategy` attributes).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// A key for balancers that keep a key on one instance.
    pub fn hash_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.hash_key = Some(hash_key(key.as_ref()));
        self
    }

    /// With no live connection, calls wait for one up to their deadline.
    pub fn wait_for_connection(mut self) -> Self {
        self.wait_for_connection = true;
        self
    }

    /// `call` with these settings applied (over what it had).
    pub fn apply<'a, I: Invoke>(&self, mut call: Call<'a, I>) -> Call<'a, I> {
        if let Some(t) = self.timeout {
            call = call.timeout(t);
        }
        if let Some(d) = self.deadline {
            call = call.deadline(d);
        }
        if let Some(c) = self.codec {
            call = call.codec(c);
        }
        if let Some(e) = &self.metadata_error {
            call.metadata_error = Some(e.clone());
        } else if call.metadata.is_empty() {
            call.metadata = self.metadata.clone();
        } else {
            for (k, v) in self.metadata.iter() {
                let k = String::from_utf8_lossy(k);
                call = call.metadata(&k, v);
            }
        }
        if let Some(p) = &self.policy {
            call.options.policy = Some(p.clone());
        }
        if let Some(k) = self.hash_key {
            call.hash_key = Some(k);
        }
        if self.wait_for_connection {
            call = call.wait_for_connection();
        }
        call
    }
}

/// The request in `prepared`, borrowed where it lies (a call's future keeps one copy of it),
/// or the error that kept it from being made.
fn prepared_request<'r, 'a>(
    prepared: &'r mut Result<Request<'a>, Status>,
) -> Result<&'r mut Request<'a>, Status> {
    match prepared {
        Ok(req) => Ok(req),
        Err(st) => Err(std::mem::replace(st, Status::internal("call polled again"))),
    }
}

/// Decodes a response body; a failure says the request was answered.
fn decode<Resp: Message>(codec: Codec, body: bytes::Bytes) -> Result<Resp, Status> {
    if !Resp::speaks(codec) {
        return Err(unspoken::<Resp>(codec, Resp::CODECS).with_sent(Sent::Yes));
    }
    Resp::decode_body(codec, body)
        .map_err(|e| Status::internal(format!("response: {}", e.message())).with_sent(Sent::Yes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every caller that awaits a call moves its future (once per `async fn` it is awaited
    /// through), so its size is paid on every call: keep it in check. The bounds leave some
    /// room for compiler changes; a call that grew past them should shrink again (keep what
    /// lives across a wait small, and rare waits boxed).
    #[tokio::test]
    async fn a_call_future_stays_small() {
        let client = RpcClient::builder()
            .endpoint("tcp://127.0.0.1:1")
            .start()
            .await
            .expect("client");
        let msg = String::new();
        let call = client.call::<String, String>("s", "m", &msg);
        let call_size = std::mem::size_of_val(&call);
        drop(call);
        let mut req = Request::new(
            "s",
            "m",
            Codec::Protobuf,
            bytes::Bytes::new(),
            Instant::now(),
        );
        let invoke = client.channel().invoke(&mut req);
        let invoke_size = std::mem::size_of_val(&invoke);
        drop(invoke);
        assert!(
            std::mem::size_of::<Request<'_>>() <= 256,
            "Request is {} bytes",
            std::mem::size_of::<Request<'_>>()
        );
        assert!(
            invoke_size <= 192,
            "Channel::invoke's future is {invoke_size} bytes"
        );
        assert!(call_size <= 480, "a call's future is {call_size} bytes");
        client.close().await;
    }
}
