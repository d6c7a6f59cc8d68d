//! Server layers: code that sees every call a server dispatches to a handler — before the
//! handler runs, where it may refuse the call or make it wait for an asynchronous check, and
//! after its outcome, with the latency. Authentication, invoke statistics, logging and rate
//! limits are layers. The order and what layers see are documented on [`ServerLayer`].

use crate::rpc::{CallContext, Status};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The asynchronous check of [`Admit::Wait`]: it resolves to the call's context (as the layer
/// updated it) to go on, or to the status that refuses the call.
pub type AdmitFuture = Pin<Box<dyn Future<Output = Result<CallContext, Status>> + Send>>;

/// What a layer's [`on_request`](ServerLayer::on_request) decides about a call.
pub enum Admit {
    /// Go on: the next layer, then the handler.
    Pass,
    /// Refuse the call with this status; the handler does not run (and nor does any layer
    /// further in).
    Refuse(Status),
    /// Decide later, asynchronously (a remote auth lookup, a rate limiter that waits): the
    /// layer clones the context, does its work, and resolves to the updated context to go on
    /// or to a status to refuse. Meanwhile the request waits like a pending handler — it counts
    /// against the session's in-flight limit, its deadline runs, a `cancel` frame drops it —
    /// and the next layers and the handler start when it resolves. The only admission that
    /// allocates (the boxed future).
    Wait(AdmitFuture),
}

impl Admit {
    /// [`Admit::Wait`] for `check`, boxed.
    ///
    /// ```
    /// use qsocket::rpc::{Admit, CallContext, Status};
    /// fn later(call: &CallContext) -> Admit {
    ///     let mut call = call.clone();
    ///     Admit::wait(async move {
    ///         // … look the caller up somewhere …
    ///         call.extensions_mut().insert(42u32);
    ///         Ok::<_, Status>(call)
    ///     })
    /// }
    /// ```
    pub fn wait(check: impl Future<Output = Result<CallContext, Status>> + Send + 'static) -> Self {
        Admit::Wait(Box::pin(check))
    }
}

impl fmt::Debug for Admit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Admit::Pass => f.write_str("Pass"),
            Admit::Refuse(st) => f.debug_tuple("Refuse").field(st).finish(),
            Admit::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// A server layer: sees each call before its handler runs, and its outcome after.
///
/// Both methods have defaults that do nothing, so a layer writes only what it needs. They run
/// on the session's task, in the middle of its poll: they must not block (an asynchronous
/// check returns [`Admit::Wait`]). A layer that panics in `on_request` ends that call with
/// `internal`; a panic in `on_response` is logged and ignored.
///
/// **Composition.** Layers are composed statically ([`ServerStack`], built by
/// [`RpcServerBuilder::layer`](super::RpcServerBuilder::layer)) and run inside the session
/// task's in-place poll of the request: the empty chain `()` compiles away, and no layer costs
/// an allocation per call unless it asks for one ([`Admit::Wait`]). [`BoxServerLayer`] is the
/// type-erased form, for chains put together at run time.
///
/// **Order.** The layer added first is the outermost: its [`on_request`](Self::on_request)
/// runs first and its [`on_response`](Self::on_response) last. With
/// `builder.layer(auth).layer(stats)`, `auth` admits the call before `stats` sees it, and
/// `stats` records the outcome before `auth` does.
///
/// **What layers see.** Only calls to a method the router knows, in a codec its types speak,
/// with well-formed metadata and a deadline not yet passed: every other request is answered by
/// the server itself (`unimplemented`, `invalid_argument`, `deadline_exceeded`) without reaching
/// a layer. A layer's `on_response` runs exactly once for every call its own `on_request`
/// admitted: when the handler succeeded or failed (a body that cannot be decoded included),
/// panicked, ran past its deadline, or was cancelled (a `cancel` frame, or its session closed
/// while it ran or waited: status `cancelled`); also when a layer further in refused the call.
/// Oneway calls go through layers too (their outcome is never sent).
///
/// ```
/// use qsocket::rpc::{Admit, CallContext, ServerLayer, Status};
/// use std::time::Duration;
///
/// /// Refuses calls without a token; gives the handler the caller's name.
/// struct Auth;
///
/// #[derive(Clone)]
/// struct Caller(String);
///
/// impl ServerLayer for Auth {
///     // Only `on_request`: the server need not time calls for this layer.
///     const OBSERVES: bool = false;
///     fn on_request(&self, call: &mut CallContext) -> Admit {
///         match call.metadata().get("authorization") {
///             Some(b"Bearer let-me-in") => {
///                 call.extensions_mut().insert(Caller("ada".into()));
///                 Admit::Pass
///             }
///             _ => Admit::Refuse(Status::unauthenticated("a valid token is required")),
///         }
///     }
/// }
///
/// /// Logs every outcome.
/// struct Log;
///
/// impl ServerLayer for Log {
///     fn on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
///         eprintln!("{}/{} {:?} in {latency:?}", call.service(), call.method(), status.err());
///     }
/// }
/// # use qsocket::rpc::{Router, RpcServer};
/// # let _ = RpcServer::builder(Router::new()).layer(Log).layer(Auth);
/// ```
pub trait ServerLayer: Send + Sync + 'static {
    /// Whether this layer wants [`on_response`](Self::on_response). When no layer of a chain
    /// does, the server does not read the clock or keep anything per call for outcomes. `true`
    /// unless a layer says otherwise (`()` says `false`).
    const OBSERVES: bool = true;

    /// Runs before the handler, after the router found the method: read the call (service,
    /// method, peer, metadata, deadline, session attributes), change its metadata, attach
    /// [`extensions`](CallContext::extensions_mut) for the handler, and decide.
    fn on_request(&self, call: &mut CallContext) -> Admit {
        let _ = call;
        Admit::Pass
    }

    /// Runs once the call's outcome is known, for every call this layer admitted: `status` is
    /// `Ok` for a response, or the error the caller was (or, for a oneway call, would have
    /// been) answered with. `call` is the context as the handler got it; `latency` counts
    /// from the start of dispatch to the response being written.
    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
        let _ = (call, status, latency);
    }
}

