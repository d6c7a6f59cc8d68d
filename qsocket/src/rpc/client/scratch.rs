//! Encode buffers for small messages, carved from a per-thread chunk instead of allocated one
//! by one: a request's body and its frame are each a slice of the chunk (one reference count),
//! and the chunk is freed when its last slice is. Large messages get buffers of their own, so
//! a slice kept for long pins at most one chunk.

use bytes::BytesMut;
use std::cell::RefCell;

/// The size of a chunk.
const CHUNK: usize = 8 * 1024;
/// Messages expected to be larger than this get a buffer of their own.
const SMALL: usize = 1024;

thread_local! {
    // Const-initialised: no lazy-initialisation check on each use.
    static SCRATCH: RefCell<Option<BytesMut>> = const { RefCell::new(None) };
}

/// Runs `fill` on an empty buffer with room for about `hint` bytes and returns what it wrote,
/// as a buffer of its own (a slice of this thread's chunk when small). On error nothing is
/// kept.
#[inline(always)]
pub(crate) fn encode<E>(
    hint: usize,
    fill: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<BytesMut, E> {
    let own = |fill: &mut dyn FnMut(&mut BytesMut) -> Result<(), E>| {
        let mut b = BytesMut::with_capacity(hint);
        fill(&mut b).map(|()| b)
    };
    let mut fill = Some(fill);
    let mut once = |b: &mut BytesMut| match fill.take() {
        Some(f) => f(b),
        None => Ok(()),
    };
    if hint > SMALL {
        return own(&mut once);
    }
    SCRATCH.with(|cell| {
        // A `fill` that encodes another message in turn gets a buffer of its own.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return own(&mut once);
        };
        let chunk = match &mut *slot {
            Some(c) if c.capacity() >= hint.max(64) => c,
            other => other.insert(BytesMut::with_capacity(CHUNK)),
        };
        match once(chunk) {
            Ok(()) => Ok(chunk.split()),
            Err(e) => {
                chunk.clear();
                Err(e)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::encode;
    use bytes::BufMut;

    #[test]
    fn small_buffers_share_a_chunk_and_large_ones_do_not() {
        let a = encode::<()>(10, |b| {
            b.put_slice(b"hello");
            Ok(())
        })
        .expect("a");
        let b = encode::<()>(10, |b| {
            b.put_slice(b"world!");
            Ok(())
        })
        .expect("b");
        assert_eq!((&a[..], &b[..]), (&b"hello"[..], &b"world!"[..]));
        let big = encode::<()>(4096, |b| {
            b.put_bytes(7, 4096);
            Ok(())
        })
        .expect("big");
        assert_eq!(big.len(), 4096);
        // A failed fill keeps nothing; a fill larger than its hint still works.
        assert!(encode::<&str>(10, |b| {
            b.put_slice(b"lost");
            Err("no")
        })
        .is_err());
        let grown = encode::<()>(8, |b| {
            b.put_bytes(1, 20_000);
            Ok(())
        })
        .expect("grown");
        assert_eq!(grown.len(), 20_000);
        let after = encode::<()>(3, |b| {
            b.put_slice(b"abc");
            Ok(())
        })
        .expect("after");
        assert_eq!(&after[..], b"abc");
        // Nested use gets its own buffer.
        let outer = encode::<()>(10, |b| {
            let inner = encode::<()>(10, |i| {
                i.put_slice(b"in");
                Ok(())
            })
            .expect("inner");
            b.put_slice(&inner);
            Ok(())
        })
        .expect("outer");
        assert_eq!(&outer[..], b"in");
    }
}
