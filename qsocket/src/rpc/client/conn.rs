//! One connection of a client as the call path sees it, and the session codec of client
//! connections, which completes a call right where its response is decoded.

use super::super::frame::{kind, Frame, FrameCodec, FrameError};
use super::pending::Pending;
use crate::session::Session;
use bytes::BytesMut;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The session codec of client connections: frames as [`FrameCodec`], except that a response
/// completes its call at once, in the reader that decoded it, with no hand-off to another task.
#[derive(Clone)]
pub(crate) struct ClientCodec {
    pub(crate) frames: FrameCodec,
    pub(crate) pending: Arc<Pending>,
    /// Responses completed in this pass over the read buffer.
    pub(crate) completed: usize,
}

/// After this many responses of one read are completed, the codec hands the listener a
/// [`PAUSE`] marker.
const PAUSE_AFTER: usize = 8;

/// Not a frame kind on the wire: the marker a client codec hands its listener after the
/// first [`PAUSE_AFTER`] responses of a read. Queuing it wakes the connection's handler
/// *between* those callers and the rest, so the requests the first callers send next are
/// written while the rest are still being completed — the peer gets to work on them at once
/// instead of both sides taking turns. The listener ignores it.
pub(crate) const PAUSE: u8 = 0xff;

/// No pause when more than this is still to decode: this side is behind (the peer has work
/// queued already), and a write split in two would only cost a system call.
const PAUSE_BACKLOG: usize = 4 * 1024;

impl ClientCodec {
    fn complete(&mut self, frame: Frame, backlog: usize) -> Option<Frame> {
        if frame.kind != kind::RESPONSE {
            return Some(frame);
        }
        let id = frame.id;
        self.pending.complete(id, Ok(frame));
        self.completed += 1;
        (self.completed == PAUSE_AFTER && backlog <= PAUSE_BACKLOG).then(|| Frame::marker(PAUSE))
    }
}

impl tokio_util::codec::Decoder for ClientCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        while let Some(frame) = self.frames.decode(src)? {
            if let Some(other) = self.complete(frame, src.len()) {
                return Ok(Some(other));
            }
        }
        self.completed = 0;
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        while let Some(frame) = self.frames.decode_eof(src)? {
            if let Some(other) = self.complete(frame, src.len()) {
                return Ok(Some(other));
            }
        }
        self.completed = 0;
        Ok(None)
    }
}

/// A message at least this large that finds the write buffer empty becomes the write buffer
/// (instead of being copied into it): on a byte stream it is a batch of requests that calls
/// wrote into one buffer.
const TAKE_WHOLE: usize = 2 * 1024;

/// A client session carries whole frames, or batches of them, as the `BytesMut` they were
/// encoded in: a request is never frozen into `Bytes` (which allocates when the buffer is not
/// full), only copied into the write buffer, or taken as it when that is empty.
impl tokio_util::codec::Encoder<BytesMut> for ClientCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frames: BytesMut, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        if dst.is_empty() && frames.len() >= TAKE_WHOLE {
            *dst = frames;
        } else {
            dst.extend_from_slice(&frames);
        }
        Ok(())
    }
}

/// What the call path and a connection's listener share about that connection.
pub(crate) struct ConnState {
    /// Set by a GOAWAY: no new calls on this connection.
    pub(crate) draining: AtomicBool,
    /// UDP: caps the calls in flight (the rest wait for a permit).
    pub(crate) permits: Option<Arc<Semaphore>>,
}

/// A live connection as the call path sees it (one `Arc`: a pick clones one pointer).
#[derive(Clone)]
pub(crate) struct Conn(pub(crate) Arc<ConnParts>);

pub(crate) struct ConnParts {
    pub(crate) session: Session<BytesMut>,
    pub(crate) pending: Arc<Pending>,
    pub(crate) state: Arc<ConnState>,
}

impl std::ops::Deref for Conn {
    type Target = ConnParts;

    fn deref(&self) -> &ConnParts {
        &self.0
    }
}

impl Conn {
    /// Whether new calls may use it.
    pub(crate) fn usable(&self) -> bool {
        !self.session.is_closed()
            && !self
                .state
                .draining
                .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Encoder;

    #[test]
    fn a_large_batch_becomes_an_empty_write_buffer_and_the_rest_is_copied() {
        let mut codec = ClientCodec {
            frames: FrameCodec::default(),
            pending: Arc::new(Pending::new(tokio_util::sync::CancellationToken::new())),
            completed: 0,
        };
        let batch = BytesMut::from(&vec![7u8; TAKE_WHOLE][..]);
        let at = batch.as_ptr();
        let mut dst = BytesMut::with_capacity(64);
        codec.encode(batch, &mut dst).expect("encode");
        // Taken whole, not copied.
        assert_eq!((dst.as_ptr(), dst.len()), (at, TAKE_WHOLE));
        // A small frame, or one behind bytes already buffered, is copied.
        codec
            .encode(BytesMut::from(&b"abc"[..]), &mut dst)
            .expect("encode");
        assert_eq!(dst.len(), TAKE_WHOLE + 3);
        assert_eq!(&dst[TAKE_WHOLE..], b"abc");
        let mut empty = BytesMut::new();
        codec
            .encode(BytesMut::from(&b"xyz"[..]), &mut empty)
            .expect("encode");
        assert_eq!(&empty[..], b"xyz");
    }
}
