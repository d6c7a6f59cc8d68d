//! `qsocket::rpc::frame::FrameCodec` on arbitrary bytes.
//!
//! Input: `[options]` then the bytes a peer sends. Options bit 0: small limits (256-byte
//! bodies, 64-byte metadata) instead of the defaults; bit 1: the bytes arrive in chunks of
//! `(options >> 2) + 1` bytes (a stream reader's partial frames) instead of all at once.
//!
//! Checks: no panic; every decoded frame's accessors agree with its bytes, its metadata walk
//! stays inside the block, and it decodes again to itself after being encoded; a valid metadata
//! block re-encodes to the same bytes; a `decode` that returns `Ok(None)` (a partial frame)
//! does not make the buffer's capacity grow.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use qsocket::rpc::frame::{put_metadata, Frame, FrameCodec, Limits, HEADER_LEN};
use tokio_util::codec::{Decoder, Encoder};

fn check(frame: &Frame, limits: &Limits) {
    let whole = frame.as_bytes();
    let (service, method, metadata) = (frame.service(), frame.method(), frame.metadata());
    let body = frame.body();
    assert_eq!(body.len(), frame.body_len());
    assert_eq!(
        whole.len(),
        HEADER_LEN + service.len() + method.len() + metadata.0.len() + body.len(),
        "the parts do not add up to the frame"
    );
    assert!(body.len() <= limits.max_body as usize);
    assert!(metadata.0.len() <= limits.max_metadata as usize);
    assert!(whole.len() <= limits.max_frame());
    assert_eq!(&whole[..2], b"QS");
    assert_eq!(frame.metadata_bytes(), metadata.0);
    assert_eq!(&whole[whole.len() - body.len()..], &body[..]);
    std::hint::black_box((
        frame.kind,
        frame.codec,
        frame.flags,
        frame.status,
        frame.id,
        frame.timeout_ms,
    ));

    // The metadata walk stays inside the block; a valid block re-encodes to itself.
    let mut used = 0;
    let mut again = Vec::new();
    let mut first: Option<(&[u8], &[u8])> = None;
    for (k, v) in metadata.iter() {
        used += 3 + k.len() + v.len();
        first.get_or_insert((k, v));
        if let Ok(key) = std::str::from_utf8(k) {
            put_metadata(&mut again, key, v).expect("a decoded entry fits the format");
        }
    }
    assert!(
        used <= metadata.0.len(),
        "metadata entries run past the block"
    );
    let valid = metadata.is_valid();
    assert_eq!(valid, used == metadata.0.len());
    if valid && again.len() == used {
        assert_eq!(
            again, metadata.0,
            "a valid metadata block re-encodes differently"
        );
    }
    if let Some((k, v)) = first {
        if let Ok(key) = std::str::from_utf8(k) {
            assert_eq!(
                metadata.get(key),
                Some(v),
                "get() does not find the first entry"
            );
        }
    }
    let _ = format!("{frame:?}");

    // Encoded (copied as is) and decoded again, it is the same frame.
    let mut codec = FrameCodec::new(*limits);
    let mut buf = BytesMut::new();
    codec
        .encode(Bytes::clone(whole), &mut buf)
        .expect("encoding copies");
    let back = codec
        .decode(&mut buf)
        .expect("a decoded frame decodes again")
        .expect("a whole frame");
    assert_eq!(&back, frame);
    assert!(buf.is_empty());
}

/// Decodes every whole frame in `buf`; `false` once the codec failed.
fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut, limits: &Limits) -> bool {
    loop {
        let capacity = buf.capacity();
        match codec.decode(buf) {
            Ok(Some(frame)) => check(&frame, limits),
            Ok(None) => {
                assert!(
                    buf.capacity() <= capacity,
                    "a partial frame of {} bytes made the codec reserve: capacity {} -> {}",
                    buf.len(),
                    capacity,
                    buf.capacity()
                );
                return true;
            }
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, data)) = data.split_first() else {
        return;
    };
    let limits = if opts & 1 != 0 {
        Limits {
            max_body: 256,
            max_metadata: 64,
        }
    } else {
        Limits::default()
    };
    let chunk = if opts & 2 != 0 {
        usize::from(opts >> 2) + 1
    } else {
        data.len().max(1)
    };
    let mut codec = FrameCodec::new(limits);
    let mut buf = BytesMut::new();
    for part in data.chunks(chunk) {
        buf.extend_from_slice(part);
        if !decode_all(&mut codec, &mut buf, &limits) {
            break;
        }
    }
    // The end of the stream (after an error too): what is left is a frame or an error.
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => check(&frame, &limits),
            Ok(None) => {
                assert!(buf.is_empty(), "decode_eof left bytes without an error");
                break;
            }
            Err(_) => break,
        }
    }
});
