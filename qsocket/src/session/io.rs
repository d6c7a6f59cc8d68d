//! Byte sources and frame sinks: how the reader and the handler talk to each transport.

use crate::Error;
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The largest empty read buffer a TCP session keeps while it waits for data.
const KEEP_WHILE_WAITING: usize = 1024;

/// Where a stream reader gets bytes from.
pub(crate) trait ReadSource: Send + 'static {
    /// Reads once into `buf`, reserving `want` bytes first if it has no spare room.
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
        want: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;
}

impl ReadSource for tokio::net::tcp::OwnedReadHalf {
    /// Waits for readiness *before* allocating, and gives a large empty buffer back before it
    /// may wait: an idle TCP session holds no read buffer. The read itself goes through
    /// tokio's `poll_read`, which treats a short read as "drained" and so saves the extra
    /// read that would only return `EWOULDBLOCK`.
    async fn read_into(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        if buf.is_empty() && buf.capacity() > KEEP_WHILE_WAITING {
            *buf = BytesMut::new();
        }
        self.readable().await?;
        // Room for a whole `want` (an empty buffer whose frames are gone is reused in place).
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        self.read_buf(buf).await
    }
}

impl<T: AsyncRead + Send + 'static> ReadSource for tokio::io::ReadHalf<T> {
    async fn read_into(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        // Room for a whole `want` (an empty buffer whose frames are gone is reused in place).
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        self.read_buf(buf).await
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
    /// (message sinks), then empties both.
    fn write(
        &mut self,
        buf: &mut BytesMut,
        bounds: &mut Vec<usize>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sends a keep-alive probe the peer's library answers (WebSocket ping). Default: nothing.
    fn ping(&mut self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// Ends the write direction cleanly (FIN, WebSocket close).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// A byte-stream sink: every queued frame goes out in one `write_all`.
pub(crate) struct StreamSink<W>(pub(crate) W);

impl<W: AsyncWrite + Unpin + Send + 'static> FrameSink for StreamSink<W> {
    const MESSAGES: bool = false;

    async fn write(&mut self, buf: &mut BytesMut, bounds: &mut Vec<usize>) -> Result<(), Error> {
        bounds.clear();
        self.0.write_all(buf).await?;
        // TLS keeps encrypted bytes inside until flushed (a no-op for plain TCP).
        self.0.flush().await?;
        buf.clear();
        Ok(())
    }

    async fn shutdown(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// A TCP stream, plain or with TLS: what TLS and WebSocket sessions run over.
#[cfg_attr(not(feature = "ws"), allow(dead_code))]
pub(crate) enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
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
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
