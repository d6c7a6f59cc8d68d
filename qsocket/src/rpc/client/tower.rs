//! Tower layers as client layers (feature `tower`). A tower [`Layer`](tower_layer::Layer)
//! wraps a tower [`Service`](tower_service::Service) of [`TowerRequest`]s; [`TowerLayer`] puts
//! it in a client's chain. Convenient, not free: the request's names are copied into owned
//! strings and each call is boxed once (see the README for the measured cost).

use super::super::balance::Node;
use super::super::codec::Codec;
use super::super::metadata::MetadataMap;
use super::super::status::Status;
use super::layer::{ClientLayer, Invoke};
use super::request::{CallOptions, Request, Response};
use bytes::Bytes;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// A request as a tower service sees it: [`Request`] with owned names.
#[derive(Debug, Clone)]
pub struct TowerRequest {
    /// The service called.
    pub service: String,
    /// The method called.
    pub method: String,
    /// The body's codec.
    pub codec: Codec,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Metadata sent with the request.
    pub metadata: MetadataMap,
    /// The encoded message.
    pub body: Bytes,
    /// The balancer's hash key.
    pub hash_key: Option<u64>,
    /// Per-call options.
    pub options: CallOptions,
    /// Instances to avoid.
    pub exclude: Vec<u64>,
}

/// The answer a tower service gives: the response and the instance that gave it.
pub type TowerResponse = (Response, Option<Node>);

/// The inner tower service a tower layer wraps: the rest of the client's chain.
pub struct TowerInner<I>(Arc<I>);

impl<I> Clone for TowerInner<I> {
    fn clone(&self) -> Self {
        TowerInner(self.0.clone())
    }
}

impl<I: Invoke> tower_service::Service<TowerRequest> for TowerInner<I> {
    type Response = TowerResponse;
    type Error = (Status, Option<Node>);
    type Future =
        Pin<Box<dyn Future<Output = Result<TowerResponse, (Status, Option<Node>)>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, t: TowerRequest) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let mut req = Request::new(&t.service, &t.method, t.codec, t.body, t.deadline);
            req.metadata = t.metadata;
            req.hash_key = t.hash_key;
            req.options = t.options;
            req.exclude = t.exclude;
            match inner.invoke(&mut req).await {
                Ok(r) => Ok((r, req.instance)),
                Err(st) => Err((st, req.instance)),
            }
        })
    }
}

/// A tower layer used as a client layer. Its service must answer with [`TowerResponse`] and
/// fail with `(Status, Option<Node>)`, as the inner service does (map errors of your own into
/// a `Status`).
///
/// ```
/// use qsocket::rpc::{ClientLayer, TowerInner, TowerLayer};
/// // Any tower layer: here tower-layer's identity.
/// let layer = TowerLayer(tower_layer::Identity::new());
/// # fn check<I: qsocket::rpc::Invoke>(l: TowerLayer<tower_layer::Identity>, i: I) { let _ = l.layer(i); }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TowerLayer<L>(pub L);

/// The invoker a [`TowerLayer`] makes.
pub struct FromTower<S>(S);

impl<I, L> ClientLayer<I> for TowerLayer<L>
where
    I: Invoke,
    L: tower_layer::Layer<TowerInner<I>>,
    L::Service: tower_service::Service<
            TowerRequest,
            Response = TowerResponse,
            Error = (Status, Option<Node>),
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower_service::Service<TowerRequest>>::Future: Send,
{
    type Invoke = FromTower<L::Service>;

    fn layer(self, inner: I) -> Self::Invoke {
        FromTower(self.0.layer(TowerInner(Arc::new(inner))))
    }
}

impl<S> Invoke for FromTower<S>
where
    S: tower_service::Service<
            TowerRequest,
            Response = TowerResponse,
            Error = (Status, Option<Node>),
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        let mut svc = self.0.clone();
        let t = TowerRequest {
            service: req.service.to_string(),
            method: req.method.to_string(),
            codec: req.codec,
            deadline: req.deadline,
            metadata: std::mem::take(&mut req.metadata),
            body: req.body.clone(),
            hash_key: req.hash_key,
            options: req.options.clone(),
            exclude: std::mem::take(&mut req.exclude),
        };
        let outcome = match poll_fn(|cx| svc.poll_ready(cx)).await {
            Ok(()) => svc.call(t).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok((resp, instance)) => {
                req.instance = instance;
                Ok(resp)
            }
            Err((st, instance)) => {
                req.instance = instance;
                Err(st)
            }
        }
    }
}
