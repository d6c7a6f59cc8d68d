//! An established connection of any transport, and how a session is run over it.

use super::config::SessionConfig;
use super::endpoint::Transport;
use super::handle::Session;
use super::io::StreamSink;
use super::listener::EventListener;
use super::queue;
use super::runtime::{drive, stream_reader, Parts, ReadLimits};
use super::udp::{datagram_reader, UdpSink};
use super::Codec;
use crate::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// The transport-specific half of a connection.
pub(crate) enum Io {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    #[cfg(feature = "ws")]
    Ws(Box<tokio_tungstenite::WebSocketStream<super::io::Stream>>),
    /// A connected UDP socket (client side).
    Udp(Arc<UdpSocket>),
}

/// A connection ready to become a session.
pub(crate) struct Conn {
    pub(crate) io: Io,
    pub(crate) transport: Transport,
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
}

/// Runs one session over `conn` until it closes (see [`drive`]).
pub(crate) async fn run_conn<L, C>(
    conn: Conn,
    listener: L,
    codec: C,
    cfg: &SessionConfig,
    token: CancellationToken,
    force: &CancellationToken,
    on_live: impl FnOnce(&Session<L::Out>),
) -> Result<(), Error>
where
    L: EventListener,
    C: Codec<L::In, L::Out>,
{
    let (session, outbound) =
        Session::new(conn.transport, conn.local, conn.peer, cfg.send_queue, token);
    let (tx, inbound) = queue::channel(cfg.recv_queue);
    let limits = ReadLimits::from(cfg);
    let parts = Parts {
        listener,
        codec: codec.clone(),
        session: session.clone(),
        outbound,
        inbound,
    };
    match conn.io {
        Io::Tcp(stream) => {
            let (rd, wr) = stream.into_split();
            let reader = move || stream_reader(rd, codec, tx, session, limits);
            Box::pin(drive(
                parts,
                StreamSink(wr),
                Some(reader),
                cfg,
                force,
                on_live,
            ))
            .await
        }
        #[cfg(feature = "tls")]
        Io::Tls(stream) => {
            let (rd, wr) = tokio::io::split(*stream);
            let reader = move || stream_reader(rd, codec, tx, session, limits);
            Box::pin(drive(
                parts,
                StreamSink(wr),
                Some(reader),
                cfg,
                force,
                on_live,
            ))
            .await
        }
        #[cfg(feature = "ws")]
        Io::Ws(ws) => {
            use futures_util::StreamExt;
            let (sink, stream) = (*ws).split();
            let reader = move || super::ws::ws_reader(stream, codec, tx, session, limits);
            let sink = super::ws::WsSink::new(sink, cfg.max_frame_len);
            Box::pin(drive(parts, sink, Some(reader), cfg, force, on_live)).await
        }
        Io::Udp(socket) => {
            let sink = UdpSink::connected(socket.clone());
            let reader = move || datagram_reader(socket, codec, tx, session, limits);
            Box::pin(drive(parts, sink, Some(reader), cfg, force, on_live)).await
        }
    }
}
