//! What a handler knows about its call, and the deadline that calls made inside it inherit.

use super::frame::Metadata;
use bytes::Bytes;
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

thread_local! {
    /// The deadline of the request whose handler is being polled on this thread. A handler
    /// runs only inside its server's poll, so a thread-local set around that poll is the
    /// task's own (and cheaper per call than a tokio task-local).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
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

/// The server side of one call: deadline, metadata, peer.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub(crate) deadline: Option<Instant>,
    pub(crate) metadata: Bytes,
    pub(crate) peer: SocketAddr,
    pub(crate) session_id: u64,
    pub(crate) request_id: u64,
}

impl CallContext {
    /// When the caller stops waiting (received time + the time remaining it sent).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The request's metadata entries.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata(&self.metadata)
    }

    /// The caller's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The id of the session the request came on.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The request id (unique per session while the call is in flight).
    pub fn request_id(&self) -> u64 {
        self.request_id
    }
}
