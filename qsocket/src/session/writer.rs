//! The write side of a session: the [`Outgoing`] buffer that listener callbacks send into
//! (through [`Ctx`](super::Ctx)). Messages are encoded at once into one reusable write buffer
//! (frame bounds kept for transports that carry each frame as its own message); the handler
//! writes it out once per loop pass, or when [`FLUSH_BYTES`] are buffered, and an idle session
//! gives back a buffer that traffic made large.

use crate::Error;
use bytes::BytesMut;
use tokio_util::codec::Encoder;

/// The handler writes once this many bytes are buffered (instead of at the end of its pass);
/// also the largest size an idle session's write buffer is made again at.
pub(super) const FLUSH_BYTES: usize = 64 * 1024;
/// The largest write buffer an idle session keeps (a larger one is given back when the
/// handler goes idle).
const KEEP_WHILE_IDLE: usize = 1024;

/// Where listener callbacks put what they send: encoded at once into the session's write
/// buffer (see [`Ctx::send`](super::Ctx::send)), or written there directly as a whole frame by
/// a protocol layer (see [`Ctx::send_raw`](super::Ctx::send_raw)).
pub(crate) trait Outgoing<O>: Send {
    /// Encodes `msg` into the write buffer.
    fn push(&mut self, msg: O);
    /// Appends one whole frame, written by `write`.
    fn push_raw(&mut self, write: &mut dyn FnMut(&mut BytesMut));
    /// Bytes waiting in the write buffer.
    fn buffered(&self) -> usize;
}

/// The handler's outgoing side: the codec, the write buffer and the frame bounds.
pub(super) struct Out<C> {
    codec: C,
    /// The write buffer: every frame not yet written, back to back.
    pub(super) buf: BytesMut,
    /// Where each frame in `buf` ends (only when each frame travels as its own message).
    pub(super) bounds: Vec<usize>,
    /// Frames in `buf` (for the session's counters).
    pub(super) frames: u64,
    /// Whether each frame travels as its own message, and the largest one the sink carries.
    messages: bool,
    /// While busy: the most bytes buffered since the handler last went idle. After a large
    /// buffer was given back: the size to make the next one with, so a burst starts with that
    /// much room instead of growing step by step (then it counts anew).
    mark: u32,
    max_message: usize,
    /// Messages that could not be encoded (they are dropped; the rest go out).
    pub(super) errors: Vec<Error>,
}

impl<C: Send> Out<C> {
    /// An empty outgoing side encoding with `codec`; with `messages`, each frame travels as its
    /// own message of at most `max_message` bytes.
    pub(super) fn new(codec: C, messages: bool, max_message: usize) -> Self {
        Out {
            codec,
            buf: BytesMut::new(),
            bounds: Vec::new(),
            frames: 0,
            messages,
            mark: 0,
            max_message,
            errors: Vec::new(),
        }
    }

    /// Before appending: a buffer given back while idle is made again at the size it had.
    fn room(&mut self) {
        if self.buf.capacity() == 0 && self.mark > 0 {
            self.buf.reserve(self.mark as usize);
            self.mark = 0;
        }
    }

    /// The handler is going idle: a buffer that traffic made large is given back (only when
    /// everything in it is written), remembering its size for the next burst.
    pub(super) fn idle(&mut self) {
        if !self.buf.is_empty() {
            return;
        }
        // The most bytes this burst buffered (or the size kept from the last release, when
        // nothing was pushed since).
        let used = self.mark as usize;
        if self.buf.capacity() > KEEP_WHILE_IDLE || used > KEEP_WHILE_IDLE {
            self.buf = BytesMut::new();
        }
        self.mark = if used > KEEP_WHILE_IDLE {
            u32::try_from(used.min(FLUSH_BYTES)).unwrap_or(u32::MAX)
        } else {
            0
        };
    }

    /// Closes the frame that started at `start`.
    fn end_frame(&mut self, start: usize) {
        if self.buf.len() < start {
            // The writer cut into frames buffered before its own (it must only append): what
            // is left is written as it stands, but no frame may end beyond it.
            let end = self.buf.len();
            self.bounds.retain(|&b| b <= end);
            self.errors.push(Error::Encode(
                "a frame writer removed bytes buffered before its frame".into(),
            ));
            return;
        }
        if self.messages {
            let len = self.buf.len() - start;
            if len > self.max_message {
                self.buf.truncate(start);
                self.errors.push(Error::FrameTooLarge {
                    len,
                    max: self.max_message,
                });
                return;
            }
            self.bounds.push(self.buf.len());
        }
        self.frames += 1;
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.mark = self.mark.max(len);
    }
}

