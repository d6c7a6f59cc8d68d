//! # qsocket
//!
//! A netty-like asynchronous network framework for Rust, in three layers:
//!
//! * [`session`] — sessions over TCP, UDP and WebSocket (and TLS with the `tls` feature) with one
//!   uniform interface: a [`Session`](session::Session) handle, an
//!   [`EventListener`](session::EventListener) with open / message / cron / error / close events,
//!   pluggable framing through `tokio_util::codec`, heartbeats and idle timeouts, a
//!   [`Server`](session::Server) and a reconnecting [`Client`](session::Client).
//! * [`rpc`] — calls over the same transports: one frame format (`PROTOCOL.md`), protobuf and
//!   JSON bodies, a multiplexed [`RpcClient`](rpc::RpcClient) with deadlines and cancellation,
//!   an [`RpcServer`](rpc::RpcServer) that runs requests concurrently, typed
//!   [`Status`](rpc::Status) codes.
//! * `micro` (service discovery) builds on both (see the README's roadmap).
//!
//! ```no_run
//! use bytes::{Bytes, BytesMut};
//! use qsocket::session::{Ctx, EventListener, Server};
//! use tokio_util::codec::LengthDelimitedCodec;
//!
//! struct Echo;
//!
//! impl EventListener for Echo {
//!     type In = BytesMut;
//!     type Out = Bytes;
//!     async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
//!         ctx.send(msg.freeze());
//!     }
//! }
//!
//! # async fn run() -> Result<(), qsocket::Error> {
//! let server = Server::builder(LengthDelimitedCodec::new(), || Echo)
//!     .bind("tcp://127.0.0.1:0")
//!     .start()
//!     .await?;
//! println!("listening on {:?}", server.local_endpoints());
//! # Ok(()) }
//! ```

pub mod error;
pub mod rpc;
pub mod session;

pub use error::Error;
