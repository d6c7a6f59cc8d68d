//! WebSocket: one binary (or text) message per decode, one message per encoded frame. Pings are
//! sent by the handler every `ws_ping_period`; tungstenite answers the peer's pings; every
//! message read, pongs included, keeps the session's `active()` current.

use super::config::SessionConfig;
use super::handle::{Gauge, Session};
use super::io::{FrameSink, Stream};
use super::queue;
use super::reader::{decode_all, wait_for_budget, Inbound, ReadLimits};
use crate::Error;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::Decoder;

type Ws = WebSocketStream<Metered>;

/// The byte stream under a WebSocket session. Once the session runs, every byte tungstenite
/// reads counts against the session's byte budget as it arrives — a message still being
/// received included, which tungstenite would otherwise gather up to `max_frame_len` unseen —
/// and reading stops while the budget is spent (watching the socket for the peer hanging up).
pub(crate) struct Metered {
    io: Stream,
    gate: Option<Gate>,
}

struct Gate {
    gauge: Gauge,
    /// Bytes read and counted that no message has claimed yet (see [`ws_reader`]).
    unclaimed: Arc<AtomicUsize>,
    /// While paused with unread bytes waiting: when to look for a hang-up again.
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A message (or control frame) still arriving must arrive whole within this.
    read_timeout: Option<std::time::Duration>,
    /// When the part of a message read so far started arriving, and the timer at its limit.
    partial: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Gate {
    /// Whether the message being received has taken longer than the read timeout; arranges to
    /// be woken when it would.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        if self.unclaimed.load(Ordering::Relaxed) == 0 {
            self.partial = None;
            return false;
        }
        let Some(limit) = self.read_timeout else {
            return false;
        };
        let timer = self
            .partial
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).is_ready()
    }
}

/// The error a WebSocket message that arrives too slowly ends its session with.
fn read_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "a message did not arrive whole within the read timeout",
    )
}

impl Metered {
    pub(crate) fn new(io: Stream) -> Self {
        Metered { io, gate: None }
    }

    /// The socket under it.
    pub(crate) fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        self.io.tcp()
    }

    /// Starts counting what is read against `gauge`; returns the count of bytes read that no
    /// message has claimed yet.
    fn meter(
        &mut self,
        gauge: Gauge,
        read_timeout: Option<std::time::Duration>,
    ) -> Arc<AtomicUsize> {
        let unclaimed = Arc::new(AtomicUsize::new(0));
        self.gate = Some(Gate {
            gauge,
            unclaimed: unclaimed.clone(),
            recheck: None,
            read_timeout,
            partial: None,
        });
        unclaimed
    }
}

/// How often a paused WebSocket session with unread bytes waiting looks for a hang-up.
const HANGUP_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether the peer of `tcp` has hung up, without reading; arranges for `cx` to be woken to
/// look again (by the socket, or by `recheck` while unread bytes keep its readiness set).
fn hung_up_now(
    tcp: &tokio::net::TcpStream,
    recheck: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
) -> bool {
    match tcp.poll_read_ready(cx) {
        Poll::Pending => return false,
        Poll::Ready(Err(_)) => return true,
        Poll::Ready(Ok(())) => {}
    }
    // Readable: bytes are waiting, or the peer has gone. The readiness is set, so its flags
    // are at hand at once.
    let mut flags = std::pin::pin!(tcp.ready(tokio::io::Interest::READABLE));
    match flags.as_mut().poll(cx) {
        Poll::Ready(Ok(r)) if r.is_read_closed() || r.is_error() => return true,
        Poll::Ready(Err(_)) => return true,
        _ => {}
    }
    loop {
        let timer = recheck.get_or_insert_with(|| Box::pin(tokio::time::sleep(HANGUP_CHECK)));
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        *recheck = None;
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(gate) = this.gate.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let partial = gate.unclaimed.load(Ordering::Relaxed) > 0;
        if !partial {
            // Everything read so far has been claimed: no message is on its way.
            gate.partial = None;
        }
        gate.gauge.mem().set_partial(partial);
        let room = match gate.gauge.mem().poll_room(cx) {
            Poll::Ready(room) => {
                gate.recheck = None;
                room
            }
            Poll::Pending => {
                if let Some(tcp) = this.io.tcp() {
                    if hung_up_now(tcp, &mut gate.recheck, cx) {
                        gate.gauge.peer_gone();
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "the peer hung up while the session was paused",
                        )));
                    }
                }
                // As for streams: the message's clock runs on while the shared budget is what
                // is spent, and starts again when the session's own budget is.
                if !gate.gauge.mem().pool_bound() {
                    gate.partial = None;
                } else if gate.overdue(cx) {
                    return Poll::Ready(Err(read_timed_out()));
                }
                return Poll::Pending;
            }
        };
        let limit = room.min(buf.remaining());
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(limit));
        if Pin::new(&mut this.io)
            .poll_read(cx, &mut part)?
            .is_pending()
        {
            if gate.overdue(cx) {
                return Poll::Ready(Err(read_timed_out()));
            }
            return Poll::Pending;
        }
        let n = part.filled().len();
        buf.advance(n);
        gate.gauge.mem().charge(n);
        gate.unclaimed.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Starts counting what the WebSocket under a session reads against the session's budget;
