//! Helpers for the proto3 JSON mapping of hand-written message types.
//!
//! proto3 writes `bytes` fields as base64 strings; serde's default for `bytes::Bytes` and
//! `Vec<u8>` is an array of numbers, which is larger, slower, and not what other proto3
//! implementations read. Mark such fields with `#[serde(with = "qsocket::rpc::json::base64")]`:
//!
//! ```
//! #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
//! #[serde(default)]
//! struct Blob {
//!     #[prost(bytes = "bytes", tag = "1")]
//!     #[serde(with = "qsocket::rpc::json::base64")]
//!     data: bytes::Bytes,
//! }
//! let json = serde_json::to_string(&Blob { data: bytes::Bytes::from_static(b"hi!") }).unwrap();
//! assert_eq!(json, r#"{"data":"aGkh"}"#);
//! ```

/// `bytes` fields as base64 strings: written in the standard alphabet with padding; read in
/// the standard or the URL-safe alphabet, with or without padding (as proto3 requires).
pub mod base64 {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes `bytes` as standard base64 with padding.
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = vec![0u8; encoded_len(bytes.len())];
        encode_into(bytes, &mut out);
        // Only ASCII was written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The length of `n` bytes in padded base64.
    const fn encoded_len(n: usize) -> usize {
        n.div_ceil(3) * 4
    }

    /// Writes the padded base64 of `bytes` to the start of `out` (at least
    /// `encoded_len(bytes.len())` long).
    fn encode_into(bytes: &[u8], out: &mut [u8]) {
        for (chunk, dst) in bytes.chunks(3).zip(out.chunks_mut(4)) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = if i <= chunk.len() {
                    ALPHABET[(n >> (18 - 6 * i) & 63) as usize]
                } else {
                    b'='
                };
            }
        }
    }

    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }

    /// Decodes standard or URL-safe base64, padded or not.
    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let data = text.trim_end_matches('=').as_bytes();
        if data.len() % 4 == 1 {
            return Err(format!("invalid base64 length {}", text.len()));
        }
        let mut out = Vec::with_capacity(data.len() * 3 / 4);
        for chunk in data.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                let v =
                    value(c).ok_or_else(|| format!("invalid base64 character {:?}", c as char))?;
                n |= v << (18 - 6 * i);
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..chunk.len() - 1]);
        }
        Ok(out)
    }

    /// Values up to this many bytes are encoded on the stack (no allocation).
    const ON_STACK: usize = 192;

    /// Serializes a byte field as a base64 string. (Encoding it whole first and handing serde
    /// one string measured faster than streaming it through `collect_str`; small values are
    /// encoded in a stack buffer.)
    pub fn serialize<S: Serializer, T: AsRef<[u8]>>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        let bytes = value.as_ref();
        if bytes.len() > ON_STACK {
            return s.serialize_str(&encode(bytes));
        }
        let mut buf = [0u8; encoded_len(ON_STACK)];
        let out = &mut buf[..encoded_len(bytes.len())];
        encode_into(bytes, out);
        s.serialize_str(std::str::from_utf8(out).map_err(serde::ser::Error::custom)?)
    }

    /// Deserializes a byte field from a base64 string.
    pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(d: D) -> Result<T, D::Error> {
        struct B64;
        impl Visitor<'_> for B64 {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
                decode(v).map_err(E::custom)
            }
        }
        d.deserialize_str(B64).map(T::from)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_accepts_every_proto3_form() {
            for len in 0..40 {
                let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
                assert_eq!(decode(&encode(&data)).expect("decode"), data, "len {len}");
            }
            assert_eq!(encode(b"hi!"), "aGkh");
            assert_eq!(encode(b"hi"), "aGk=");
            assert_eq!(decode("aGk").expect("unpadded"), b"hi");
            assert_eq!(
                decode("-_-_").expect("url-safe"),
                decode("+/+/").expect("standard")
            );
            assert!(decode("a").is_err());
            assert!(decode("a*bc").is_err());
        }

        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Field {
            #[serde(with = "super")]
            data: Vec<u8>,
        }

        #[test]
        fn serde_field_round_trips_on_the_stack_and_on_the_heap() {
            for len in [0, 1, 63, 64, 65, ON_STACK - 1, ON_STACK, ON_STACK + 1, 1000] {
                let f = Field {
                    data: (0..len).map(|i| (i * 7 + 3) as u8).collect(),
                };
                let json = serde_json::to_string(&f).expect("serialize");
                assert_eq!(
                    json,
                    format!(r#"{{"data":"{}"}}"#, encode(&f.data)),
                    "len {len}"
                );
                let back: Field = serde_json::from_str(&json).expect("deserialize");
                assert_eq!(back, f, "len {len}");
            }
        }
    }
}
