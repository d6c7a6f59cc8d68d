//! Body codecs: protobuf (prost), JSON (serde_json) and MessagePack (rmp-serde), chosen per
//! call. The server answers in the codec it was asked in.

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
    /// MessagePack, encoded by rmp-serde: structs as maps keyed by field name, so other
    /// languages' MessagePack libraries read them as they read JSON objects.
    MsgPack = 3,
}

impl Codec {
    /// The codec of a wire id.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            1 => Some(Codec::Protobuf),
            2 => Some(Codec::Json),
            3 => Some(Codec::MsgPack),
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
            Codec::MsgPack => "msgpack",
        }
    }
}

/// A type that can travel as a request or response body.
///
/// A type says which codecs it speaks ([`CODECS`](Self::CODECS)); a call or a request in
/// another codec is refused with a status that says so, before anything is encoded or decoded.
///
/// * Types that are both a prost [`Message`](prost::Message) and serde `Serialize +
///   Deserialize` speak all three codecs: types generated from `.proto` files with serde derives,
///   hand-written structs deriving `prost::Message`, `serde::Serialize` and
///   `serde::Deserialize`, `()`, `String`, `bool`, the integer types and `bytes::Bytes` /
///   `Vec<u8>` (as protobuf wrapper values).
/// * [`Serde<T>`] carries any serde type as MessagePack (preferred) or JSON.
/// * [`Json<T>`] carries any serde type as JSON only.
/// * [`Proto<T>`] carries any prost message as protobuf only.
pub trait Message: Send + Sized + 'static {
    /// The codecs this type speaks, preferred first (never empty).
    const CODECS: &'static [Codec];
    /// Appends the encoded message to `buf` (only called with a codec in [`CODECS`](Self::CODECS)).
    fn encode_body(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), Status>;
    /// Decodes a message from `body` (a slice of the read buffer: protobuf `bytes` fields
    /// declared as `bytes::Bytes` share it instead of copying).
    fn decode_body(codec: Codec, body: Bytes) -> Result<Self, Status>;
    /// About how many bytes `encode_body` will write (to size the buffer once).
    fn size_hint(&self, codec: Codec) -> usize;

    /// Whether this type speaks `codec`.
    fn speaks(codec: Codec) -> bool {
        Self::CODECS.contains(&codec)
    }
}

/// The status for a message type asked for a codec it does not speak.
pub(crate) fn unspoken<T>(codec: Codec, codecs: &[Codec]) -> Status {
    let spoken: Vec<&str> = codecs.iter().map(|c| c.name()).collect();
    Status::invalid_argument(format!(
        "{} cannot be carried as {}: it speaks {} only",
        std::any::type_name::<T>(),
        codec.name(),
        spoken.join(", ")
    ))
}

fn encode_json<T: serde::Serialize>(v: &T, buf: &mut BytesMut) -> Result<(), Status> {
    serde_json::to_writer(buf.writer(), v)
        .map_err(|e| Status::internal(format!("json encode: {e}")))
}

/// An empty body is the empty message in every codec, as in protobuf: in JSON it reads as
/// `{}` (or `null`, for types that are not objects). A failsafe result is one.
fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    if body.is_empty() {
        if let Ok(v) = serde_json::from_slice(b"{}") {
            return Ok(v);
        }
        if let Ok(v) = serde_json::from_slice(b"null") {
            return Ok(v);
        }
    }
    serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "cannot decode json {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

fn encode_msgpack<T: serde::Serialize>(v: &T, buf: &mut BytesMut) -> Result<(), Status> {
    rmp_serde::encode::write_named(&mut buf.writer(), v)
        .map_err(|e| Status::internal(format!("msgpack encode: {e}")))
}

/// An empty body is the empty message here too: an empty map (or nil, for types that are not
/// structs).
fn decode_msgpack<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    if body.is_empty() {
        if let Ok(v) = rmp_serde::from_slice(&[0x80]) {
            return Ok(v);
        }
        if let Ok(v) = rmp_serde::from_slice(&[0xc0]) {
            return Ok(v);
        }
    }
    rmp_serde::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "cannot decode msgpack {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

fn encode_proto<T: prost::Message>(v: &T, buf: &mut BytesMut) -> Result<(), Status> {
    prost::Message::encode(v, buf).map_err(|e| Status::internal(format!("protobuf encode: {e}")))
}

