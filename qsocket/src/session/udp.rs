//! UDP: one datagram per frame. A client session is a connected socket with its own reader; a
//! server has one socket whose dispatcher task reads every datagram and routes it, decoded, to
//! the session of its peer address (creating it on first contact, up to the UDP session limit).

use super::budget::Mem;
use super::handle::Session;
use super::io::FrameSink;
use super::queue;
use super::reader::{decode_all, wait_for_budget, Inbound, ReadLimits};
use crate::Error;
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::UdpSocket;
use tokio_util::codec::Decoder;

/// The largest UDP payload over IPv4 (65,507 bytes): the largest frame a UDP session sends or
/// receives, since each frame travels as one datagram.
///
/// A frame encoded larger than this (by [`Ctx::send`](super::Ctx::send) or
/// [`Ctx::send_raw`](super::Ctx::send_raw)) is not sent: it is dropped and reported to
/// [`on_error`](super::EventListener::on_error) as [`Error::FrameTooLarge`], and the session
/// goes on. A protocol layer that must answer every request can check its frame against this
/// limit before sending and send a smaller reply instead.
pub const MAX_DATAGRAM: usize = 65_507;

/// Sends each frame as one datagram.
pub(crate) struct UdpSink {
    socket: Arc<UdpSocket>,
    /// `None` for a connected socket.
    peer: Option<SocketAddr>,
    /// Datagrams of the write under way already sent.
    sent: usize,
    /// Waiting for the shared socket to take datagrams again (see `poll_write`).
    ready: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send>>>,
}

impl UdpSink {
    pub(crate) fn connected(socket: Arc<UdpSocket>) -> Self {
        UdpSink {
            socket,
            peer: None,
            sent: 0,
            ready: None,
        }
    }

    pub(crate) fn to_peer(socket: Arc<UdpSocket>, peer: SocketAddr) -> Self {
        UdpSink {
            socket,
            peer: Some(peer),
            sent: 0,
            ready: None,
        }
    }
}

impl FrameSink for UdpSink {
    const MESSAGES: bool = true;

    fn max_message(&self) -> usize {
        MAX_DATAGRAM
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        bounds: &mut Vec<usize>,
    ) -> Poll<Result<(), Error>> {
        // `sent` datagrams are already out.
        while let Some(&end) = bounds.get(self.sent) {
            let start = self.sent.checked_sub(1).map_or(0, |i| bounds[i]);
            let datagram = &buf[start..end];
            match self.peer {
                None => {
                    std::task::ready!(self.socket.poll_send(cx, datagram))?;
                }
                // A server's sessions share one socket, and its `poll_send_to` keeps a single
                // waker: a session waiting there could be forgotten when another waits too.
                // So: try to send, and when the socket is full wait through `writable()`,
                // which wakes every waiter (boxed: only under backpressure).
                Some(p) => loop {
                    if let Some(ready) = self.ready.as_mut() {
                        std::task::ready!(ready.as_mut().poll(cx))?;
                        self.ready = None;
                    }
                    match self.socket.try_send_to(datagram, p) {
                        Ok(_) => break,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            let socket = self.socket.clone();
                            self.ready = Some(Box::pin(async move { socket.writable().await }));
                        }
                        Err(e) => return Poll::Ready(Err(e.into())),
                    }
                },
            }
            self.sent += 1;
        }
        self.sent = 0;
        buf.clear();
        bounds.clear();
        Poll::Ready(Ok(()))
    }

    async fn shutdown(&mut self, _why: Option<&Error>) {}
}

/// Decodes one datagram for a server session without waiting: every frame in it, then what the
/// codec makes of the rest at end of input. Frames that do not fit in the handler's queue or
/// in the session's byte budget are dropped: one slow peer must not stall the socket every
/// peer shares, and UDP is lossy anyway.
///
/// Returns `(frames, dropped, error)`.
pub(crate) fn decode_datagram<D>(
    codec: &mut D,
    mut buf: BytesMut,
    tx: &queue::Sender<Inbound<D::Item>>,
    mem: &Mem,
    read_at: u64,
) -> (u64, u64, Option<Error>)
where
    D: Decoder<Error: Into<crate::error::BoxError> + Send>,
{
    let (mut frames, mut dropped) = (0, 0);
    if mem.room() < buf.len() {
        return (0, 1, None);
    }
    while !buf.is_empty() {
        let before = buf.len();
        let item = match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) => return (frames, dropped, Some(Error::Decode(e.into()))),
        };
        let len = before.saturating_sub(buf.len());
        mem.charge(len);
        match tx.try_send(Inbound::Msg(item, read_at, len)) {
            Ok(()) => frames += 1,
            Err(queue::TrySendError::Full(_)) => {
                mem.release(len);
                dropped += 1
            }
            Err(queue::TrySendError::Closed(_)) => {
                mem.release(len);
                break;
            }
        }
    }
    (frames, dropped, None)
}

/// The reader task of a UDP client session (a connected socket).
pub(crate) async fn datagram_reader<D, O>(
    socket: Arc<UdpSocket>,
    mut codec: D,
    tx: queue::Sender<Inbound<D::Item>>,
    session: Session<O>,
    limits: ReadLimits,
) where
    D: Decoder<Error: Into<crate::error::BoxError> + Send> + Send,
    D::Item: Send,
    O: Send + 'static,
{
    let token = session.token().clone();
    let mut scratch: Vec<u8> = Vec::new();
    loop {
        // Datagrams wait in the socket (or are dropped by the kernel) while the budget is spent.
        if session.mem().room() == 0 && !Box::pin(wait_for_budget(&session, None)).await {
            return;
        }
        let recv = async {
            loop {
                socket.readable().await?;
                if scratch.is_empty() {
                    scratch = vec![0; MAX_DATAGRAM + 1];
                }
                match socket.try_recv(&mut scratch) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        let n = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            r = recv => match r {
                Ok(n) => n,
                Err(e) => {
                    // On a connected socket this is how an ICMP "port unreachable" shows.
                    let _ = tx.send(Inbound::Err(e.into())).await;
                    return;
                }
            },
        };
        let stats = session.stats_ref();
        stats.add_in(0, n as u64);
        let at = stats.touch();
        if n > limits.max_frame_len {
            let err = Error::FrameTooLarge {
                len: n,
                max: limits.max_frame_len,
            };
            let _ = tx.send(Inbound::Err(err)).await;
            return;
        }
        let mut buf = BytesMut::from(&scratch[..n]);
        session.mem().charge(n);
        let go_on = decode_all(&mut codec, &mut buf, &tx, &session, true, at, None, &mut 0).await;
        session.mem().release(buf.len());
        if !go_on {
            return;
        }
    }
}
