//! WebSocket: one binary (or text) message per decode, one message per encoded frame. Pings are
//! sent by the handler every `ws_ping_period`; tungstenite answers the peer's pings; every
//! message read, pongs included, keeps the session's `active()` current.

use super::config::SessionConfig;
use super::handle::Session;
use super::io::{FrameSink, Stream};
use super::queue;
use super::runtime::{decode_all, wait_for_budget, Inbound, ReadLimits};
use crate::Error;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::task::{Context, Poll};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::Decoder;

type Ws = WebSocketStream<Stream>;

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
    _limits: ReadLimits,
    probe: Option<tokio::net::TcpStream>,
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
        let data = match next {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(_)) => {
                // Ping (answered by tungstenite), pong, raw frame: proof of life only.
                session.stats_ref().touch();
                continue;
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
