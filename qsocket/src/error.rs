//! The error type of the session layer.
//!
//! Every failure the runtime reports — through a `Result` or through
//! [`EventListener::on_error`](crate::session::EventListener::on_error) — is an [`Error`] that
//! says what went wrong and, where it helps, with which values.

use std::time::Duration;

/// A boxed error from a user-supplied part (a codec, a listener).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the session layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on the connection.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The codec could not decode what the peer sent.
    #[error("decode error: {0}")]
    Decode(BoxError),
    /// The codec could not encode an outgoing message.
    #[error("encode error: {0}")]
    Encode(BoxError),
    /// A frame (or a partial frame still being received) is larger than the configured maximum.
    #[error("frame too large: {len} bytes, the limit is {max}")]
    FrameTooLarge {
        /// Bytes received or encoded so far for this frame.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The session is closed (or closing): nothing more can be sent on it.
    #[error("session closed")]
    SessionClosed,
    /// The peer closed or reset the connection while the session was not reading (its
    /// budget or its listener's in-flight limit was full): the session ended at once, dropping
    /// its work in flight.
    #[error("the peer hung up while the session was paused")]
    PeerGone,
    /// No `active()` update for longer than the session timeout.
    #[error("session timed out: no activity for {0:?}")]
    Timeout(Duration),
    /// A partial frame did not complete within the read timeout.
    #[error("read timed out: a partial frame did not complete within {0:?}")]
    ReadTimeout(Duration),
    /// A write did not complete within the write timeout.
    #[error("write timed out after {0:?}")]
    WriteTimeout(Duration),
    /// A TLS or WebSocket handshake did not complete in time.
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// Connecting did not complete in time.
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// The address being connected to.
        addr: String,
        /// The configured connect timeout.
        after: Duration,
    },
    /// A WebSocket protocol error.
    #[error("websocket: {0}")]
    WebSocket(BoxError),
    /// A TLS error (handshake, certificate, key).
    #[error("tls: {0}")]
    Tls(String),
    /// An endpoint URL that cannot be used.
    #[error("invalid endpoint {url:?}: {reason}")]
    InvalidEndpoint {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An invalid configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The listener's `on_open` refused the session.
    #[error("session refused: {0}")]
    Refused(String),
    /// The client gave up: every slot reached its reconnect attempt limit, or it was closed.
    #[error("client is closed or gave up reconnecting")]
    ClientClosed,
}

impl Error {
    /// Builds an [`Error::Refused`], for `on_open` implementations.
    pub fn refused(reason: impl Into<String>) -> Self {
        Error::Refused(reason.into())
    }
}
