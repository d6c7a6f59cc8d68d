//! The qsocket RPC frame, byte by byte as in `PROTOCOL.md`: a 28-byte header, then service,
//! method, metadata and body. Decoding checks every length against [`Limits`] before anything
//! is reserved; a partial frame waits for more bytes.
//!
//! Wire internals, not a stable API: this module is public only so that the tests, the
//! benchmarks and the fuzz targets can build and take apart raw frames. Its items that public
//! signatures use, [`Limits`] and [`Metadata`], are re-exported from [`crate::rpc`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;
use tokio_util::codec::{Decoder, Encoder};

/// `"QS"`: the first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"QS";
/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// Bytes before the variable parts.
pub const HEADER_LEN: usize = 28;

/// Frame kinds (header byte 3).
pub mod kind {
    /// A call that expects a response.
    pub const REQUEST: u8 = 1;
    /// The answer to a request (same request id).
    pub const RESPONSE: u8 = 2;
    /// A call without a response.
    pub const ONEWAY: u8 = 3;
    /// A keep-alive probe; answered with the same id and [`FLAG_REPLY`](super::FLAG_REPLY).
    pub const HEARTBEAT: u8 = 4;
    /// The caller gave up on a request (same request id): the server may stop working on it.
    pub const CANCEL: u8 = 5;
    /// The server is shutting down: send no new requests on this connection.
    pub const GOAWAY: u8 = 6;
}

/// Flag bit 0: this heartbeat is a reply.
pub const FLAG_REPLY: u8 = 1;

/// Size limits checked while decoding, before any allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body. Default 4 MiB.
    pub max_body: u32,
    /// Largest metadata block. Default 8 KiB.
    pub max_metadata: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 4 * 1024 * 1024,
            max_metadata: 8 * 1024,
        }
    }
}

impl Limits {
    /// The largest whole frame these limits allow.
    pub fn max_frame(&self) -> usize {
        HEADER_LEN + 255 + 255 + self.max_metadata as usize + self.max_body as usize
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame does not start with `"QS"`.
    #[error("bad magic {0:02x?}: not a qsocket rpc frame")]
    BadMagic([u8; 2]),
    /// A version this implementation does not speak.
    #[error("unsupported protocol version {0} (this peer speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// A length above the configured limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// An I/O error reported through the codec.
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e.to_string())
    }
}

/// A decoded frame. The variable parts are slices of one shared buffer (no copies).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame kind (see [`kind`]); unknown kinds are passed on for the receiver to ignore.
    pub kind: u8,
    /// Body codec id (see [`Codec`](super::Codec)).
    pub codec: u8,
    /// Flag bits.
    pub flags: u8,
    /// Status code (responses).
    pub status: u16,
    /// Request id.
    pub id: u64,
    /// Milliseconds the caller still allows (requests); 0 = no deadline.
    pub timeout_ms: u32,
    buf: Bytes,
    service_len: u8,
    method_len: u8,
    metadata_len: u16,
}

impl Frame {
    /// A frame of `kind` with nothing in it (never sent: for markers between a codec and its
    /// listener).
    pub(crate) fn marker(kind: u8) -> Frame {
        Frame {
            kind,
            codec: 0,
            flags: 0,
            status: 0,
            id: 0,
            timeout_ms: 0,
            // An all-zero header: its names, metadata and body read as empty.
            buf: Bytes::from_static(&[0; HEADER_LEN]),
            service_len: 0,
            method_len: 0,
            metadata_len: 0,
        }
    }

    /// The service name (requests).
    pub fn service(&self) -> &[u8] {
        &self.buf[HEADER_LEN..HEADER_LEN + self.service_len as usize]
    }

    /// The method name (requests).
    pub fn method(&self) -> &[u8] {
        let start = HEADER_LEN + self.service_len as usize;
        &self.buf[start..start + self.method_len as usize]
    }

    fn body_start(&self) -> usize {
        HEADER_LEN
            + self.service_len as usize
            + self.method_len as usize
            + self.metadata_len as usize
    }

