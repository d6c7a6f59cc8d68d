//! Byte budgets: how much memory a peer can make a session (and a server) hold.
//!
//! Each session counts, in one gauge, every byte it holds on its peer's behalf: the partial
//! frame being read, decoded frames waiting for the listener, frames a listener keeps while it
//! works on them (an RPC server's requests in flight, see [`Ctx::retain`]), and encoded output
//! waiting for a slow peer to read it. Its reader reads only while the gauge is under the
//! session's budget (backpressure down to the peer), and never more than the room left.
//!
//! Above a small per-session allowance, bytes are also drawn from the server's shared budget.
//! While that is spent, sessions beyond their allowance wait (their large frames wait) and
//! sessions within it keep reading: small traffic keeps flowing.
//!
//! [`Ctx::retain`]: super::Ctx::retain

use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A server's shared budget: bytes its sessions hold beyond their allowances.
pub(crate) struct Pool {
    /// Signed: a session's release can reach it just before the matching charge of another
    /// thread's update of the same gauge; reads clamp at 0.
    used: AtomicIsize,
    max: usize,
    /// Readers waiting for room.
    waiters: Mutex<Vec<Waker>>,
    /// Whether `waiters` may be non-empty (releases skip the lock otherwise).
    waiting: AtomicBool,
}

impl Pool {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Pool {
            used: AtomicIsize::new(0),
            max,
            waiters: Mutex::new(Vec::new()),
            waiting: AtomicBool::new(false),
        })
    }

    /// Bytes drawn now.
    pub(crate) fn used(&self) -> usize {
        usize::try_from(self.used.load(Ordering::Relaxed)).unwrap_or(0)
    }

    fn add(&self, n: usize) {
        self.used
            .fetch_add(isize::try_from(n).unwrap_or(isize::MAX), Ordering::AcqRel);
    }

    fn sub(&self, n: usize) {
        self.used
            .fetch_sub(isize::try_from(n).unwrap_or(isize::MAX), Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            let waiters = {
                let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
                self.waiting.store(false, Ordering::SeqCst);
                std::mem::take(&mut *w)
            };
            for w in waiters {
                w.wake();
            }
        }
    }

    fn free(&self) -> usize {
        let used = usize::try_from(self.used.load(Ordering::SeqCst)).unwrap_or(0);
        self.max.saturating_sub(used)
    }

    fn register(&self, waker: &Waker) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if !w.iter().any(|x| x.will_wake(waker)) {
            w.push(waker.clone());
        }
        self.waiting.store(true, Ordering::SeqCst);
    }
}

/// One session's gauge and limits.
pub(crate) struct Mem {
    held: AtomicUsize,
    limit: usize,
    allowance: usize,
    pool: Option<Arc<Pool>>,
    /// The reader, while it waits for room.
    reader: AtomicWaker,
    paused: AtomicBool,
    /// The peer hung up while the session was not reading.
    gone: AtomicBool,
}

impl Mem {
    /// A gauge allowing `limit` bytes, of which those beyond `allowance` are drawn from `pool`.
    pub(crate) fn new(limit: usize, allowance: usize, pool: Option<Arc<Pool>>) -> Self {
        Mem {
            held: AtomicUsize::new(0),
            limit,
            allowance: allowance.min(limit),
            pool,
            reader: AtomicWaker::new(),
            paused: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        }
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn over(&self, held: usize) -> usize {
        held.saturating_sub(self.allowance)
    }

    /// Counts `n` more bytes held.
    pub(crate) fn charge(&self, n: usize) {
        if n == 0 {
            return;
        }
        let prev = self.held.fetch_add(n, Ordering::AcqRel);
        if let Some(p) = &self.pool {
            let d = self.over(prev.saturating_add(n)) - self.over(prev);
            if d > 0 {
                p.add(d);
            }
        }
    }

    /// Counts `n` bytes fewer (never below zero), waking a reader that waits for room.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let prev = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                Some(h.saturating_sub(n))
            })
            .unwrap_or_else(|h| h);
        self.released(prev, prev.saturating_sub(n));
    }

    /// Counts nothing held any more (the session has ended).
    pub(crate) fn release_all(&self) {
        let prev = self.held.swap(0, Ordering::AcqRel);
        self.released(prev, 0);
    }

    fn released(&self, prev: usize, now: usize) {
        if let Some(p) = &self.pool {
            let d = self.over(prev) - self.over(now);
            if d > 0 {
                p.sub(d);
            }
        }
        if self.paused.load(Ordering::SeqCst) {
            self.reader.wake();
        }
    }

    /// How many bytes the reader may take in now (0: none).
    pub(crate) fn room(&self) -> usize {
        let held = self.held.load(Ordering::SeqCst);
        let room = self.limit.saturating_sub(held);
        match &self.pool {
            None => room,
            Some(p) => room.min(self.allowance.saturating_sub(held).saturating_add(p.free())),
        }
    }

    /// Whether what stops the reader is the server's shared budget (spent by all sessions)
    /// rather than this session's own: its peer then waits for others, not for its listener.
    pub(crate) fn pool_bound(&self) -> bool {
        let held = self.held.load(Ordering::SeqCst);
        held < self.limit
            && held >= self.allowance
            && self.pool.as_ref().is_some_and(|p| p.free() == 0)
    }

    /// The room the reader has, waiting (without reading) until there is some.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<usize> {
        let room = self.room();
        if room > 0 {
            self.resume();
            return Poll::Ready(room);
        }
        self.reader.register(cx.waker());
        self.paused.store(true, Ordering::SeqCst);
        if let Some(p) = &self.pool {
            p.register(cx.waker());
        }
        // Released meanwhile?
        let room = self.room();
        if room > 0 {
            self.resume();
            return Poll::Ready(room);
        }
        Poll::Pending
    }

    /// Marks that the reader takes in bytes again.
    fn resume(&self) {
        if self.paused.load(Ordering::Relaxed) {
            self.paused.store(false, Ordering::Relaxed);
        }
    }

    /// Records that the peer hung up while the session was not reading.
    pub(crate) fn set_gone(&self) {
        self.gone.store(true, Ordering::Release);
    }

    /// Whether the peer hung up while the session was not reading.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        self.release_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_is_free_and_the_rest_draws_on_the_pool() {
        let pool = Pool::new(100);
        let a = Mem::new(80, 10, Some(pool.clone()));
        let b = Mem::new(80, 10, Some(pool.clone()));
        a.charge(8);
        assert_eq!(pool.used(), 0, "within the allowance");
        a.charge(12);
        assert_eq!(pool.used(), 10);
        assert_eq!(a.room(), 60, "session limit 80 - 20");
        b.charge(100);
        assert_eq!(pool.used(), 100);
        assert_eq!(a.room(), 0, "pool spent, a is past its allowance");
        assert_eq!(
            Mem::new(80, 10, Some(pool.clone())).room(),
            10,
            "allowance still open"
        );
        b.release(50);
        assert_eq!(pool.used(), 50);
        assert_eq!(a.room(), 50);
        a.release(1000);
        assert_eq!(a.held(), 0);
        assert_eq!(pool.used(), 40);
        drop(b);
        assert_eq!(pool.used(), 0, "a dropped gauge gives back what it drew");
    }

    #[test]
    fn a_paused_reader_is_woken_by_a_release() {
        use std::sync::atomic::AtomicUsize;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let m = Mem::new(10, 10, None);
        m.charge(10);
        assert!(m.poll_room(&mut cx).is_pending());
        m.release(3);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(m.poll_room(&mut cx), Poll::Ready(3));
    }
}
