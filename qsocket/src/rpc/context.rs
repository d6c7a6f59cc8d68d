//! What a handler (and a server layer) knows about its call — service and method names, peer,
//! session attributes, metadata, deadline, typed extensions — and the deadline that calls made
//! inside a handler inherit.

use super::frame::{Frame, Metadata, HEADER_LEN};
use super::metadata::MetadataMap;
use crate::session::{Session, Transport};
use bytes::Bytes;
use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

thread_local! {
    /// The deadline of the request whose handler is being polled on this thread. A handler
    /// runs only inside its server's poll, so a thread-local set around that poll is the
    /// task's own (and cheaper per call than a tokio task-local).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

thread_local! {
    /// The context of the call whose generated handler is being polled on this thread (see
    /// [`CallContext::current`]).
    static CURRENT: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}

/// Puts the previous deadline back when a poll ends, a panicking one included.
struct Restore(Option<Instant>);

impl Drop for Restore {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.0));
    }
}

/// Runs `f` with `deadline` as the current call's deadline.
pub(crate) fn with_deadline<R>(deadline: Option<Instant>, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(DEADLINE.with(|d| d.replace(deadline)));
    f()
}

/// The deadline of the request whose handler is running now, if any: calls made from inside a
/// handler inherit it (unless given an earlier one). Tasks a handler spawns do not inherit
/// it.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.with(Cell::get)
}

/// The server side of one call: which method was called and by whom, its metadata and
/// deadline, the session it came on, and typed [`Extensions`] that server layers fill for the
/// handler (an authenticated identity, for one).
///
/// Making one costs no allocation: names and metadata are read from the request frame in
/// place (a shared slice of the read buffer), and an empty set of extensions holds nothing.
///
/// The service and method names are those of a method the server's router found (names of
/// unknown methods, which may not even be UTF-8, are answered `unimplemented` and never reach
/// a context), so they are always valid UTF-8.
#[derive(Clone)]
pub struct CallContext {
    deadline: Option<Instant>,
    /// The whole request frame (names, metadata and body share it).
    frame: Bytes,
    service_len: u8,
    method_len: u8,
    metadata_len: u16,
    session: Session<Bytes>,
    request_id: u64,
    /// What layers added: edited metadata and extensions (made on first use, so a call no
    /// layer touches carries one pointer for them; shared by clones until one changes).
    extra: Option<Arc<Extra>>,
    /// When the server began dispatching the call, if a layer observes outcomes (the latency
    /// they are given counts from here).
    started: Option<Instant>,
}

impl CallContext {
    /// A clone of the context of the call being served on this thread, when called from a
    /// method of a service written with `#[qsocket::service]` (or any future run in
    /// [`scope`](Self::scope)): the implementation reads its call's deadline, peer,
    /// metadata and authenticated identity without a context argument. `None` elsewhere,
    /// and in tasks the method spawns.
    ///
    /// ```
    /// use qsocket::rpc::CallContext;
    /// // Outside a call there is none.
    /// assert!(CallContext::current().is_none());
    /// ```
    pub fn current() -> Option<CallContext> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// `fut`, with this context as [`current`](Self::current) while it is polled: what a
    /// generated server wraps each method call in.
    pub fn scope<F: Future>(self, fut: F) -> Scoped<F> {
        Scoped {
            ctx: Some(self),
            fut,
        }
    }

    /// The context of `frame`, a request that came on `session`.
    pub(crate) fn new(frame: &Frame, session: &Session<Bytes>, deadline: Option<Instant>) -> Self {
        CallContext {
            deadline,
            frame: frame.as_bytes().clone(),
            // Both names are at most 255 bytes, the metadata block at most 65,535: the frame's
            // own length fields.
            service_len: u8::try_from(frame.service().len()).unwrap_or(u8::MAX),
            method_len: u8::try_from(frame.method().len()).unwrap_or(u8::MAX),
            metadata_len: u16::try_from(frame.metadata().0.len()).unwrap_or(u16::MAX),
            session: session.clone(),
            request_id: frame.id,
            extra: None,
            started: None,
        }
    }