    /// The raw metadata block (see [`Metadata`]).
    pub fn metadata(&self) -> Metadata<'_> {
        let start = HEADER_LEN + self.service_len as usize + self.method_len as usize;
        Metadata(&self.buf[start..start + self.metadata_len as usize])
    }

    /// The metadata block as a shared slice.
    pub fn metadata_bytes(&self) -> Bytes {
        let start = HEADER_LEN + self.service_len as usize + self.method_len as usize;
        self.buf.slice(start..start + self.metadata_len as usize)
    }

    /// The body, as a slice of the read buffer.
    pub fn body(&self) -> Bytes {
        self.buf.slice(self.body_start()..)
    }

    /// The body's length.
    pub fn body_len(&self) -> usize {
        self.buf.len() - self.body_start()
    }

    /// The whole frame as received.
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("codec", &self.codec)
            .field("flags", &self.flags)
            .field("status", &self.status)
            .field("id", &self.id)
            .field("timeout_ms", &self.timeout_ms)
            .field("service", &String::from_utf8_lossy(self.service()))
            .field("method", &String::from_utf8_lossy(self.method()))
            .field("metadata_len", &self.metadata_len)
            .field("body_len", &self.body_len())
            .finish()
    }
}

/// A metadata block: entries of `[u8 key length][key][u16 value length][value]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata<'a>(pub &'a [u8]);

impl<'a> Metadata<'a> {
    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// Every `(key, value)` entry; stops at the first malformed one.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let (&klen, r) = rest.split_first()?;
            let klen = klen as usize;
            if r.len() < klen + 2 {
                return None;
            }
            let (key, r) = r.split_at(klen);
            let vlen = u16::from_be_bytes([r[0], r[1]]) as usize;
            let r = &r[2..];
            if r.len() < vlen {
                return None;
            }
            let (value, r) = r.split_at(vlen);
            rest = r;
            Some((key, value))
        })
    }

    /// Whether the block is well formed (every byte belongs to an entry).
    pub fn is_valid(&self) -> bool {
        let used: usize = self.iter().map(|(k, v)| 3 + k.len() + v.len()).sum();
        used == self.0.len()
    }
}

/// Appends one metadata entry; fails if the key or value is too long for the format.
pub fn put_metadata(buf: &mut Vec<u8>, key: &str, value: &[u8]) -> Result<(), FrameError> {
    if key.len() > 255 {
        return Err(FrameError::TooLarge {
            what: "metadata key",
            len: key.len(),
            max: 255,
        });
    }
    if value.len() > u16::MAX as usize {
        return Err(FrameError::TooLarge {
            what: "metadata value",
            len: value.len(),
            max: u16::MAX as usize,
        });
    }
    // One allocation for the entry, not one per growth step.
    buf.reserve(3 + key.len() + value.len());
    buf.push(key.len() as u8);
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
    buf.extend_from_slice(value);
    Ok(())
}

/// The header fields of a frame to encode.
#[derive(Debug, Clone, Copy, Default)]
pub struct Header<'a> {
    /// Frame kind.
    pub kind: u8,
    /// Body codec id.
    pub codec: u8,
    /// Flag bits.
    pub flags: u8,
    /// Status code.
    pub status: u16,
    /// Request id.
    pub id: u64,
    /// Milliseconds remaining (requests).
    pub timeout_ms: u32,
    /// Service name (≤ 255 bytes).
    pub service: &'a str,
    /// Method name (≤ 255 bytes).
    pub method: &'a str,
    /// Encoded metadata block.
    pub metadata: &'a [u8],
}

impl Header<'_> {
    /// Bytes of the header as encoded: the fixed part, the names and the metadata.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.service.len() + self.method.len() + self.metadata.len()
    }

    /// Whether the header has no names and no metadata (only the fixed part).
    pub fn is_empty(&self) -> bool {
        self.service.is_empty() && self.method.is_empty() && self.metadata.is_empty()
    }

    /// Refuses names and metadata too large for the format or `limits`.
    pub fn check(&self, limits: &Limits) -> Result<(), FrameError> {
        let too_large = |what, len, max| Err(FrameError::TooLarge { what, len, max });
        if self.service.len() > 255 {
            return too_large("service name", self.service.len(), 255);
        }
        if self.method.len() > 255 {
            return too_large("method name", self.method.len(), 255);
        }
        if self.metadata.len() > limits.max_metadata as usize {
            return too_large(
                "metadata",
                self.metadata.len(),
                limits.max_metadata as usize,
            );
        }
        Ok(())
    }

    /// The fixed part of the header, for a body of `body_len` bytes (names and metadata must
    /// have passed [`check`](Self::check)).
    fn fixed(&self, body_len: u32) -> [u8; HEADER_LEN] {
        let mut head = [0u8; HEADER_LEN];
        head[..2].copy_from_slice(&MAGIC);
        head[2] = VERSION;
        head[3] = self.kind;
        head[4] = self.codec;
        head[5] = self.flags;
        head[6..8].copy_from_slice(&self.status.to_be_bytes());
        head[8..16].copy_from_slice(&self.id.to_be_bytes());
        head[16..20].copy_from_slice(&self.timeout_ms.to_be_bytes());
        head[20] = self.service.len() as u8;
        head[21] = self.method.len() as u8;
        head[22..24].copy_from_slice(&(self.metadata.len() as u16).to_be_bytes());
        head[24..28].copy_from_slice(&body_len.to_be_bytes());
        head
    }

    /// Appends the whole frame of this header and `body` to `buf` (names and metadata must
    /// have passed [`check`](Self::check), and `body` must fit the limits).
    pub(crate) fn put_frame(&self, body: &[u8], buf: &mut BytesMut) {
        buf.reserve(self.len() + body.len());
        buf.put_slice(&self.fixed(body.len() as u32));
        buf.put_slice(self.service.as_bytes());
        buf.put_slice(self.method.as_bytes());
        buf.put_slice(self.metadata);
        buf.put_slice(body);
    }
}

