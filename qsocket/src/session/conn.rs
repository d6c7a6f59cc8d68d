//! An established connection of any transport, and how a session is run over it.

use super::budget::{Mem, Pool};
use super::config::SessionConfig;
use super::endpoint::Transport;
use super::framing::Framing;
use super::handle::Session;
use super::handler::{drive, Parts};
use super::io::{ReadSource, StreamSink};
use super::listener::EventListener;
use super::queue;
use super::reader::{stream_reader, Inbound, ReadLimits};
use super::udp::{datagram_reader, UdpSink};
use crate::Error;
use std::future::Future;
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
    Ws(Box<tokio_tungstenite::WebSocketStream<super::ws::Metered>>),
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

/// Runs one session over `conn` until it closes (see [`drive`]). Each transport's session
/// state is boxed, so a caller's future holds only the largest one's pointer.
pub(crate) async fn run_conn<L, C>(
    conn: Conn,
    listener: L,
    codec: C,
    cfg: &SessionConfig,
    (token, pool): (CancellationToken, Option<&Arc<Pool>>),
    force: &CancellationToken,
    on_live: impl FnOnce(&Session<L::Out>),
) -> Result<(), Error>
where
    L: EventListener,
    C: Framing<L::In, L::Out>,
{
    let Conn {
        io,
        transport,
        local,
        peer,
    } = conn;
    match io {
        Io::Tcp(stream) => {
            let (rd, wr) = stream.into_split();
            let what = (listener, codec, (transport, local, peer), token, pool);
            Box::pin(stream_session(rd, wr, what, cfg, force, on_live)).await
        }
        #[cfg(feature = "tls")]
        Io::Tls(stream) => {
            // A second handle on the socket, to notice a hang-up while the session is not
            // reading (the TLS layer hides the socket once split).
            let probe = super::io::probe_of(stream.get_ref().0);
            let (rd, wr) = tokio::io::split(*stream);
            let rd = super::io::Probed::new(rd, probe);
            let what = (listener, codec, (transport, local, peer), token, pool);
            Box::pin(stream_session(rd, wr, what, cfg, force, on_live)).await
        }
        #[cfg(feature = "ws")]
        Io::Ws(ws) => {
            use futures_util::StreamExt;
            let (parts, tx, session) = parts(
                listener,
                codec.clone(),
                (transport, local, peer),
                (token, pool),
                cfg,
            );
            let mut ws = ws;
            let unclaimed = super::ws::meter(&mut ws, &session, cfg.read_timeout);
            let probe = ws.get_ref().tcp().and_then(super::io::probe_of);
            let (sink, stream) = (*ws).split();
            let limits = ReadLimits::from(cfg);
            let reader =
                move || super::ws::ws_reader(stream, codec, tx, session, limits, probe, unclaimed);
            let sink = super::ws::WsSink::new(sink, cfg.max_frame_len);
            Box::pin(drive(parts, sink, Some(reader), cfg, force, on_live)).await
        }
        Io::Udp(socket) => {
            let (parts, tx, session) = parts(
                listener,
                codec.clone(),
                (transport, local, peer),
                (token, pool),
                cfg,
            );
            let sink = UdpSink::connected(socket.clone());
            let limits = ReadLimits::from(cfg);
            let reader = move || datagram_reader(socket, codec, tx, session, limits);
            Box::pin(drive(parts, sink, Some(reader), cfg, force, on_live)).await
        }
    }
}

/// A session's transport, local and peer addresses.
type Addrs = (Transport, SocketAddr, SocketAddr);

/// The session handle, its queues and the handler's parts.
#[allow(clippy::type_complexity)]
fn parts<L, C>(
    listener: L,
    codec: C,
    (transport, local, peer): Addrs,
    (token, pool): (CancellationToken, Option<&Arc<Pool>>),
    cfg: &SessionConfig,
) -> (Parts<L, C>, queue::Sender<Inbound<L::In>>, Session<L::Out>)
where
    L: EventListener,
{
    let (session, outbound) = Session::new(
        transport,
        local,
        peer,
        cfg.send_queue,
        token,
        mem_of(cfg, pool),
    );
    let (tx, inbound) = queue::channel(cfg.recv_queue);
    let parts = Parts {
        listener,
        codec,
        session: session.clone(),
        outbound,
        inbound,
    };
    (parts, tx, session)
}

/// A new session's byte gauge under `cfg`'s budget, drawing on `pool` beyond its allowance.
pub(crate) fn mem_of(cfg: &SessionConfig, pool: Option<&Arc<Pool>>) -> Mem {
    Mem::new(cfg.session_budget, cfg.session_allowance, pool.cloned())
}

/// The session over a byte stream's two halves (TCP, TLS), unboxed: the server spawns it as
/// the session's task itself, so an idle TCP session is one task plus its reader.
pub(crate) fn stream_session<'a, L, C, R, W>(
    rd: R,
    wr: W,
    (listener, codec, addrs, token, pool): (L, C, Addrs, CancellationToken, Option<&Arc<Pool>>),
    cfg: &'a SessionConfig,
    force: &'a CancellationToken,
    on_live: impl FnOnce(&Session<L::Out>) + 'a,
) -> impl Future<Output = Result<(), Error>> + 'a
where
    L: EventListener,
    C: Framing<L::In, L::Out>,
    R: ReadSource,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (parts, tx, session) = parts(listener, codec.clone(), addrs, (token, pool), cfg);
    let limits = ReadLimits::from(cfg);
    let reader = move || stream_reader(rd, codec, tx, session, limits);
    drive(
        parts,
        StreamSink::new(wr),
        Some(reader),
        cfg,
        force,
        on_live,
    )
}