fn decode_proto<T: prost::Message + Default>(body: Bytes) -> Result<T, Status> {
    T::decode(body).map_err(|e| {
        Status::invalid_argument(format!(
            "cannot decode protobuf {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

impl<T> Message for T
where
    T: prost::Message + Default + serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    const CODECS: &'static [Codec] = &[Codec::Protobuf, Codec::Json, Codec::MsgPack];

    fn encode_body(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), Status> {
        match codec {
            Codec::Protobuf => encode_proto(self, buf),
            Codec::Json => encode_json(self, buf),
            Codec::MsgPack => encode_msgpack(self, buf),
        }
    }

    fn decode_body(codec: Codec, body: Bytes) -> Result<Self, Status> {
        match codec {
            Codec::Protobuf => decode_proto(body),
            Codec::Json => decode_json(&body),
            Codec::MsgPack => decode_msgpack(&body),
        }
    }

    fn size_hint(&self, codec: Codec) -> usize {
        let n = prost::Message::encoded_len(self);
        match codec {
            Codec::Protobuf => n,
            Codec::Json | Codec::MsgPack => 2 * n + 16,
        }
    }
}

/// A serde type carried as JSON only (it need not be a protobuf message).
///
/// ```
/// use qsocket::rpc::Json;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Point { x: i32, y: i32 }
/// let req = Json(Point { x: 1, y: 2 });
/// # let _ = req;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Json<T>(pub T);

impl<T> Message for Json<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    const CODECS: &'static [Codec] = &[Codec::Json];

    fn encode_body(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), Status> {
        match codec {
            Codec::Json => encode_json(&self.0, buf),
            other => Err(unspoken::<Self>(other, Self::CODECS)),
        }
    }

    fn decode_body(codec: Codec, body: Bytes) -> Result<Self, Status> {
        match codec {
            Codec::Json => decode_json(&body).map(Json),
            other => Err(unspoken::<Self>(other, Self::CODECS)),
        }
    }

    fn size_hint(&self, _codec: Codec) -> usize {
        64
    }
}

/// Any serde type, carried as MessagePack (preferred: compact and fast) or, when a call asks
/// for it, JSON. The form for plain Rust types that are not protobuf messages.
///
/// ```
/// use qsocket::rpc::{Codec, Message, Serde};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Point { x: i32, y: i32 }
/// assert_eq!(<Serde<Point> as Message>::CODECS, &[Codec::MsgPack, Codec::Json]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Serde<T>(pub T);

impl<T> Message for Serde<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    const CODECS: &'static [Codec] = &[Codec::MsgPack, Codec::Json];

    fn encode_body(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), Status> {
        match codec {
            Codec::MsgPack => encode_msgpack(&self.0, buf),
            Codec::Json => encode_json(&self.0, buf),
            other => Err(unspoken::<Self>(other, Self::CODECS)),
        }
    }

    fn decode_body(codec: Codec, body: Bytes) -> Result<Self, Status> {
        match codec {
            Codec::MsgPack => decode_msgpack(&body).map(Serde),
            Codec::Json => decode_json(&body).map(Serde),
            other => Err(unspoken::<Self>(other, Self::CODECS)),
        }
    }

    fn size_hint(&self, _codec: Codec) -> usize {
        64
    }
}

/// A prost message carried as protobuf only (it need not implement serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Proto<T>(pub T);

impl<T> Message for Proto<T>
where
    T: prost::Message + Default + Send + 'static,
{
    const CODECS: &'static [Codec] = &[Codec::Protobuf];

    fn encode_body(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), Status> {
        match codec {
            Codec::Protobuf => encode_proto(&self.0, buf),
            other => Err(unspoken::<Self>(other, Self::CODECS)),
        }
    }

    fn decode_body(codec: Codec, body: Bytes) -> Result<Self, Status> {
        match codec {
            Codec::Protobuf => decode_proto(body).map(Proto),
            other => Err(unspoken::<Self>(other, Self::CODECS)),
        }
    }

    fn size_hint(&self, _codec: Codec) -> usize {
        self.0.encoded_len()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_empty_body_is_the_empty_message_in_json_and_msgpack() {
        #[derive(Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        struct P {
            x: i64,
        }
        for codec in [Codec::Json, Codec::MsgPack] {
            let p = <Serde<P> as Message>::decode_body(codec, Bytes::new()).expect("empty");
            assert_eq!(p.0, P::default(), "{codec:?}");
            let o = <Serde<Option<i64>> as Message>::decode_body(codec, Bytes::new());
            assert_eq!(o.expect("nil").0, None, "{codec:?}");
        }
        let mut b = BytesMut::new();
        Serde(P { x: 7 })
            .encode_body(Codec::MsgPack, &mut b)
            .expect("encode");
        let back = <Serde<P> as Message>::decode_body(Codec::MsgPack, b.freeze()).expect("decode");
        assert_eq!(back.0.x, 7);
        assert!(
            <Serde<P> as Message>::decode_body(Codec::MsgPack, Bytes::from_static(b"\xc1"))
                .is_err()
        );
    }

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