/// Writes a whole frame into `buf`: the header, then the body written by `body`, whose length
/// is patched in afterwards. On error `buf` is left as it was.
pub fn encode_frame<E>(
    buf: &mut BytesMut,
    h: &Header<'_>,
    limits: &Limits,
    body: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<(), EncodeError<E>> {
    h.check(limits).map_err(EncodeError::Frame)?;
    let start = buf.len();
    buf.reserve(h.len());
    // The fixed header is assembled on the stack and appended in one copy.
    buf.put_slice(&h.fixed(0));
    buf.put_slice(h.service.as_bytes());
    buf.put_slice(h.method.as_bytes());
    buf.put_slice(h.metadata);
    let body_start = buf.len();
    if let Err(e) = body(buf) {
        buf.truncate(start);
        return Err(EncodeError::Body(e));
    }
    let body_len = buf.len() - body_start;
    if body_len > limits.max_body as usize {
        buf.truncate(start);
        return Err(EncodeError::Frame(FrameError::TooLarge {
            what: "body",
            len: body_len,
            max: limits.max_body as usize,
        }));
    }
    buf[start + 24..start + 28].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(())
}

/// A frame with no names, metadata or body (heartbeat, cancel, goaway).
pub fn control_frame(kind: u8, flags: u8, id: u64) -> Bytes {
    control_frame_mut(kind, flags, id).freeze()
}

/// [`control_frame`], still in its buffer.
pub fn control_frame_mut(kind: u8, flags: u8, id: u64) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN);
    let h = Header {
        kind,
        flags,
        id,
        ..Header::default()
    };
    // Nothing in it can exceed a limit.
    let _ = encode_frame(&mut buf, &h, &Limits::default(), |_| Ok::<_, ()>(()));
    buf
}

/// Why [`encode_frame`] failed.
#[derive(Debug)]
pub enum EncodeError<E> {
    /// A part is too large for the format or the limits.
    Frame(FrameError),
    /// The body writer failed.
    Body(E),
}

/// The session codec of RPC connections: decodes [`Frame`]s; encodes already-built frames
/// (`Bytes`) by copying them into the session's write buffer.
#[derive(Debug, Clone, Default)]
pub struct FrameCodec {
    limits: Limits,
}

impl FrameCodec {
    /// A codec with these limits.
    pub fn new(limits: Limits) -> Self {
        FrameCodec { limits }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return match src.get(..2) {
                Some(m) if m != MAGIC => Err(FrameError::BadMagic([m[0], m[1]])),
                _ => Ok(None),
            };
        }
        if src[..2] != MAGIC {
            return Err(FrameError::BadMagic([src[0], src[1]]));
        }
        if src[2] != VERSION {
            return Err(FrameError::UnsupportedVersion(src[2]));
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let metadata_len = u16::from_be_bytes([src[22], src[23]]);
        if metadata_len > self.limits.max_metadata {
            return Err(FrameError::TooLarge {
                what: "metadata",
                len: metadata_len as usize,
                max: self.limits.max_metadata as usize,
            });
        }
        let body_len = u32::from_be_bytes([src[24], src[25], src[26], src[27]]);
        if body_len > self.limits.max_body {
            return Err(FrameError::TooLarge {
                what: "body",
                len: body_len as usize,
                max: self.limits.max_body as usize,
            });
        }
        let (service_len, method_len) = (src[20], src[21]);
        let total = HEADER_LEN
            + service_len as usize
            + method_len as usize
            + metadata_len as usize
            + body_len as usize;
        if src.len() < total {
            // Nothing is reserved for the rest: the buffer grows as bytes arrive, so a header
            // announcing a large body costs nothing until the body comes.
            return Ok(None);
        }
        let mut h = &src[3..HEADER_LEN];
        let kind = h.get_u8();
        let codec = h.get_u8();
        let flags = h.get_u8();
        let status = h.get_u16();
        let id = h.get_u64();
        let timeout_ms = h.get_u32();
        let buf = src.split_to(total).freeze();
        Ok(Some(Frame {
            kind,
            codec,
            flags,
            status,
            id,
            timeout_ms,
            buf,
            service_len,
            method_len,
            metadata_len,
        }))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(buf.len())),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

impl From<FrameError> for std::io::Error {
    fn from(e: FrameError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of the sample frame, with `md` as its metadata.
    fn sample_header(md: &[u8]) -> Header<'_> {
        Header {
            kind: kind::REQUEST,
            codec: 1,
            id: 42,
            timeout_ms: 1500,
            service: "echo",
            method: "Echo",
            metadata: md,
            ..Header::default()
        }
    }

