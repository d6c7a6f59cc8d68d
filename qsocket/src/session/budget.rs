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
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};

/// How far past its budget a pool may be (reads racing each other) and still give a new
/// overdraft.
const OVERDRAFT_SLACK: usize = 128 * 1024;

/// Ids of gauges (for the pool's overdraft).
static NEXT_GAUGE: AtomicU64 = AtomicU64::new(1);
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
    /// The one session (its gauge's id; 0: none) whose frame still arriving may grow while
    /// the budget is spent: partial frames that each hold part of a spent budget would
    /// otherwise wait for one another forever. One at a time, in turn.
    overdraft: AtomicU64,
}

impl Pool {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Pool {
            used: AtomicIsize::new(0),
            max,
            waiters: Mutex::new(Vec::new()),
            waiting: AtomicBool::new(false),
            overdraft: AtomicU64::new(0),
        })
    }

    /// Takes (or keeps) the overdraft for gauge `id`. A new overdraft is given only once what
    /// the last one drew beyond the budget has been given back (give or take a couple of
    /// reads), so at most one frame's worth is ever past it.
    fn take_overdraft(&self, id: u64) -> bool {
        let holder = self.overdraft.load(Ordering::Acquire);
        if holder == id {
            return true;
        }
        let used = usize::try_from(self.used.load(Ordering::SeqCst)).unwrap_or(0);
        holder == 0
            && used <= self.max.saturating_add(OVERDRAFT_SLACK)
            && self
                .overdraft
                .compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Gives the overdraft back (if gauge `id` holds it) and wakes the waiting readers.
    fn give_overdraft(&self, id: u64) {
        if self
            .overdraft
            .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake_all();
        }
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
        self.wake_all();
    }

    fn wake_all(&self) {
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
    id: u64,
    /// A frame is part way in (set by the reader).
    partial: AtomicBool,
    /// This gauge holds its pool's overdraft.
    overdrawn: AtomicBool,
    /// The session has ended: nothing more is counted (a reader being aborted may still try).
    ended: AtomicBool,
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
            id: NEXT_GAUGE.fetch_add(1, Ordering::Relaxed),
            partial: AtomicBool::new(false),
            overdrawn: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        }
    }

    /// The reader says whether a frame is part way in. Once none is, an overdraft this
    /// session held goes to the next session waiting.
    pub(crate) fn set_partial(&self, partial: bool) {
        if self.partial.load(Ordering::Relaxed) != partial {
            self.partial.store(partial, Ordering::SeqCst);
        }
        if !partial && self.overdrawn.load(Ordering::Relaxed) {
            self.end_overdraft();
        }
    }

    fn end_overdraft(&self) {
        self.overdrawn.store(false, Ordering::SeqCst);
        if let Some(p) = &self.pool {
            p.give_overdraft(self.id);
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
        if n == 0 || self.ended.load(Ordering::Acquire) {
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

    /// Counts nothing held any more, and nothing from now on (the session has ended).
    pub(crate) fn release_all(&self) {
        self.ended.store(true, Ordering::Release);
        let prev = self.held.swap(0, Ordering::AcqRel);
        self.released(prev, 0);
        self.partial.store(false, Ordering::SeqCst);
        self.end_overdraft();
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

    /// How many bytes the reader may take in now (0: none). Past its allowance a session
    /// draws on the shared budget; while that is spent, the session whose frame is part way in
    /// and that holds the pool's overdraft (one at a time) may still complete it, within its
    /// own budget.
    pub(crate) fn room(&self) -> usize {
        let held = self.held.load(Ordering::SeqCst);
        let room = self.limit.saturating_sub(held);
        let Some(p) = &self.pool else {
            return room;
        };
        if room == 0 && self.overdrawn.load(Ordering::Relaxed) {
            // Paused by its own budget: it cannot use the overdraft; the next session may.
            self.end_overdraft();
        }
        let shared = self.allowance.saturating_sub(held).saturating_add(p.free());
        if shared > 0 {
            return room.min(shared);
        }
        if room > 0 && self.partial.load(Ordering::SeqCst) && p.take_overdraft(self.id) {
            self.overdrawn.store(true, Ordering::SeqCst);
            return room;
        }
        0
    }

    /// Whether what stops the reader is the server's shared budget (spent by all sessions)
    /// rather than this session's own: its peer then waits for others, not for its listener.
    pub(crate) fn pool_bound(&self) -> bool {
        let held = self.held.load(Ordering::SeqCst);
        held < self.limit
            && held >= self.allowance
            && self.pool.as_ref().is_some_and(|p| p.free() == 0)
            && !self.overdrawn.load(Ordering::SeqCst)
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

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("used", &self.used())
            .field("max", &self.max)
            .finish()
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
    fn one_partial_frame_at_a_time_may_overdraw_a_spent_pool() {
        const K: usize = 1 << 20; // well above the overdraft's slack
        let pool = Pool::new(100 * K);
        let a = Mem::new(1000 * K, 10 * K, Some(pool.clone()));
        let b = Mem::new(1000 * K, 10 * K, Some(pool.clone()));
        a.charge(60 * K);
        b.charge(60 * K);
        assert_eq!(pool.used(), 100 * K);
        assert_eq!(a.room(), 0, "no frame part way in: wait");
        a.set_partial(true);
        b.set_partial(true);
        assert_eq!(a.room(), 940 * K, "a takes the overdraft");
        assert_eq!(b.room(), 0, "one at a time");
        a.charge(500 * K);
        assert_eq!(pool.used(), 600 * K);
        a.set_partial(false);
        assert_eq!(
            b.room(),
            0,
            "a's frame is in, but still holds what it overdrew"
        );
        a.release(500 * K);
        assert_eq!(b.room(), 940 * K, "paid back: b's turn");
        a.release(60 * K);
        drop(b);
        assert_eq!(pool.used(), 0);
        assert_eq!(
            pool.overdraft.load(Ordering::SeqCst),
            0,
            "given back with the gauge"
        );
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
