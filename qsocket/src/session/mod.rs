//! The session layer: netty/getty-like sessions over TCP, UDP and WebSocket.
//!
//! A connection (or, for a UDP server, a peer address) is a **session**. Each session has:
//!
//! * a [`Session`] handle: cheap to clone, used to send, close, read counters and keep typed
//!   attributes;
//! * an [`EventListener`] of the user's, created per session by a factory, that receives
//!   `on_open`, `on_message`, `on_cron`, `on_error` and `on_close`;
//! * a [`Framing`] — any `tokio_util::codec::{Decoder, Encoder}` — that frames bytes into
//!   messages;
//! * two tasks, as in getty: a **reader** that reads and decodes every frame a read brought in,
//!   and a **handler** that runs the listener, the cron tick and writes, gathering every queued
//!   frame into one write.
//!
//! Transports: a TCP byte stream (`tcp://`), TLS over TCP (`tls://`, feature `tls`), UDP with
//! one datagram per frame (`udp://`), WebSocket with one binary message per frame (`ws://`,
//! feature `ws`, and `wss://` with `tls`). [`Server`] binds any mix of them (or serves on
//! listeners bound elsewhere); [`Client`] keeps N sessions to one endpoint and reconnects with
//! capped exponential backoff.
//!
//! # For protocol layers
//!
//! A protocol built on sessions (this crate's RPC layer is one; it could as well live in another
//! crate) is an [`EventListener`] that uses these hooks besides [`Ctx::send`]:
//! [`Ctx::send_raw`] to encode a frame in place into the write buffer, [`Ctx::write_buffered`]
//! to pace its output, [`Ctx::received_at`] to count deadlines from when a message was read,
//! [`Ctx::retain`] to keep a message counted against the session's byte budget while it works
//! on it, [`EventListener::poll_work`] / [`EventListener::poll_close`] to run work in flight on
//! the session's own task, [`deadline_after`] for deadline arithmetic and [`MAX_DATAGRAM`] to
//! size frames for UDP.

mod budget;
mod client;
mod config;
mod conn;
mod endpoint;
mod framing;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod handler;
mod io;
mod listener;
mod queue;
mod reader;
mod server;
mod timers;
#[cfg(feature = "tls")]
pub mod tls;
mod udp;
mod writer;
#[cfg(feature = "ws")]
mod ws;

pub use client::{Client, ClientBuilder};
pub use config::{Backoff, SessionConfig};
pub use endpoint::{Endpoint, Transport};
pub use framing::Framing;
pub use handle::{Session, SessionStats, TrySendError};
pub use listener::{Ctx, EventListener, Retained};
pub use server::{Server, ServerBuilder, DEFAULT_SHARED_BUDGET};
pub use timers::deadline_after;
pub use udp::MAX_DATAGRAM;

/// For tests that measure a session's state.
#[cfg(test)]
pub(crate) use conn::stream_session;
