//! Typed handlers with their types erased: what [`Service::unary`](super::Service::unary)
//! turns a closure into (decode the request, run, encode the response and its metadata straight
//! into the response frame), and [`IntoReply`], what a handler may return.

use crate::rpc::codec::{unspoken, Codec, Message};
use crate::rpc::context::{with_deadline, CallContext};
use crate::rpc::frame::{encode_frame, kind, EncodeError, Header, Limits, HEADER_LEN};
use crate::rpc::{Reply, Status};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// What a handler's successful result may be: a message, or a [`Reply`] — a message with
/// response metadata.
///
/// ```
/// use qsocket::rpc::{CallContext, Reply, Service, Status};
/// let svc = Service::new("math.Math")
///     .unary("Double", |x: i64, _ctx: CallContext| async move { Ok::<_, Status>(2 * x) })
///     .unary("Triple", |x: i64, _ctx: CallContext| async move {
///         Ok::<_, Status>(Reply::new(3 * x).with_metadata("cache", "miss"))
///     });
/// ```
pub trait IntoReply: Send + 'static {
    /// The message the response carries.
    type Body: Message;
    /// The message and the response metadata.
    fn into_reply(self) -> Reply<Self::Body>;
}

impl<T: Message> IntoReply for T {
    type Body = T;

    fn into_reply(self) -> Reply<T> {
        Reply::new(self)
    }
}

impl<T: Message> IntoReply for Reply<T> {
    type Body = T;

    fn into_reply(self) -> Reply<T> {
        self
    }
}

/// The bit of `codec` in a set of codecs.
pub(super) fn codec_bit(codec: Codec) -> u32 {
    1u32.checked_shl(u32::from(codec.id())).unwrap_or(0)
}

/// What the response frame needs from the request.
#[derive(Clone, Copy)]
pub(super) struct RequestHead {
    pub(super) id: u64,
    pub(super) codec: Codec,
    pub(super) limits: Limits,
}

/// What a typed handler becomes once its types are erased.
pub(super) trait Handler: Send + Sync {
    /// The codecs both the request and the response type speak, a bit per codec id (see
    /// [`codec_bit`]).
    fn codecs(&self) -> u32;

    /// The refusal of a request in `codec`, which the request or the response type does not
    /// speak (saying which).
    fn refuse_codec(&self, codec: Codec) -> Status;

    /// Decodes the body and starts the handler (the one allocation of a call).
    fn call(
        &self,
        req: RequestHead,
        body: Bytes,
        ctx: CallContext,
    ) -> Result<Pin<Box<dyn Running>>, Status>;
}

/// A running call with its types erased: it is polled until the handler is done, then writes
/// its response frame straight into the session's write buffer (no buffer of its own, no copy).
pub(super) trait Running: Send {
    /// Drives the handler; `Ready` once it has finished (its result is kept inside).
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
    /// Appends the response frame of a finished call to `out`, or gives the error status.
    fn write_response(self: Pin<&mut Self>, out: &mut BytesMut) -> Result<(), Status>;
    /// How a finished call ended (for oneway calls, whose response is not written).
    fn outcome(&self) -> Result<(), &Status>;
}

/// A unary handler, typed.
pub(super) struct Unary<F, Req, R> {
    f: F,
    _types: PhantomData<fn(Req) -> R>,
}

impl<F, Req, R> Unary<F, Req, R> {
    pub(super) fn new(f: F) -> Self {
        Unary {
            f,
            _types: PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// A unary handler's future and, once it is done, its result.
    struct UnaryCall<Fut, R> {
        #[pin]
        fut: Fut,
        done: Option<Result<R, Status>>,
        head: RequestHead,
    }
}

impl<Fut, R> Running for UnaryCall<Fut, R>
where
    Fut: Future<Output = Result<R, Status>> + Send,
    R: IntoReply,
{
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.done.is_some() {
            return Poll::Ready(());
        }
        match this.fut.poll(cx) {
            Poll::Ready(r) => {
                *this.done = Some(r);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn write_response(self: Pin<&mut Self>, out: &mut BytesMut) -> Result<(), Status> {
        let this = self.project();
        let head = *this.head;
        let Reply { body, metadata } = match this.done.take() {
            Some(r) => r?.into_reply(),
            None => return Err(Status::internal("response taken twice")),
        };
        let h = Header {
            kind: kind::RESPONSE,
            codec: head.codec.id(),
            id: head.id,
            metadata: metadata.as_wire(),
            ..Header::default()
        };
        out.reserve(HEADER_LEN + metadata.as_wire().len() + body.size_hint(head.codec));
        encode_frame(out, &h, &head.limits, |b| body.encode_body(head.codec, b)).map_err(
            |e| match e {
                EncodeError::Body(st) => st,
                EncodeError::Frame(e) => Status::resource_exhausted(format!("response: {e}")),
            },
        )
    }

    fn outcome(&self) -> Result<(), &Status> {
        match &self.done {
            Some(Ok(_)) => Ok(()),
            Some(Err(st)) => Err(st),
            None => Ok(()),
        }
    }
}

impl<F, Fut, Req, R> Handler for Unary<F, Req, R>
where
    F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
    Req: Message,
    R: IntoReply,
{
    fn codecs(&self) -> u32 {
        Req::CODECS
            .iter()
            .filter(|c| R::Body::speaks(**c))
            .fold(0, |bits, c| bits | codec_bit(*c))
    }

    fn refuse_codec(&self, codec: Codec) -> Status {
        if Req::speaks(codec) {
            unspoken::<R::Body>(codec, R::Body::CODECS)
        } else {
            unspoken::<Req>(codec, Req::CODECS)
        }
    }

    fn call(
        &self,
        req: RequestHead,
        body: Bytes,
        ctx: CallContext,
    ) -> Result<Pin<Box<dyn Running>>, Status> {
        let msg = Req::decode_body(req.codec, body)?;
        Ok(Box::pin(UnaryCall {
            fut: (self.f)(msg, ctx),
            done: None,
            head: req,
        }))
    }
}

pin_project_lite::pin_project! {
    /// A handler's future with the call's deadline as the inherited one while it is polled
    /// (for a handler running on a task of its own).
    pub(super) struct WithDeadline<Fut> {
        deadline: Option<Instant>,
        #[pin]
        fut: Fut,
    }
}

impl<Fut> WithDeadline<Fut> {
    pub(super) fn new(deadline: Option<Instant>, fut: Fut) -> Self {
        WithDeadline { deadline, fut }
    }
}

impl<Fut: Future> Future for WithDeadline<Fut> {
    type Output = Fut::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fut::Output> {
        let this = self.project();
        let fut = this.fut;
        with_deadline(*this.deadline, || fut.poll(cx))
    }
}

/// A handler running as a task of its own; aborted when the call is dropped (cancelled, past
/// its deadline, session gone).
pub(super) struct Spawned<T>(pub(super) tokio::task::JoinHandle<Result<T, Status>>);

impl<T> Future for Spawned<T> {
    type Output = Result<T, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| match joined {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(panic_status(e.into_panic())),
            Err(_) => Err(Status::cancelled("handler task cancelled")),
        })
    }
}

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `internal` status of a handler (or layer) that panicked.
pub(super) fn panic_status(panic: Box<dyn std::any::Any + Send>) -> Status {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into());
    tracing::error!(panic = %what, "rpc handler panicked");
    Status::internal(format!("handler panicked: {what}"))
}