/// returns the count of bytes read that no message has claimed yet, for [`ws_reader`].
pub(crate) fn meter<O: Send + 'static>(
    ws: &mut Ws,
    session: &Session<O>,
    read_timeout: Option<std::time::Duration>,
) -> Arc<AtomicUsize> {
    ws.get_mut().meter(session.gauge(), read_timeout)
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> Error {
    Error::WebSocket(Box::new(e))
}

/// tungstenite's settings derived from the session's: bounded messages, small read buffer
/// (its default is 128 KiB per connection), bounded write buffer.
pub(crate) fn ws_config(cfg: &SessionConfig) -> WebSocketConfig {
    let max = cfg.max_frame_len;
    WebSocketConfig::default()
        .read_buffer_size(cfg.read_buffer.clamp(512, 64 * 1024))
        .write_buffer_size(0)
        .max_write_buffer_size(max.saturating_add(64 * 1024))
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// The server side of the upgrade: only `path` is accepted; anything else gets 404.
pub(crate) async fn accept(stream: Stream, path: &str, cfg: &SessionConfig) -> Result<Ws, Error> {
    let stream = Metered::new(stream);
    let path = path.to_string();
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == path {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some(format!(
                "no websocket endpoint at {}",
                req.uri().path()
            )));
            *e.status_mut() = StatusCode::NOT_FOUND;
            Err(e)
        }
    };
    tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config(cfg)))
        .await
        .map_err(ws_err)
}

/// The client side of the upgrade.
pub(crate) async fn connect(stream: Stream, url: &str, cfg: &SessionConfig) -> Result<Ws, Error> {
    let stream = Metered::new(stream);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config(cfg)))
            .await
            .map_err(ws_err)?;
    Ok(ws)
}

