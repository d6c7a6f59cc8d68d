//! The services a server offers: [`Service`] (a name and its methods, each a typed handler),
//! [`Router`] (services by name; lookups of a request's names as borrowed bytes) and
//! [`NamedService`] (a type that names the service it implements, for generated servers).

use super::handler::{codec_bit, Handler, IntoReply, Spawned, Unary, WithDeadline};
use crate::rpc::codec::{Codec, Message};
use crate::rpc::{CallContext, Status};
use crate::Error;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// A fast hasher for the names and ids the server looks up on every request (FxHash's
/// multiply-rotate). Service and method maps hold only configured names (a peer's names are
/// looked up, never inserted); the per-session map of request ids holds at most
/// `max_in_flight` entries, so chosen colliding ids cannot make it grow or cost more than that.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(26) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// One service: a name and its methods.
pub struct Service {
    name: String,
    methods: FxMap<Box<[u8]>, Arc<Method>>,
    /// Method names in the order they were added (for listing).
    order: Vec<String>,
    /// Methods added more than once (an error when the server starts).
    duplicates: Vec<String>,
}

impl Service {
    /// A service named `name` (e.g. `"greeter.Greeter"`), without methods yet.
    pub fn new(name: impl Into<String>) -> Self {
        Service {
            name: name.into(),
            methods: FxMap::default(),
            order: Vec::new(),
            duplicates: Vec::new(),
        }
    }

    /// Adds a unary method: `handler(request, context)` returns the response — a message, or
    /// a [`Reply`](crate::rpc::Reply) to answer with response metadata (see [`IntoReply`]) —
    /// or a status.
    ///
    /// A request in a codec that the request or the response type does not speak (see
    /// [`Message::CODECS`]) is answered `invalid_argument` saying so, before anything is
    /// decoded or any layer runs.
    ///
    /// ```
    /// use qsocket::rpc::{CallContext, Service, Status};
    /// let svc = Service::new("math.Math").unary("Double", |x: i64, _ctx: CallContext| async move {
    ///     x.checked_mul(2).ok_or_else(|| Status::out_of_range("overflow"))
    /// });
    /// ```
    pub fn unary<Req, R, F, Fut>(mut self, method: &str, handler: F) -> Self
    where
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Status>> + Send + 'static,
        Req: Message,
        R: IntoReply,
    {
        let handler: Arc<dyn Handler> = Arc::new(Unary::new(handler));
        let m = Arc::new(Method {
            codecs: handler.codecs(),
            handler,
            service: self.name.as_bytes().into(),
            method: method.as_bytes().into(),
        });
        if self.methods.insert(method.as_bytes().into(), m).is_some() {
            self.duplicates.push(method.to_string());
        } else {
            self.order.push(method.to_string());
        }
        self
    }

    /// Adds a unary method whose handler runs as a task of its own (`tokio::spawn`) instead
    /// of on the session's task: for CPU-heavy or blocking-ish handlers, which would otherwise
    /// hold up every other call on the same connection, and which a multi-threaded runtime can
    /// then run in parallel. Costs a spawn per call. Deadlines, cancellation (the task is
    /// aborted), panics (`internal`), layers and the inherited deadline of nested calls behave
    /// as for [`unary`](Self::unary).
    ///
    /// ```
    /// use qsocket::rpc::{CallContext, Service, Status};
    /// let svc = Service::new("math.Math").unary_spawned("SumTo", |n: u64, _ctx: CallContext| async move {
    ///     Ok::<_, Status>((1..=n.min(10_000_000)).sum::<u64>())
    /// });
    /// ```
    pub fn unary_spawned<Req, R, F, Fut>(self, method: &str, handler: F) -> Self
    where
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Status>> + Send + 'static,
        Req: Message,
        R: IntoReply,
    {
        self.unary(method, move |req: Req, ctx: CallContext| {
            let deadline = ctx.deadline();
            let fut = handler(req, ctx);
            Spawned(tokio::spawn(WithDeadline::new(deadline, fut)))
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of its methods, in the order they were added.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("methods", &self.order)
            .finish()
    }
}

/// One method of a service: its handler, the codecs its types speak (tested per request
/// without a call into the handler), and its names (so a session can keep the method it
/// called last as one shared pointer, and match the next request's names against it).
pub(super) struct Method {
    pub(super) handler: Arc<dyn Handler>,
    codecs: u32,
    service: Box<[u8]>,
    method: Box<[u8]>,
}

impl Method {
    /// Whether this is the method `service`/`method` (the request's own bytes).
    pub(super) fn is(&self, service: &[u8], method: &[u8]) -> bool {
        *self.service == *service && *self.method == *method
    }

    /// Whether the method's request and response types speak `codec`; if not, the refusal
    /// (before anything is decoded) saying which does not.
    pub(super) fn check_codec(&self, codec: Codec) -> Result<(), Status> {
        if self.codecs & codec_bit(codec) != 0 {
            Ok(())
        } else {
            Err(self.handler.refuse_codec(codec))
        }
    }
}

/// A type that serves one named RPC service (generated servers implement it, so a registry can
/// publish what a server offers).
pub trait NamedService {
    /// The service's full name, e.g. `"greeter.Greeter"`.
    const NAME: &'static str;
    /// Its version (`""`: none given).
    const VERSION: &'static str = "";
    /// Its group (`""`: none given).
    const GROUP: &'static str = "";
}

/// The services a server offers, by name.
#[derive(Default)]
pub struct Router {
    services: FxMap<Box<[u8]>, Service>,
    /// Service names in the order they were added (for listing).
    order: Vec<String>,
    /// Services added more than once (an error when the server starts).
    duplicates: Vec<String>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.services()).finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Router::default()
    }

