//! Body codecs: protobuf (prost) and JSON (serde_json), chosen per call. The server answers
//! in the codec it was asked in.

use super::status::Status;
use bytes::{BufMut, Bytes, BytesMut};

/// The body codec of a call (header byte 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Codec {
    /// Protocol Buffers, encoded by prost.
    #[default]
    Protobuf = 1,
    /// JSON, encoded by serde_json.
    Json = 2,
}

impl Codec {
    /// The codec of a wire id.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            1 => Some(Codec::Protobuf),
            2 => Some(Codec::Json),
            _ => None,
        }
    }

    /// The wire id.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Protobuf => "protobuf",
            Codec::Json => "json",
        }
    }
}

/// A type that can travel as a request or response body in either codec.
///
/// Implemented for every type that is both a prost [`Message`](prost::Message) and serde
/// `Serialize + Deserialize` — types generated from `.proto` files (with serde derives) and
/// hand-written structs deriving `prost::Message`, `serde::Serialize` and
/// `serde::Deserialize`, as well as `()`, `String`, `bool`, the integer types and
/// `bytes::Bytes` / `Vec<u8>` (as protobuf wrapper values).
pub trait Message: Send + Sized + 'static {
    /// Appends the encoded message to `buf`.
    fn encode_body(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), Status>;
    /// Decodes a message from `body` (a slice of the read buffer: protobuf `bytes` fields
    /// declared as `bytes::Bytes` share it instead of copying).
    fn decode_body(codec: Codec, body: Bytes) -> Result<Self, Status>;
    /// About how many bytes `encode_body` will write (to size the buffer once).
    fn size_hint(&self, codec: Codec) -> usize;
}

impl<T> Message for T
where
    T: prost::Message + Default + serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    fn encode_body(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), Status> {
        match codec {
            Codec::Protobuf => prost::Message::encode(self, buf)
                .map_err(|e| Status::internal(format!("protobuf encode: {e}"))),
            Codec::Json => serde_json::to_writer(buf.writer(), self)
                .map_err(|e| Status::internal(format!("json encode: {e}"))),
        }
    }

    fn decode_body(codec: Codec, body: Bytes) -> Result<Self, Status> {
        match codec {
            Codec::Protobuf => <T as prost::Message>::decode(body).map_err(|e| {
                Status::invalid_argument(format!(
                    "cannot decode protobuf {}: {e}",
                    std::any::type_name::<T>()
                ))
            }),
            Codec::Json => serde_json::from_slice(&body).map_err(|e| {
                Status::invalid_argument(format!(
                    "cannot decode json {}: {e}",
                    std::any::type_name::<T>()
                ))
            }),
        }
    }

    fn size_hint(&self, codec: Codec) -> usize {
        let n = prost::Message::encoded_len(self);
        match codec {
            Codec::Protobuf => n,
            Codec::Json => 2 * n + 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
    struct Point {
        #[prost(int32, tag = "1")]
        x: i32,
        #[prost(string, tag = "2")]
        label: String,
    }

    #[test]
    fn both_codecs_round_trip_and_garbage_is_invalid_argument() {
        let p = Point {
            x: -3,
            label: "here".into(),
        };
        for codec in [Codec::Protobuf, Codec::Json] {
            let mut buf = BytesMut::new();
            p.encode_body(codec, &mut buf).expect("encode");
            let back = Point::decode_body(codec, buf.freeze()).expect("decode");
            assert_eq!(back, p);
            let err =
                Point::decode_body(codec, Bytes::from_static(b"\xff\xff{")).expect_err("garbage");
            assert_eq!(err.code(), super::super::Code::InvalidArgument);
        }
        let mut json = BytesMut::new();
        p.encode_body(Codec::Json, &mut json).expect("encode");
        assert_eq!(&json[..], br#"{"x":-3,"label":"here"}"#);
    }
}