/// The close frame that says why a session ended (RFC 6455 section 7.4.1): 1000 for a normal
/// close, 1009 for a message over the size limit, 1002 for a WebSocket protocol error, 1007
/// for a message the codec could not decode, 1008 for a timeout, 1011 otherwise.
pub(crate) fn close_frame(why: Option<&Error>) -> CloseFrame {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let code = match why {
        None => CloseCode::Normal,
        Some(Error::FrameTooLarge { .. }) => CloseCode::Size,
        Some(Error::WebSocket(e)) => match e.downcast_ref::<WsError>() {
            Some(WsError::Capacity(_)) => CloseCode::Size,
            Some(WsError::Protocol(_)) => CloseCode::Protocol,
            Some(WsError::Utf8(_)) => CloseCode::Invalid,
            _ => CloseCode::Error,
        },
        Some(Error::Decode(_)) => CloseCode::Invalid,
        Some(Error::Timeout(_) | Error::ReadTimeout(_)) => CloseCode::Policy,
        Some(_) => CloseCode::Error,
    };
    // A close reason is at most 123 bytes.
    let mut reason = why.map(ToString::to_string).unwrap_or_default();
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Writes each frame as one binary message, flushing once per batch.
pub(crate) struct WsSink {
    sink: SplitSink<Ws, Message>,
    max: usize,
    /// Progress of the write under way: frames sent, and the byte where the last one ended.
    sent: usize,
    sent_bytes: usize,
}

impl WsSink {
    pub(crate) fn new(sink: SplitSink<Ws, Message>, max: usize) -> Self {
        WsSink {
            sink,
            max,
            sent: 0,
            sent_bytes: 0,
        }
    }
}

impl FrameSink for WsSink {
    const MESSAGES: bool = true;

    fn max_message(&self) -> usize {
        self.max
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        bounds: &mut Vec<usize>,
    ) -> Poll<Result<(), Error>> {
        // `sent` frames (ending at byte `sent_bytes` of the original buffer) are already out;
        // each message shares the buffer's allocation.
        while let Some(&end) = bounds.get(self.sent) {
            std::task::ready!(self.sink.poll_ready_unpin(cx)).map_err(ws_err)?;
            let msg = buf.split_to(end - self.sent_bytes).freeze();
            self.sent += 1;
            self.sent_bytes = end;
            self.sink
                .start_send_unpin(Message::Binary(msg))
                .map_err(ws_err)?;
        }
        std::task::ready!(self.sink.poll_flush_unpin(cx)).map_err(ws_err)?;
        (self.sent, self.sent_bytes) = (0, 0);
        buf.clear();
        bounds.clear();
        Poll::Ready(Ok(()))
    }

    async fn ping(&mut self) -> Result<(), Error> {
        self.sink
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(ws_err)
    }

    async fn shutdown(&mut self, why: Option<&Error>) {
        let _ = self.sink.send(Message::Close(Some(close_frame(why)))).await;
        let _ = self.sink.close().await;
    }
}

/// The reader task of a WebSocket session. Between messages it waits while the session's
/// budget is spent (watching `probe`, a second handle on the socket, for the peer hanging up).
pub(crate) async fn ws_reader<D, O>(
    mut stream: SplitStream<Ws>,
    mut codec: D,
    tx: queue::Sender<Inbound<D::Item>>,
    session: Session<O>,
    limits: ReadLimits,
    probe: Option<tokio::net::TcpStream>,
    unclaimed: Arc<AtomicUsize>,
) where
    D: Decoder<Error: Into<crate::error::BoxError> + Send> + Send,
    D::Item: Send,
    O: Send + 'static,
{
    let token = session.token().clone();
    loop {
        if session.mem().room() == 0 && !Box::pin(wait_for_budget(&session, probe.as_ref())).await {
            return;
        }
        let next = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            m = stream.next() => m,
        };
        // What the stream counted while it read this message (or control frame) is held by
        // the message from here on (and a control frame holds nothing).
        session.mem().release(unclaimed.swap(0, Ordering::Relaxed));
        let data = match next {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(_)) => {
                // Ping (answered by tungstenite), pong, raw frame: proof of life only.
                session.stats_ref().touch();
                continue;
            }
            Some(Err(tokio_tungstenite::tungstenite::Error::Io(e)))
                if e.kind() == std::io::ErrorKind::TimedOut =>
            {
                let t = limits.read_timeout.unwrap_or_default();
                let _ = tx.send(Inbound::Err(Error::ReadTimeout(t))).await;
                return;
            }
            Some(Err(e)) => {
                let _ = tx.send(Inbound::Err(ws_err(e))).await;
                return;
            }
        };
        let stats = session.stats_ref();
        stats.add_in(0, data.len() as u64);
        session.mem().charge(data.len());
        let at = stats.touch();
        let mut buf = BytesMut::from(data);
        let go_on = decode_all(
            &mut codec,
            &mut buf,
            &tx,
            &session,
            true,
            at,
            probe.as_ref(),
            &mut 0,
        )
        .await;
        // Bytes that did not become a frame are not held any more.
        session.mem().release(buf.len());
        if !go_on {
            return;
        }
    }
}
