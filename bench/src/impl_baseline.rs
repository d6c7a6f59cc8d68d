//! The practical limit: a minimal hand-written tokio request/response over one connection.
//! Frames are `[u32 len][u64 request id][payload]` (len counts id + payload). Client: a pending
//! map (id → oneshot) shared by all callers, one reader task (8 KiB reserved before each read),
//! one writer task that drains its queue with `recv_many` into one write.
//! Server: per connection one reader that answers each frame inline through one batching
//! writer task.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Errors of the benchmark implementations.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Takes every whole frame out of `buf`: `(id, payload)`.
fn frames(buf: &mut BytesMut, mut each: impl FnMut(u64, Bytes)) {
    while buf.len() >= 4 {
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return;
        }
        buf.advance(4);
        let mut frame = buf.split_to(len).freeze();
        let id = frame.get_u64();
        each(id, frame);
    }
}

fn encode(id: u64, payload: &[u8], out: &mut BytesMut) {
    out.put_u32((8 + payload.len()) as u32);
    out.put_u64(id);
    out.put_slice(payload);
}

/// Frames a writer takes off its queue at once.
const DRAIN: usize = 256;

/// A writer task: drains what is queued (`recv_many`: one lock for the batch) into one write.
async fn writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<BytesMut>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut batch = Vec::with_capacity(DRAIN);
    while rx.recv_many(&mut batch, DRAIN).await > 0 {
        for frame in batch.drain(..) {
            buf.extend_from_slice(&frame);
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
}

/// Reads once into `buf`, with 8 KiB of room reserved first (so a read never comes up short
/// for want of space).
async fn read_more(rd: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut BytesMut) -> bool {
    buf.reserve(8 * 1024);
    matches!(rd.read_buf(buf).await, Ok(n) if n > 0)
}

/// Serves the echo on `listener` until the process exits.
pub async fn serve(listener: TcpListener) -> Result<(), Error> {
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let (mut rd, wr) = stream.into_split();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(writer(wr, rx));
            let mut buf = BytesMut::with_capacity(8 * 1024);
            loop {
                if !read_more(&mut rd, &mut buf).await {
                    return;
                }
                frames(&mut buf, |id, payload| {
                    let mut out = BytesMut::with_capacity(12 + payload.len());
                    encode(id, &payload, &mut out);
                    let _ = tx.send(out);
                });
            }
        });
    }
}

/// One connection shared by every caller.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    pending: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    next: AtomicU64,
    tx: mpsc::UnboundedSender<BytesMut>,
}

impl Client {
    /// Connects one connection.
    pub async fn connect(addr: SocketAddr) -> Result<Client, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(wr, rx));
        let inner = Arc::new(Inner {
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            tx,
        });
        let reader_inner = inner.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(8 * 1024);
            loop {
                if !read_more(&mut rd, &mut buf).await {
                    break;
                }
                frames(&mut buf, |id, payload| {
                    let waiter = reader_inner.pending.lock().expect("lock").remove(&id);
                    if let Some(w) = waiter {
                        let _ = w.send(payload);
                    }
                });
            }
            reader_inner.pending.lock().expect("lock").clear();
        });
        Ok(Client { inner })
    }

    /// One call.
    pub async fn call(&self, payload: Bytes) -> Result<Bytes, Error> {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().expect("lock").insert(id, tx);
        let mut out = BytesMut::with_capacity(12 + payload.len());
        encode(id, &payload, &mut out);
        self.inner.tx.send(out).map_err(|_| "connection closed")?;
        Ok(rx.await?)
    }
}