    fn sample_metadata() -> Vec<u8> {
        let mut md = Vec::new();
        put_metadata(&mut md, "trace", b"abc").expect("md");
        md
    }

    fn sample() -> BytesMut {
        let md = sample_metadata();
        let h = sample_header(&md);
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, &h, &Limits::default(), |b| {
            b.put_slice(b"hello");
            Ok::<_, ()>(())
        })
        .expect("encode");
        buf
    }

    #[test]
    fn put_frame_writes_what_encode_frame_writes() {
        let md = sample_metadata();
        let h = sample_header(&md);
        h.check(&Limits::default()).expect("within limits");
        let mut buf = BytesMut::from(&b"before"[..]);
        h.put_frame(b"hello", &mut buf);
        assert_eq!(&buf[..6], b"before");
        assert_eq!(&buf[6..], &sample()[..]);
        assert_eq!(buf.len() - 6, h.len() + 5);
        let long = "s".repeat(256);
        let too_long = Header {
            service: &long,
            ..h
        };
        assert!(too_long.check(&Limits::default()).is_err());
    }

    #[test]
    fn round_trip() {
        let mut buf = sample();
        let f = FrameCodec::default()
            .decode(&mut buf)
            .expect("ok")
            .expect("frame");
        assert!(buf.is_empty());
        assert_eq!(
            (f.kind, f.codec, f.id, f.timeout_ms),
            (kind::REQUEST, 1, 42, 1500)
        );
        assert_eq!(f.service(), b"echo");
        assert_eq!(f.method(), b"Echo");
        assert_eq!(f.metadata().get("trace"), Some(&b"abc"[..]));
        assert!(f.metadata().is_valid());
        assert_eq!(&f.body()[..], b"hello");
    }

    #[test]
    fn a_header_announcing_the_largest_body_reserves_nothing() {
        let mut h = BytesMut::new();
        let header = Header {
            kind: kind::REQUEST,
            id: 1,
            service: "s",
            method: "m",
            ..Header::default()
        };
        encode_frame(&mut h, &header, &Limits::default(), |b| {
            b.put_slice(&[0; 10]);
            Ok::<_, ()>(())
        })
        .expect("encode");
        // Announce the largest body, send only the header and a few bytes of it.
        let max = Limits::default().max_body;
        h[24..28].copy_from_slice(&max.to_be_bytes());
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&h);
        let cap = buf.capacity();
        assert_eq!(FrameCodec::default().decode(&mut buf), Ok(None));
        assert_eq!(
            buf.capacity(),
            cap,
            "nothing reserved for the announced body"
        );
    }

    #[test]
    fn partial_frames_wait_and_bad_ones_fail() {
        let full = sample();
        let mut codec = FrameCodec::default();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(codec.decode(&mut part), Ok(None), "cut at {cut}");
        }
        let mut bad = full.clone();
        bad[0] = b'X';
        assert!(matches!(
            codec.decode(&mut bad),
            Err(FrameError::BadMagic(_))
        ));
        let mut bad = full.clone();
        bad[2] = 9;
        assert_eq!(
            codec.decode(&mut bad),
            Err(FrameError::UnsupportedVersion(9))
        );
        let mut bad = full.clone();
        bad[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            codec.decode(&mut bad),
            Err(FrameError::TooLarge { what: "body", .. })
        ));
        let mut cut = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(
            codec.decode_eof(&mut cut),
            Err(FrameError::Truncated(full.len() - 1))
        );
    }
}