impl<C, O> Outgoing<O> for Out<C>
where
    C: Encoder<O, Error: Into<crate::error::BoxError>> + Send,
{
    fn push(&mut self, msg: O) {
        self.room();
        let start = self.buf.len();
        if let Err(e) = self.codec.encode(msg, &mut self.buf) {
            self.buf.truncate(start);
            self.errors.push(Error::Encode(e.into()));
            return;
        }
        self.end_frame(start);
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn push_raw(&mut self, write: &mut dyn FnMut(&mut BytesMut)) {
        self.room();
        let start = self.buf.len();
        write(&mut self.buf);
        if self.buf.len() != start {
            self.end_frame(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio_util::codec::BytesCodec;

    fn out() -> Out<BytesCodec> {
        Out::new(BytesCodec::new(), false, usize::MAX)
    }

    /// What a sink does once everything is written.
    fn written(o: &mut Out<BytesCodec>) {
        o.buf.clear();
        o.bounds.clear();
    }

    #[test]
    fn an_idle_handler_gives_back_a_large_write_buffer_and_regrows_it_at_once() {
        let mut o = out();
        // Small traffic: the buffer is kept while idle (no allocation per call).
        Outgoing::push(&mut o, Bytes::from_static(&[1; 31]));
        written(&mut o);
        o.idle();
        let small = o.buf.capacity();
        assert!((31..=KEEP_WHILE_IDLE).contains(&small));
        Outgoing::push(&mut o, Bytes::from_static(&[1; 31]));
        assert_eq!(o.buf.capacity(), small, "kept and reused");
        written(&mut o);
        o.idle();

        // A burst: given back when idle, but not while it still holds unwritten bytes.
        for _ in 0..100 {
            Outgoing::push(&mut o, Bytes::from(vec![2u8; 100]));
        }
        o.idle();
        assert_eq!(o.buf.len(), 10_000, "unwritten bytes are never dropped");
        written(&mut o);
        o.idle();
        assert_eq!(o.buf.capacity(), 0, "given back");
        // The next burst starts with room for the last one.
        Outgoing::push(&mut o, Bytes::from(vec![3u8; 100]));
        assert!(o.buf.capacity() >= 10_000);
        written(&mut o);
        o.idle();
        assert_eq!(o.buf.capacity(), 0, "still large: given back again");
        // Small traffic again: the size hint follows it down.
        Outgoing::push(&mut o, Bytes::from_static(&[4; 31]));
        written(&mut o);
        o.idle();
        Outgoing::push(&mut o, Bytes::from_static(&[4; 31]));
        written(&mut o);
        o.idle();
        assert!(o.buf.capacity() > 0 && o.buf.capacity() <= KEEP_WHILE_IDLE);
    }

    #[test]
    fn raw_frames_are_bounded_like_encoded_ones_and_may_only_append() {
        // Each frame its own message of at most 8 bytes (as over UDP or WebSocket).
        let mut o = Out::new(BytesCodec::new(), true, 8);
        Outgoing::push(&mut o, Bytes::from_static(b"abc"));
        Outgoing::<Bytes>::push_raw(&mut o, &mut |b: &mut BytesMut| b.extend_from_slice(b"defg"));
        // Nothing appended: no frame.
        Outgoing::<Bytes>::push_raw(&mut o, &mut |_: &mut BytesMut| {});
        assert_eq!((o.bounds.as_slice(), o.frames), (&[3, 7][..], 2));
        // Too large for one message: dropped and reported, the rest kept.
        Outgoing::<Bytes>::push_raw(&mut o, &mut |b: &mut BytesMut| b.extend_from_slice(&[0; 9]));
        assert_eq!((o.buf.len(), o.bounds.len(), o.errors.len()), (7, 2, 1));
        assert_eq!(Outgoing::<Bytes>::buffered(&o), 7);
        // A writer that cuts into the frames before its own leaves no bound past the end.
        Outgoing::<Bytes>::push_raw(&mut o, &mut |b: &mut BytesMut| b.truncate(5));
        assert_eq!((o.buf.len(), o.bounds.as_slice()), (5, &[3][..]));
        assert_eq!(o.errors.len(), 2);
    }
}
