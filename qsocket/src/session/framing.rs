//! [`Framing`]: what a session needs of a codec to turn bytes into messages and back — any
//! `tokio_util` [`Decoder`] + [`Encoder`] pair that can be cloned per session.

use crate::error::BoxError;
use tokio_util::codec::{Decoder, Encoder};

/// The framing of a session whose listener reads `In` and writes `Out`: how bytes become
/// messages and messages become bytes (netty's "package handler").
///
/// Implemented for every `Clone + Send + Sync` type that is a `tokio_util` [`Decoder`] of `In`
/// and an [`Encoder`] of `Out`, such as `LengthDelimitedCodec` (`In = BytesMut`,
/// `Out = Bytes`) or `LinesCodec` (`In = String`, `Out = String`); there is nothing to
/// implement by hand. Each session gets its own clone. Over a byte stream (TCP, TLS) frames are
/// decoded from the stream; over UDP each datagram, and over WebSocket each message, is decoded
/// whole (`decode_eof` gets what is left of it), and each encoded frame is sent as one datagram
/// or message.
///
/// (Not to be confused with the RPC layer's body codec, [`rpc::Codec`](crate::rpc::Codec): that
/// encodes the body of a call; this frames a session's bytes.)
pub trait Framing<In, Out>:
    Decoder<Item = In, Error: Into<BoxError> + Send>
    + Encoder<Out, Error: Into<BoxError>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T, In, Out> Framing<In, Out> for T where
    T: Decoder<Item = In, Error: Into<BoxError> + Send>
        + Encoder<Out, Error: Into<BoxError>>
        + Clone
        + Send
        + Sync
        + 'static
{
}
