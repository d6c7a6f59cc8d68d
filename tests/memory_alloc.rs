//! What a peer that sends only a frame's header costs, counted by a counting allocator (in a
//! test binary of its own, so nothing else allocates meanwhile).

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use qsocket::session::{Ctx, EventListener, Server, Session, Transport};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bytes allocated and not yet freed, by this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: forwards every call unchanged to the system allocator; only counts sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Keeps a handle on every session (to read its byte gauge).
struct Keep(Arc<Mutex<Vec<Session<Bytes>>>>);

impl EventListener for Keep {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_open(&mut self, session: &Session<Bytes>) -> Result<(), qsocket::Error> {
        self.0.lock().expect("lock").push(session.clone());
        Ok(())
    }
    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        ctx.send(msg.freeze());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_announcing_the_largest_frame_reserve_at_most_a_chunk() {
    const PEERS: usize = 100;
    const MAX: usize = 8 * 1024 * 1024;
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let s2 = sessions.clone();
    // tokio-util's LengthDelimitedCodec reserves what a header announces: the session trims it.
    let codec = tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(MAX)
        .new_codec();
    let server = Server::builder(codec, move || Keep(s2.clone()))
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let addr = server.local_addr(Transport::Tcp).expect("tcp");
    let before = LIVE.load(Ordering::SeqCst);
    let mut peers = Vec::new();
    for _ in 0..PEERS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // A header announcing MAX - 1 bytes, and the first few of them.
        s.write_all(&((MAX - 1) as u32).to_be_bytes())
            .await
            .expect("header");
        s.write_all(b"abc").await.expect("some body");
        peers.push(s);
    }
    // Every session has read what its peer sent (7 bytes).
    eventually("every header read", || {
        let s = sessions.lock().expect("lock");
        s.len() == PEERS && s.iter().all(|s| s.stats().bytes_in == 7)
    })
    .await;
    // The live heap settles to session state and small buffers; without trimming what the
    // codec reserves it would hold 100 × 8 MiB.
    let bound = PEERS * 128 * 1024;
    within("the live heap settles under the bound", async {
        loop {
            let used = LIVE.load(Ordering::SeqCst).saturating_sub(before);
            if used < bound {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(peers);
    server.shutdown(Duration::from_secs(5)).await;
}