/// No layer: admits everything, observes nothing, costs nothing.
impl ServerLayer for () {
    const OBSERVES: bool = false;
}

/// Two layers in one: `outer` runs first before the handler and last after it (see
/// [`ServerLayer`] for the order). Made by
/// [`RpcServerBuilder::layer`](super::RpcServerBuilder::layer); nest them for more.
pub struct ServerStack<A, B> {
    outer: Arc<A>,
    inner: Arc<B>,
}

impl<A, B> ServerStack<A, B> {
    /// `outer` around `inner`.
    pub fn new(outer: A, inner: B) -> Self {
        ServerStack {
            outer: Arc::new(outer),
            inner: Arc::new(inner),
        }
    }

    /// The outer layer.
    pub fn outer(&self) -> &A {
        &self.outer
    }

    /// The inner layer.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<A, B> Clone for ServerStack<A, B> {
    fn clone(&self) -> Self {
        ServerStack {
            outer: self.outer.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<A, B> fmt::Debug for ServerStack<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStack")
            .field("outer", &std::any::type_name::<A>())
            .field("inner", &std::any::type_name::<B>())
            .finish()
    }
}

impl<A: ServerLayer, B: ServerLayer> ServerLayer for ServerStack<A, B> {
    const OBSERVES: bool = A::OBSERVES || B::OBSERVES;

    fn on_request(&self, call: &mut CallContext) -> Admit {
        match self.outer.on_request(call) {
            Admit::Pass => admit_inner(&self.outer, &*self.inner, call),
            Admit::Refuse(st) => Admit::Refuse(st),
            Admit::Wait(check) => {
                let (outer, inner) = (self.outer.clone(), self.inner.clone());
                Admit::wait(async move {
                    let mut call = check.await?;
                    match admit_inner(&outer, &*inner, &mut call) {
                        Admit::Pass => Ok(call),
                        Admit::Refuse(st) => Err(st),
                        Admit::Wait(check) => check.await,
                    }
                })
            }
        }
    }

    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
        if B::OBSERVES {
            self.inner.on_response(call, status, latency);
        }
        if A::OBSERVES {
            self.outer.on_response(call, status, latency);
        }
    }
}

/// The inner layer's decision about a call the outer one admitted: if the inner layer refuses
/// it (at once, later, or by being dropped while it waits), that is the call's outcome for the
/// outer layer.
fn admit_inner<A: ServerLayer, B: ServerLayer>(
    outer: &Arc<A>,
    inner: &B,
    call: &mut CallContext,
) -> Admit {
    match inner.on_request(call) {
        Admit::Pass => Admit::Pass,
        Admit::Refuse(st) => {
            if A::OBSERVES {
                tell(&**outer, call, Err(&st));
            }
            Admit::Refuse(st)
        }
        Admit::Wait(check) if !A::OBSERVES => Admit::Wait(check),
        Admit::Wait(check) => {
            let mut refused = Refused {
                outer: outer.clone(),
                call: Some(call.clone()),
            };
            Admit::wait(async move {
                match check.await {
                    Ok(call) => {
                        refused.admitted();
                        Ok(call)
                    }
                    Err(st) => {
                        refused.tell(&st);
                        Err(st)
                    }
                }
            })
        }
    }
}