    /// Marks the start of dispatch (only done when a layer observes outcomes).
    pub(crate) fn set_started(&mut self, at: Instant) {
        self.started = Some(at);
    }

    /// The time since dispatch began, if it was recorded.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |s| s.elapsed())
    }

    fn name(&self, start: usize, len: u8) -> &str {
        let bytes = self
            .frame
            .get(start..start + len as usize)
            .unwrap_or_default();
        // Only names the router matched (configured as `&str`) reach a context.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    /// The service called, e.g. `"greeter.Greeter"`.
    pub fn service(&self) -> &str {
        self.name(HEADER_LEN, self.service_len)
    }

    /// The method called, e.g. `"SayHello"`.
    pub fn method(&self) -> &str {
        self.name(HEADER_LEN + self.service_len as usize, self.method_len)
    }

    /// When the caller stops waiting (received time + the time remaining it sent).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The metadata block inside the request frame.
    fn wire_metadata(&self) -> &[u8] {
        let start = HEADER_LEN + self.service_len as usize + self.method_len as usize;
        self.frame
            .get(start..start + self.metadata_len as usize)
            .unwrap_or_default()
    }

    /// The request's encoded body, as the client sent it (a slice of the request frame; an
    /// authenticator checks a signature over it).
    pub fn request_body(&self) -> &[u8] {
        let start = HEADER_LEN
            + self.service_len as usize
            + self.method_len as usize
            + self.metadata_len as usize;
        self.frame.get(start..).unwrap_or_default()
    }

    /// The request's metadata entries (as server layers left them).
    pub fn metadata(&self) -> Metadata<'_> {
        match self.extra.as_ref().and_then(|x| x.edited.as_ref()) {
            Some(map) => Metadata(map.as_wire()),
            None => Metadata(self.wire_metadata()),
        }
    }

    /// The request's metadata, editable: a server layer can add, change or remove entries the
    /// handler (and later layers) then see. The first call copies the block out of the
    /// request frame.
    pub fn metadata_mut(&mut self) -> &mut MetadataMap {
        let wire = HEADER_LEN + self.service_len as usize + self.method_len as usize;
        let wire = self
            .frame
            .get(wire..wire + self.metadata_len as usize)
            .unwrap_or_default();
        let extra = Arc::make_mut(self.extra.get_or_insert_with(Default::default));
        // The block was checked when the request was dispatched.
        extra
            .edited
            .get_or_insert_with(|| MetadataMap::from_wire(wire).unwrap_or_default())
    }

    /// The caller's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.session.peer_addr()
    }

    /// The transport the call came over.
    pub fn transport(&self) -> Transport {
        self.session.transport()
    }

    /// The id of the session (connection, or UDP peer) the request came on.
    pub fn session_id(&self) -> u64 {
        self.session.id()
    }

    /// The request id (unique per session while the call is in flight).
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// A clone of the session's attribute of type `T`, if one is set. Session attributes live
    /// as long as the connection: what a layer learns once per connection (a TLS identity, a
    /// login) can be kept there for every later call on it.
    pub fn session_attr<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        self.session.attr::<T>()
    }

    /// Stores a typed attribute on the call's session, returning the previous value of that
    /// type.
    pub fn set_session_attr<T: Any + Send + Sync>(&self, value: T) -> Option<T> {
        self.session.set_attr(value)
    }

    /// Runs `f` with mutable access to the session's attribute of type `T` (or `None`). The
    /// session's attributes are locked while `f` runs: keep it short, and do not touch other
    /// attributes of the same session inside it.
    pub fn with_session_attr<T: Any + Send + Sync, R>(
        &self,
        f: impl FnOnce(Option<&mut T>) -> R,
    ) -> R {
        self.session.with_attr(f)
    }

    /// Removes and returns the session's attribute of type `T`.
    pub fn remove_session_attr<T: Any + Send + Sync>(&self) -> Option<T> {
        self.session.remove_attr::<T>()
    }

    /// The call's typed extensions: values server layers attached for the handler.
    pub fn extensions(&self) -> &Extensions {
        static EMPTY: Extensions = Extensions::new();
        self.extra.as_ref().map_or(&EMPTY, |x| &x.extensions)
    }

    /// The call's typed extensions, editable (a layer inserts, a handler may take).
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut Arc::make_mut(self.extra.get_or_insert_with(Default::default)).extensions
    }
}

