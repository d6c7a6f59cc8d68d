//! Byte sources and frame sinks: how the reader and the handler talk to each transport.

use crate::Error;
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Where a stream reader gets bytes from. Poll-based, so a reader waiting for data holds no
/// read future in its state.
pub(crate) trait ReadSource: Send + 'static {
    /// Reads once into `buf`, at most `max` bytes, reserving `want` (≤ `max`) bytes first if
    /// it has no spare room.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
        max: usize,
    ) -> Poll<io::Result<usize>>;

    /// The socket under this source, to watch for the peer hanging up while not reading.
    fn probe(&self) -> Option<&TcpStream> {
        None
    }
}

/// Above this capacity a read buffer grows by exactly what is asked for (small ones double).
const GROW_EXACT_FROM: usize = 64 * 1024;

/// Reserves room for a whole `want` (an empty buffer whose frames are gone is reused in place).
/// A large buffer (a large partial frame) grows by exactly `want`, not by doubling, so what it
/// holds stays within the byte budget that allowed `want`.
fn room_for(buf: &mut BytesMut, want: usize) {
    if buf.capacity() - buf.len() >= want {
        return;
    }
    if buf.capacity() < GROW_EXACT_FROM {
        buf.reserve(want);
    } else {
        let mut v: Vec<u8> = std::mem::take(buf).into();
        v.reserve_exact(want);
        *buf = BytesMut::from(bytes::Bytes::from(v));
    }
}

/// Reads at most `max` bytes into `buf`'s spare room.
fn poll_read_limited<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    max: usize,
) -> Poll<io::Result<usize>> {
    use bytes::BufMut;
    let mut limited = buf.limit(max);
    tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut limited)
}

/// A second handle on `tcp`'s socket, used only to see whether the peer has hung up (a
/// duplicate of its descriptor). `None` if the process is out of descriptors.
#[cfg_attr(not(any(feature = "tls", feature = "ws")), allow(dead_code))]
pub(crate) fn probe_of(tcp: &TcpStream) -> Option<TcpStream> {
    use std::os::fd::AsFd;
    let fd = tcp.as_fd().try_clone_to_owned().ok()?;
    TcpStream::from_std(std::net::TcpStream::from(fd)).ok()
}

/// How often a session that is not reading checks whether its peer hung up, while bytes it
/// has not read are waiting (the readiness that would wake it is already set).
const HANGUP_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Resolves once the peer of `probe`'s socket has hung up (FIN or reset), without reading.
/// Never resolves without a probe.
pub(crate) async fn hung_up(probe: Option<&TcpStream>) {
    let Some(tcp) = probe else {
        return std::future::pending().await;
    };
    loop {
        match tcp.ready(tokio::io::Interest::READABLE).await {
            Ok(r) if r.is_read_closed() || r.is_error() => return,
            Err(_) => return,
            // Unread bytes are waiting: the readiness stays set, so look again a little later.
            Ok(_) => tokio::time::sleep(HANGUP_CHECK).await,
        }
    }
}

/// A read half with a probe on its socket (TLS hides the socket once split).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct Probed<R> {
    inner: R,
    probe: Option<TcpStream>,
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
impl<R> Probed<R> {
    pub(crate) fn new(inner: R, probe: Option<TcpStream>) -> Self {
        Probed { inner, probe }
    }
}

impl<R: ReadSource> ReadSource for Probed<R> {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_read_into(cx, buf, want, max)
    }

    fn probe(&self) -> Option<&TcpStream> {
        self.probe.as_ref()
    }
}

impl ReadSource for tokio::net::tcp::OwnedReadHalf {
    /// Waits for readiness *before* allocating (the reader gives a large empty buffer back
    /// before it waits: an idle TCP session holds no read buffer). The read itself goes
    /// through tokio's `poll_read`, which treats a short read as "drained" and so saves the
    /// extra read that would only return `EWOULDBLOCK`.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.as_ref().poll_read_ready(cx))?;
        room_for(buf, want);
        poll_read_limited(self, cx, buf, max)
    }

    fn probe(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<T: AsyncRead + Send + 'static> ReadSource for tokio::io::ReadHalf<T> {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        room_for(buf, want);
        poll_read_limited(self, cx, buf, max)
    }
}

/// Where the handler writes encoded frames.
pub(crate) trait FrameSink: Send + 'static {
    /// Whether each frame travels as its own message (UDP datagram, WebSocket message) rather
    /// than as part of a byte stream.
    const MESSAGES: bool;

    /// The largest single message this sink can carry.
    fn max_message(&self) -> usize {
        usize::MAX
    }

    /// Writes `buf` whole (streams) or as one message per range ending at each `bounds` entry
    /// (message sinks), as far as the transport takes it now; `Ready(Ok)` once everything is
    /// written (and flushed), with both emptied. After `Pending`, call again with the same
    /// (untouched) `buf` and `bounds`: the sink keeps its progress. Poll-based, so a session
    /// holds no write future in its state.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        bounds: &mut Vec<usize>,
    ) -> Poll<Result<(), Error>>;

    /// Sends a keep-alive probe the peer's library answers (WebSocket ping). Default: nothing.
    fn ping(&mut self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// Ends the write direction cleanly (FIN, WebSocket close), saying why where the transport
    /// can (`why`: the error that ended the session, `None` for a normal close).
    fn shutdown(&mut self, why: Option<&Error>) -> impl Future<Output = ()> + Send;
}

/// A byte-stream sink: every queued frame goes out in one `write_all`.
pub(crate) struct StreamSink<W> {
    io: W,
    /// Bytes of the write under way already written (the buffer is emptied, keeping its
    /// allocation, once all are).
    written: usize,
}

impl<W> StreamSink<W> {
    pub(crate) fn new(io: W) -> Self {
        StreamSink { io, written: 0 }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> FrameSink for StreamSink<W> {
    const MESSAGES: bool = false;

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        bounds: &mut Vec<usize>,
    ) -> Poll<Result<(), Error>> {
        while self.written < buf.len() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.written += n;
        }
        // TLS keeps encrypted bytes inside until flushed (a no-op for plain TCP).
        std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.written = 0;
        buf.clear();
        bounds.clear();
        Poll::Ready(Ok(()))
    }

    async fn shutdown(&mut self, _why: Option<&Error>) {
        let _ = self.io.shutdown().await;
    }
}

/// A TCP stream, plain or with TLS: what TLS and WebSocket sessions run over.
#[cfg_attr(not(feature = "ws"), allow(dead_code))]
pub(crate) enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// An in-memory pipe (the fuzz harnesses, `session::fuzzing`).
    #[cfg(feature = "fuzzing")]
    Duplex(tokio::io::DuplexStream),
}

#[cfg_attr(not(feature = "ws"), allow(dead_code))]
impl Stream {
    /// The socket under it (`None` for an in-memory pipe).
    pub(crate) fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Some(s.get_ref().0),
            #[cfg(feature = "fuzzing")]
            Stream::Duplex(_) => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(feature = "fuzzing")]
            Stream::Duplex(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(feature = "fuzzing")]
            Stream::Duplex(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(feature = "fuzzing")]
            Stream::Duplex(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.is_write_vectored(),
            #[cfg(feature = "fuzzing")]
            Stream::Duplex(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(feature = "fuzzing")]
            Stream::Duplex(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(feature = "fuzzing")]
            Stream::Duplex(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