/// Gives `layer` a call's outcome; a panic in it is logged, not passed on (this may run while
/// a call is dropped).
pub(super) fn tell<L: ServerLayer + ?Sized>(
    layer: &L,
    call: &CallContext,
    status: Result<(), &Status>,
) {
    let latency = call.elapsed();
    let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        layer.on_response(call, status, latency)
    }));
    if told.is_err() {
        tracing::error!(
            service = call.service(),
            method = call.method(),
            "a server layer panicked in on_response"
        );
    }
}

/// Tells an outer layer that the call it admitted was refused further in, or, if dropped
/// before the inner check ended, cancelled.
struct Refused<A: ServerLayer> {
    outer: Arc<A>,
    /// The call as the outer layer admitted it; `None` once told (or admitted).
    call: Option<CallContext>,
}

impl<A: ServerLayer> Refused<A> {
    /// The inner layers admitted the call: the outer one hears of it with its outcome.
    fn admitted(&mut self) {
        self.call = None;
    }

    fn tell(&mut self, st: &Status) {
        if let Some(call) = self.call.take() {
            tell(&*self.outer, &call, Err(st));
        }
    }
}

impl<A: ServerLayer> Drop for Refused<A> {
    fn drop(&mut self) {
        if self.call.is_some() {
            self.tell(&Status::cancelled(
                "the call was cancelled while a server layer checked it",
            ));
        }
    }
}

/// The object-safe form of [`ServerLayer`], for layers chosen at run time (see
/// [`BoxServerLayer`]). Every `ServerLayer` is one; `Box<dyn DynServerLayer>` and
/// `Arc<dyn DynServerLayer>` are `ServerLayer`s again.
pub trait DynServerLayer: Send + Sync + 'static {
    /// [`ServerLayer::OBSERVES`].
    fn dyn_observes(&self) -> bool;
    /// [`ServerLayer::on_request`].
    fn dyn_on_request(&self, call: &mut CallContext) -> Admit;
    /// [`ServerLayer::on_response`].
    fn dyn_on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration);
}

impl<T: ServerLayer> DynServerLayer for T {
    fn dyn_observes(&self) -> bool {
        T::OBSERVES
    }

    fn dyn_on_request(&self, call: &mut CallContext) -> Admit {
        self.on_request(call)
    }

    fn dyn_on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
        if T::OBSERVES {
            self.on_response(call, status, latency);
        }
    }
}

/// A type-erased layer, for chains put together at run time (one virtual call per hook; the
/// server times calls for it whether or not it observes). Fold boxed layers into one with
/// [`ServerStack`] — the first in the fold is the outermost:
///
/// ```
/// use qsocket::rpc::{BoxServerLayer, Router, RpcServer, ServerLayer, ServerStack};
/// struct Audit;
/// impl ServerLayer for Audit {}
/// struct Quota;
/// impl ServerLayer for Quota {}
///
/// let mut chosen: Vec<BoxServerLayer> = vec![Box::new(Audit)];
/// if std::env::var_os("QUOTA").is_some() {
///     chosen.push(Box::new(Quota));
/// }
/// let chain: BoxServerLayer = chosen
///     .into_iter()
///     .fold(Box::new(()), |outer, l| Box::new(ServerStack::new(outer, l)));
/// let builder = RpcServer::builder(Router::new()).layer(chain);
/// # let _ = builder;
/// ```
pub type BoxServerLayer = Box<dyn DynServerLayer>;

impl ServerLayer for dyn DynServerLayer {
    fn on_request(&self, call: &mut CallContext) -> Admit {
        self.dyn_on_request(call)
    }

    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
        self.dyn_on_response(call, status, latency);
    }
}

impl<T: ServerLayer + ?Sized> ServerLayer for Box<T> {
    const OBSERVES: bool = T::OBSERVES;

    fn on_request(&self, call: &mut CallContext) -> Admit {
        (**self).on_request(call)
    }

    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
        (**self).on_response(call, status, latency);
    }
}

impl<T: ServerLayer + ?Sized> ServerLayer for Arc<T> {
    const OBSERVES: bool = T::OBSERVES;

    fn on_request(&self, call: &mut CallContext) -> Admit {
        (**self).on_request(call)
    }

    fn on_response(&self, call: &CallContext, status: Result<(), &Status>, latency: Duration) {
        (**self).on_response(call, status, latency);
    }
}