pin_project_lite::pin_project! {
    /// A future polled with its call's [`CallContext`] as the current one (see
    /// [`CallContext::scope`]).
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F> {
        ctx: Option<CallContext>,
        #[pin]
        fut: F,
    }
}

/// Puts the context back into its [`Scoped`] future (and the previous one into the slot) when
/// a poll ends, a panicking one included.
struct PutBack<'a> {
    slot: &'a mut Option<CallContext>,
    previous: Option<CallContext>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        *self.slot = CURRENT.with(|c| c.replace(previous));
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let previous = CURRENT.with(|c| c.replace(this.ctx.take()));
        let _back = PutBack {
            slot: this.ctx,
            previous,
        };
        this.fut.poll(cx)
    }
}

/// The parts of a [`CallContext`] only layers fill.
#[derive(Clone, Default)]
struct Extra {
    /// The request metadata once a layer edited it (until then, the frame's own block).
    edited: Option<MetadataMap>,
    extensions: Extensions,
}

/// Shows names, ids and metadata keys (values may be credentials).
impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self
            .metadata()
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k))
            .collect();
        f.debug_struct("CallContext")
            .field("service", &self.service())
            .field("method", &self.method())
            .field("peer", &self.peer_addr())
            .field("session_id", &self.session_id())
            .field("request_id", &self.request_id)
            .field("deadline", &self.deadline)
            .field("metadata_keys", &keys)
            .field("extensions", self.extensions())
            .finish()
    }
}

/// A value that can be stored in [`Extensions`]: any `Clone + Send + Sync + 'static` type.
trait Extension: Any + Send + Sync {
    /// A copy of the value, shared no more (for a change to a value other clones share).
    fn clone_arc(&self) -> Arc<dyn Extension>;
}

impl<T: Any + Send + Sync + Clone> Extension for T {
    fn clone_arc(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

/// One value and its type.
type Entry = (TypeId, Arc<dyn Extension>);

/// `T` out of an entry's value: taken if no one else holds it, else cloned.
fn unwrap_entry<T: Clone + Send + Sync + 'static>(v: Arc<dyn Extension>) -> Option<T> {
    let any: Arc<dyn Any + Send + Sync> = v;
    let v = any.downcast::<T>().ok()?;
    Some(Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone()))
}

/// Typed values attached to one call, at most one per type: what a server layer found out
/// (an authenticated identity, a tenant, a trace span) for the handler and later layers.
///
/// An empty set allocates nothing, and the first value is kept without a list; values are
/// searched by type (calls carry a handful). A value given shared ([`insert_arc`]) is
/// attached without a copy or an allocation. Values are `Clone` because a [`CallContext`]
/// is (an [`Admit::Wait`](super::Admit::Wait) layer works on a clone); clones share them
/// until one changes.
///
/// [`insert_arc`]: Self::insert_arc
///
/// ```
/// use qsocket::rpc::Extensions;
/// use std::sync::Arc;
/// #[derive(Clone, Debug, PartialEq)]
/// struct User(String);
/// let mut ext = Extensions::new();
/// assert!(ext.insert(User("ada".into())).is_none());
/// assert_eq!(ext.get::<User>(), Some(&User("ada".into())));
/// ext.get_mut::<User>().unwrap().0.push_str("!");
/// assert_eq!(ext.remove::<User>(), Some(User("ada!".into())));
/// assert!(ext.is_empty());
/// ext.insert_arc(Arc::new(User("bob".into()))); // shared, not copied
/// assert_eq!(ext.get::<User>(), Some(&User("bob".into())));
/// ```
#[derive(Clone, Default)]
pub struct Extensions {
    first: Option<Entry>,
    rest: Vec<Entry>,
}

