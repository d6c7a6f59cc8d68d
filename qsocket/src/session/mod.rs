//! The session layer: netty/getty-like sessions over TCP, UDP and WebSocket.
//!
//! A connection (or, for a UDP server, a peer address) is a **session**. Each session has:
//!
//! * a [`Session`] handle: cheap to clone, used to send, close, read counters and keep typed
//!   attributes;
//! * an [`EventListener`] of the user's, created per session by a factory, that receives
//!   `on_open`, `on_message`, `on_cron`, `on_error` and `on_close`;
//! * a codec — any `tokio_util::codec::{Decoder, Encoder}` — that frames bytes into messages;
//! * two tasks, as in getty: a **reader** that reads and decodes every frame a read brought in,
//!   and a **handler** that runs the listener, the cron tick and writes, gathering every queued
//!   frame into one write.
//!
//! Transports: a TCP byte stream (`tcp://`), TLS over TCP (`tls://`, feature `tls`), UDP with
//! one datagram per frame (`udp://`), WebSocket with one binary message per frame (`ws://`,
//! feature `ws`, and `wss://` with `tls`). [`Server`] binds any mix of them; [`Client`] keeps
//! N sessions to one endpoint and reconnects with capped exponential backoff.

mod budget;
mod client;
mod config;
mod conn;
mod endpoint;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod io;
mod listener;
mod queue;
mod runtime;
mod server;
#[cfg(feature = "tls")]
pub mod tls;
mod udp;
#[cfg(feature = "ws")]
mod ws;

pub use client::{Client, ClientBuilder};
pub use config::{Backoff, SessionConfig};
pub use endpoint::{Endpoint, Transport};
pub use handle::{Session, SessionStats, TrySendError};
pub use listener::{Ctx, EventListener, Retained};
pub(crate) use runtime::deadline_after;
pub use server::{Server, ServerBuilder, DEFAULT_SHARED_BUDGET};
pub(crate) use udp::MAX_DATAGRAM;

use crate::error::BoxError;
use tokio_util::codec::{Decoder, Encoder};

/// A framing codec usable by sessions whose listener reads `In` and writes `Out`.
///
/// Implemented for every `Clone + Send` type that is a `tokio_util` [`Decoder`] of `In` and an
/// [`Encoder`] of `Out`, such as `LengthDelimitedCodec` (`In = BytesMut`, `Out = Bytes`) or
/// `LinesCodec` (`In = String`, `Out = String`). Each session gets its own clone.
pub trait Codec<In, Out>:
    Decoder<Item = In, Error: Into<BoxError> + Send>
    + Encoder<Out, Error: Into<BoxError>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T, In, Out> Codec<In, Out> for T where
    T: Decoder<Item = In, Error: Into<BoxError> + Send>
        + Encoder<Out, Error: Into<BoxError>>
        + Clone
        + Send
        + Sync
        + 'static
{
}
