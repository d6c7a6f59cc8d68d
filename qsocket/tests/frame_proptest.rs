//! Property test of the RPC frame decoder: random and mutated frames, split at random points,
//! never panic, never make the decoder reserve beyond the configured limits, and valid frames
//! always come back whole.

use bytes::BytesMut;
use proptest::prelude::*;
use qsocket::rpc::frame::{encode_frame, put_metadata, FrameCodec, Header, Limits};
use tokio_util::codec::Decoder;

const LIMITS: Limits = Limits {
    max_body: 2048,
    max_metadata: 128,
};

fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u64>(),
        any::<u32>(),
        "[a-z.]{0,40}",
        "[A-Za-z]{0,20}",
        proptest::collection::vec(
            ("[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 0..16)),
            0..4,
        ),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(kind, codec, id, timeout_ms, service, method, md, body)| {
            let mut meta = Vec::new();
            for (k, v) in &md {
                put_metadata(&mut meta, k, v).expect("small entry");
            }
            let h = Header {
                kind,
                codec,
                id,
                timeout_ms,
                service: &service,
                method: &method,
                metadata: &meta,
                ..Header::default()
            };
            let mut buf = BytesMut::new();
            encode_frame(&mut buf, &h, &LIMITS, |b| {
                b.extend_from_slice(&body);
                Ok::<_, ()>(())
            })
            .expect("within limits");
            buf.to_vec()
        })
}

/// Feeds `bytes` to a decoder in chunks cut at `cuts`; returns the frames decoded (stopping
/// at the first error) and checks the buffer never grows past what the limits allow.
fn feed(bytes: &[u8], cuts: &[usize]) -> (usize, bool) {
    let mut codec = FrameCodec::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut start = 0;
    let mut frames = 0;
    // Generous: BytesMut may double a reservation.
    let cap_bound = 2 * (LIMITS.max_frame() + bytes.len().min(LIMITS.max_frame()) + 64);
    for end in points {
        buf.extend_from_slice(&bytes[start..end]);
        start = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => frames += 1,
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
            assert!(
                buf.capacity() <= cap_bound,
                "capacity {} over {cap_bound}",
                buf.capacity()
            );
        }
        assert!(
            buf.capacity() <= cap_bound,
            "capacity {} over {cap_bound}",
            buf.capacity()
        );
    }
    (frames, false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_frames_split_anywhere_decode_whole(
        frames in proptest::collection::vec(arb_frame(), 1..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream: Vec<u8> = frames.concat();
        let (n, failed) = feed(&stream, &cuts);
        prop_assert!(!failed);
        prop_assert_eq!(n, frames.len());
    }

    #[test]
    fn mutated_frames_never_panic_or_overallocate(
        frames in proptest::collection::vec(arb_frame(), 1..4),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream: Vec<u8> = frames.concat();
        for (at, byte) in flips {
            let i = at % stream.len();
            stream[i] = byte;
        }
        let _ = feed(&stream, &cuts);
    }

    #[test]
    fn random_bytes_never_panic_or_overallocate(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = feed(&bytes, &cuts);
        // And behind a valid magic and version, so the length checks are reached.
        let mut framed = b"QS\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = feed(&framed, &cuts);
    }
}