impl Extensions {
    /// An empty set (no allocation).
    pub const fn new() -> Self {
        Extensions {
            first: None,
            rest: Vec::new(),
        }
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.first.iter().chain(self.rest.iter())
    }

    fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.first.iter_mut().chain(self.rest.iter_mut())
    }

    /// Stores `value` under its type; the value it replaces.
    fn put(&mut self, id: TypeId, value: Arc<dyn Extension>) -> Option<Arc<dyn Extension>> {
        if let Some(slot) = self.entries_mut().find(|(t, _)| *t == id) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        if self.first.is_none() {
            self.first = Some((id, value));
        } else {
            self.rest.push((id, value));
        }
        None
    }

    /// Stores `value`, returning the previous value of type `T`.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.put(TypeId::of::<T>(), Arc::new(value))
            .and_then(unwrap_entry::<T>)
    }

    /// Stores a shared value of type `T` as it is (no copy, no allocation), returning the
    /// previous value of type `T`. [`get`](Self::get)`::<T>()` finds it.
    pub fn insert_arc<T: Clone + Send + Sync + 'static>(&mut self, value: Arc<T>) -> Option<T> {
        self.put(TypeId::of::<T>(), value)
            .and_then(unwrap_entry::<T>)
    }

    /// The value of type `T`, if present.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        let (_, v) = self.entries().find(|(t, _)| *t == id)?;
        let v: &dyn Any = &**v;
        v.downcast_ref::<T>()
    }

    /// The value of type `T`, mutable, if present (a value other clones share is copied
    /// first).
    pub fn get_mut<T: 'static>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        let (_, v) = self.entries_mut().find(|(t, _)| *t == id)?;
        if Arc::get_mut(v).is_none() {
            *v = (**v).clone_arc();
        }
        let v: &mut dyn Any = Arc::get_mut(v)?;
        v.downcast_mut::<T>()
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Clone + Send + Sync + 'static>(&mut self) -> Option<T> {
        let id = TypeId::of::<T>();
        let v = if self.first.as_ref().is_some_and(|(t, _)| *t == id) {
            let v = self.first.take().map(|(_, v)| v);
            if !self.rest.is_empty() {
                self.first = Some(self.rest.swap_remove(0));
            }
            v
        } else {
            let i = self.rest.iter().position(|(t, _)| *t == id)?;
            Some(self.rest.swap_remove(i).1)
        };
        v.and_then(unwrap_entry::<T>)
    }

    /// Whether a value of type `T` is present.
    pub fn contains<T: 'static>(&self) -> bool {
        let id = TypeId::of::<T>();
        self.entries().any(|(t, _)| *t == id)
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }
}

/// Shows how many values there are (their types are not nameable at run time).
impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_keep_one_value_per_type_and_clone() {
        #[derive(Clone, Debug, PartialEq)]
        struct A(u32);
        let mut ext = Extensions::new();
        assert_eq!(ext.insert(A(1)), None);
        assert_eq!(ext.insert(7u64), None);
        assert_eq!(ext.insert(A(2)), Some(A(1)));
        assert_eq!(ext.len(), 2);
        let copy = ext.clone();
        if let Some(a) = ext.get_mut::<A>() {
            a.0 = 3;
        }
        assert_eq!(copy.get::<A>(), Some(&A(2)), "a clone is independent");
        assert_eq!(ext.get::<A>(), Some(&A(3)));
        assert!(ext.contains::<u64>() && !ext.contains::<i64>());
        assert_eq!(ext.remove::<u64>(), Some(7));
        assert_eq!(ext.remove::<u64>(), None);
        assert_eq!(format!("{ext:?}"), "Extensions { len: 1 }");
    }
}
