//! Client layers: what runs between a typed call and the transport. An [`Invoke`] takes an
//! untyped [`Request`] and gives its [`Response`] or a [`Status`]; a [`ClientLayer`] wraps one
//! `Invoke` in another. Layers are generic and statically dispatched (`async fn` in traits), so
//! a client without layers pays nothing for the seam; [`BoxInvoke`] erases the type for chains
//! built at run time.
//!
//! ```
//! use qsocket::rpc::{ClientLayer, Invoke, Request, Response, Status};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! /// Counts calls and adds a trace id to each.
//! struct Traced<I> { inner: I, calls: Arc<AtomicU64> }
//!
//! impl<I: Invoke> Invoke for Traced<I> {
//!     async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
//!         let n = self.calls.fetch_add(1, Ordering::Relaxed);
//!         req.metadata.insert("trace-id", n.to_string())?;
//!         self.inner.invoke(req).await
//!     }
//! }
//!
//! struct Trace(Arc<AtomicU64>);
//!
//! impl<I: Invoke> ClientLayer<I> for Trace {
//!     type Invoke = Traced<I>;
//!     fn layer(self, inner: I) -> Traced<I> {
//!         Traced { inner, calls: self.0 }
//!     }
//! }
//! // client.layer(Trace(counter)) gives a client whose calls go through it.
//! ```

use super::super::status::Status;
use super::request::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Sends a request and gives its outcome: the transport at the bottom of a client, and every
/// layer above it.
///
/// On return, `req.instance` says which instance the (last) attempt went to, and an error's
/// [`Status::sent`] whether the request may have reached it.
pub trait Invoke: Send + Sync + 'static {
    /// Sends `req` and waits for its response (for a oneway call: until it is queued).
    fn invoke(
        &self,
        req: &mut Request<'_>,
    ) -> impl Future<Output = Result<Response, Status>> + Send;
}

/// Wraps an [`Invoke`] in another: a piece of the call pipeline (statistics, a retry
/// strategy, credentials …).
pub trait ClientLayer<I> {
    /// The wrapped invoker.
    type Invoke: Invoke;
    /// Wraps `inner`.
    fn layer(self, inner: I) -> Self::Invoke;
}

impl<T: Invoke> Invoke for Arc<T> {
    fn invoke(
        &self,
        req: &mut Request<'_>,
    ) -> impl Future<Output = Result<Response, Status>> + Send {
        (**self).invoke(req)
    }
}

/// Two layers as one: `Stack(outer, inner)` wraps with `inner` first, so `outer` sees each
/// request first and each outcome last.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stack<Outer, Inner>(pub Outer, pub Inner);

impl<I, Outer, Inner> ClientLayer<I> for Stack<Outer, Inner>
where
    Inner: ClientLayer<I>,
    Outer: ClientLayer<Inner::Invoke>,
{
    type Invoke = Outer::Invoke;

    fn layer(self, inner: I) -> Self::Invoke {
        self.0.layer(self.1.layer(inner))
    }
}

/// The layer that adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<I: Invoke> ClientLayer<I> for Identity {
    type Invoke = I;

    fn layer(self, inner: I) -> I {
        inner
    }
}

/// A layer made of a function from the inner invoker to the outer one.
///
/// ```
/// use qsocket::rpc::{layer_fn, BoxInvoke, ClientLayer, Invoke};
/// fn boxed<I: Invoke>(inner: I) -> BoxInvoke {
///     layer_fn(BoxInvoke::new).layer(inner)
/// }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LayerFn<F>(F);

/// A [`ClientLayer`] from a function `inner -> outer`.
pub fn layer_fn<F>(f: F) -> LayerFn<F> {
    LayerFn(f)
}

impl<I, F, O> ClientLayer<I> for LayerFn<F>
where
    F: FnOnce(I) -> O,
    O: Invoke,
{
    type Invoke = O;

    fn layer(self, inner: I) -> O {
        (self.0)(inner)
    }
}

/// A boxed future of a call's outcome, as object-safe invokers return it.
pub type BoxCallFuture<'a> = Pin<Box<dyn Future<Output = Result<Response, Status>> + Send + 'a>>;

/// The object-safe form of [`Invoke`] (implemented for every `Invoke`).
pub trait DynInvoke: Send + Sync + 'static {
    /// [`Invoke::invoke`], boxed.
    fn invoke_boxed<'a>(&'a self, req: &'a mut Request<'_>) -> BoxCallFuture<'a>;
}

impl<T: Invoke> DynInvoke for T {
    fn invoke_boxed<'a>(&'a self, req: &'a mut Request<'_>) -> BoxCallFuture<'a> {
        Box::pin(self.invoke(req))
    }
}

/// An invoker whose type is erased: for chains built at run time (one box per call per boxed
/// level). Cheap to clone.
#[derive(Clone)]
pub struct BoxInvoke(Arc<dyn DynInvoke>);

impl BoxInvoke {
    /// Erases the type of `inner`.
    pub fn new(inner: impl Invoke) -> Self {
        BoxInvoke(Arc::new(inner))
    }
}

impl std::fmt::Debug for BoxInvoke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxInvoke")
    }
}

impl Invoke for BoxInvoke {
    async fn invoke(&self, req: &mut Request<'_>) -> Result<Response, Status> {
        self.0.invoke_boxed(req).await
    }
}

/// A layer chosen at run time: a function from a boxed invoker to a boxed invoker.
///
/// ```
/// use qsocket::rpc::{BoxInvoke, BoxLayer};
/// let layers: Vec<BoxLayer> = vec![BoxLayer::new(|inner: BoxInvoke| inner)];
/// # let _ = layers;
/// ```
#[derive(Clone)]
pub struct BoxLayer(Arc<dyn Fn(BoxInvoke) -> BoxInvoke + Send + Sync>);

impl BoxLayer {
    /// A layer from `f`.
    pub fn new(f: impl Fn(BoxInvoke) -> BoxInvoke + Send + Sync + 'static) -> Self {
        BoxLayer(Arc::new(f))
    }

    /// A boxed layer from a static one (which must accept a [`BoxInvoke`]).
    pub fn from_layer<L>(layer: L) -> Self
    where
        L: ClientLayer<BoxInvoke> + Clone + Send + Sync + 'static,
    {
        BoxLayer::new(move |inner| BoxInvoke::new(layer.clone().layer(inner)))
    }
}

impl std::fmt::Debug for BoxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxLayer")
    }
}

impl<I: Invoke> ClientLayer<I> for BoxLayer {
    type Invoke = BoxInvoke;

    fn layer(self, inner: I) -> BoxInvoke {
        (self.0)(BoxInvoke::new(inner))
    }
}

/// A chain of boxed layers applied in order (the first one sees requests first).
impl<I: Invoke> ClientLayer<I> for Vec<BoxLayer> {
    type Invoke = BoxInvoke;

    fn layer(self, inner: I) -> BoxInvoke {
        self.into_iter()
            .rev()
            .fold(BoxInvoke::new(inner), |acc, l| (l.0)(acc))
    }
}