    /// Adds a service: a [`Service`] built by hand, or a generated server
    /// (`GreeterServer::new(impl)`). A name already added — or a method added twice to one service — is a
    /// mistake: [`RpcServerBuilder::start`](super::RpcServerBuilder::start) refuses it with
    /// [`Error::Config`] naming it (see also [`check`](Self::check)); nothing is silently
    /// replaced.
    pub fn add_service(mut self, service: impl Into<Service>) -> Self {
        let service = service.into();
        let name = service.name.clone();
        match self.services.entry(name.as_bytes().into()) {
            std::collections::hash_map::Entry::Occupied(_) => self.duplicates.push(name),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(service);
                self.order.push(name);
            }
        }
        self
    }

    /// The services, in the order they were added (each lists its methods).
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.order
            .iter()
            .filter_map(|n| self.services.get(n.as_bytes()))
    }

    /// Whether the router is well formed: no service name, and no method of a service, added
    /// twice.
    pub fn check(&self) -> Result<(), Error> {
        if let Some(name) = self.duplicates.first() {
            return Err(Error::Config(format!("service {name:?} is added twice")));
        }
        for svc in self.services() {
            if let Some(m) = svc.duplicates.first() {
                return Err(Error::Config(format!(
                    "method {m:?} of service {:?} is added twice",
                    svc.name
                )));
            }
        }
        Ok(())
    }

    /// The method `service`/`method`, looked up as the request's own bytes.
    pub(super) fn find(&self, service: &[u8], method: &[u8]) -> Result<&Arc<Method>, Status> {
        let svc = self.services.get(service).ok_or_else(|| {
            Status::unimplemented(format!(
                "unknown service {:?}",
                String::from_utf8_lossy(service)
            ))
        })?;
        svc.methods.get(method).ok_or_else(|| {
            Status::unimplemented(format!(
                "unknown method {:?} of service {:?}",
                String::from_utf8_lossy(method),
                svc.name
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Code;

    #[test]
    fn services_are_listed_and_names_added_twice_are_refused() {
        let echo = |x: i32, _| async move { Ok(x) };
        let r = Router::new()
            .add_service(Service::new("a.A").unary("M", echo).unary("N", echo))
            .add_service(Service::new("b.B").unary("O", echo));
        assert!(r.check().is_ok());
        let listed: Vec<(&str, Vec<&str>)> = r
            .services()
            .map(|s| (s.name(), s.methods().collect()))
            .collect();
        assert_eq!(listed, vec![("a.A", vec!["M", "N"]), ("b.B", vec!["O"])]);
        let twice = Router::new()
            .add_service(Service::new("a.A").unary("M", echo))
            .add_service(Service::new("a.A").unary("N", echo));
        let e = twice.check().expect_err("duplicate service");
        assert!(e.to_string().contains("\"a.A\" is added twice"), "{e}");
        assert!(twice.find(b"a.A", b"M").is_ok(), "the first one is kept");
        let e = Router::new()
            .add_service(Service::new("a.A").unary("M", echo).unary("M", echo))
            .check()
            .expect_err("duplicate method");
        assert!(e.to_string().contains("method \"M\""), "{e}");
    }

    #[test]
    fn unknown_service_and_method_are_named() {
        let r = Router::new()
            .add_service(Service::new("a.A").unary("M", |x: i32, _| async move { Ok(x) }));
        let e = r.find(b"b.B", b"M").err().expect("unknown service");
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e.message().contains("b.B"));
        let e = r.find(b"a.A", b"N").err().expect("unknown method");
        assert!(e.message().contains("\"N\"") && e.message().contains("a.A"));
        let m = r.find(b"a.A", b"M").expect("found");
        assert!(m.is(b"a.A", b"M"));
        // The same bytes split elsewhere are other names.
        assert!(!m.is(b"a.", b"AM") && !m.is(b"a.AM", b""));
    }

    #[test]
    fn a_codec_the_types_do_not_speak_is_refused_before_decoding() {
        use crate::rpc::{Codec, Json};
        let r = Router::new().add_service(
            Service::new("a.A")
                .unary("J", |x: Json<u32>, _| async move { Ok(x) })
                .unary("Out", |x: i32, _| async move { Ok(Json(x)) }),
        );
        let j = r.find(b"a.A", b"J").expect("J");
        assert!(j.check_codec(Codec::Json).is_ok());
        let e = j.check_codec(Codec::Protobuf).expect_err("protobuf");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .ends_with("cannot be carried as protobuf: it speaks json only"),
            "{e}"
        );
        let out = r.find(b"a.A", b"Out").expect("Out");
        let e = out.check_codec(Codec::Protobuf).expect_err("response type");
        assert!(e.message().contains("Json<i32>"), "{e}");
    }
}
