//! The untyped request and response that flow through client layers: a call after its typed
//! front has encoded the message, before the transport frames it.

use super::super::balance::Node;
use super::super::codec::Codec;
use super::super::metadata::MetadataMap;
use super::super::policy::Policy;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One call on its way out: names, codec, deadline, metadata, the encoded body, and what the
/// layers below need to route it. A layer may read and change any of it; a layer that retries
/// calls the next layer again with the same request (the body is re-sent, not re-encoded).
#[derive(Debug)]
pub struct Request<'a> {
    /// The service called.
    pub service: &'a str,
    /// The method called.
    pub method: &'a str,
    /// The body's codec.
    pub codec: Codec,
    /// When the caller stops waiting (the time remaining travels to the server).
    pub deadline: Instant,
    /// Metadata sent with the request.
    pub metadata: MetadataMap,
    /// The encoded message.
    pub body: Bytes,
    /// For balancers that keep a key on one instance (see [`balance::hash_key`](super::super::balance::hash_key)).
    pub hash_key: Option<u64>,
    /// Per-call options.
    pub options: CallOptions,
    /// Instances ([`Node::key`]) the balancer should avoid (a failover adds the ones it tried).
    pub exclude: Vec<u64>,
    /// The instance the last attempt was sent to, set by the transport (`None` if no instance
    /// was picked).
    pub instance: Option<Node>,
    /// The instance ([`Node::key`]) to call if it is live, whatever the balancer would pick (a
    /// failtry sets it to retry on the same instance).
    pub affinity: Option<u64>,
    /// Retries a strategy layer sent for this call (read by layers above it, statistics).
    pub retries: u32,
    /// Hedges and extra forks a strategy layer sent for this call.
    pub hedges: u32,
    /// Attempts of one call sent at once to distinct instances (forking, hedging): each
    /// attempt's pick avoids the instances the others took.
    pub(crate) spread: Option<Arc<Spread>>,
    /// A [`Cluster`](crate::rpc::Cluster) layer has taken charge of this call: strategy
    /// layers below it pass it through (so retries never multiply).
    pub(crate) clustered: bool,
    /// The clock reading the typed front took (saves the transport reading it again on a
    /// first attempt).
    pub(crate) now: Option<Instant>,
}

impl<'a> Request<'a> {
    /// A request of `service.method` carrying `body` in `codec`, due by `deadline`.
    pub fn new(
        service: &'a str,
        method: &'a str,
        codec: Codec,
        body: Bytes,
        deadline: Instant,
    ) -> Self {
        let (metadata, options) = (MetadataMap::new(), CallOptions::default());
        Request::first(
            service, method, codec, body, deadline, metadata, None, options, None,
        )
    }

    /// The request of a first attempt, in one literal: each field is written once, where the
    /// request will lie (built field by field, it was copied through the stack, and the copies
    /// stalled on the stores that had just made it).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn first(
        service: &'a str,
        method: &'a str,
        codec: Codec,
        body: Bytes,
        deadline: Instant,
        metadata: MetadataMap,
        hash_key: Option<u64>,
        options: CallOptions,
        now: Option<Instant>,
    ) -> Self {
        Request {
            service,
            method,
            codec,
            deadline,
            metadata,
            body,
            hash_key,
            options,
            exclude: Vec::new(),
            instance: None,
            affinity: None,
            retries: 0,
            hedges: 0,
            spread: None,
            clustered: false,
            now,
        }
    }

    /// A copy for another attempt of the same call (names, codec, deadline, metadata, body,
    /// hash key, options and exclusions; no instance yet).
    pub fn attempt_copy(&self) -> Request<'a> {
        Request {
            service: self.service,
            method: self.method,
            codec: self.codec,
            deadline: self.deadline,
            metadata: self.metadata.clone(),
            body: self.body.clone(),
            hash_key: self.hash_key,
            options: self.options.clone(),
            exclude: self.exclude.clone(),
            instance: None,
            affinity: self.affinity,
            retries: 0,
            hedges: 0,
            spread: self.spread.clone(),
            clustered: self.clustered,
            now: None,
        }
    }
}

/// The instances the attempts of one forking or hedging call were sent to.
#[derive(Debug, Default)]
pub(crate) struct Spread {
    pub(crate) taken: Mutex<Vec<u64>>,
}

/// Options of one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// A oneway call: no response is expected; it ends once the request is queued.
    pub oneway: bool,
    /// The method can safely run twice (strategies may retry it even after it may have
    /// reached a server).
    pub idempotent: bool,
    /// With no live connection, wait for one up to the deadline instead of failing fast with
    /// `unavailable` once every instance has refused.
    pub wait_for_connection: bool,
    /// The cluster policy of this call, over the one a [`Cluster`](crate::rpc::Cluster)
    /// layer would give it (shared: the calls of one [`CallConfig`](crate::rpc::CallConfig)
    /// carry one policy, with no copy or allocation per call).
    pub policy: Option<Arc<Policy>>,
    /// The policy the method declares (a `#[qsocket(strategy = …)]` attribute, or an IDL
    /// option; a `const` of the generated code): a [`Cluster`](crate::rpc::Cluster) layer's
    /// own settings for the service or method override it; it overrides the layer's default.
    pub method_policy: Option<&'static Policy>,
}

/// The answer to a call, before its typed front decodes it.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// The body's codec.
    pub codec: Codec,
    /// The encoded message (empty for a oneway call).
    pub body: Bytes,
    /// Metadata the server sent with the response.
    pub metadata: MetadataMap,
}
