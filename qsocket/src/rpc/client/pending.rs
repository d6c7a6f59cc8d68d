//! The calls waiting for a response, per endpoint: a table of slots keyed by slot index plus
//! generation (no hashing), completed where responses are decoded, and a sweeper that ends
//! calls past their deadline (one task per endpoint instead of a timer per call).

use super::super::frame::Frame;
use super::super::status::{Sent, Status};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Where a call stands in its slot.
enum State {
    /// The slot is free.
    Free,
    /// Waiting for the response; the caller's waker once it has polled.
    Waiting(Option<Waker>),
    /// Answered (or failed), not yet taken by the caller.
    Done(Result<Frame, Status>),
}

/// The calls waiting for a response, for all sessions to one endpoint. A response completes
/// its call right where it is decoded, in the session's reader (see [`ClientCodec`]): it is
/// put in the call's slot and the caller woken — no channel, no allocation per call.
pub(crate) struct Pending {
    inner: Mutex<Table>,
    /// Wakes the deadline sweeper when the first call is registered.
    pub(crate) busy: Notify,
    /// Ends the sweeper: cancelled when the endpoint is removed or the client closes.
    pub(crate) stop: tokio_util::sync::CancellationToken,
}

struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots in use (waiting or answered).
    len: usize,
}

struct Slot {
    generation: u32,
    state: State,
    /// When the caller stops waiting.
    deadline: Instant,
    /// The session the request went out on.
    session: u64,
}

impl Table {
    /// The slot of `id`, if it is still that call's.
    fn slot(&mut self, id: u64) -> Option<&mut Slot> {
        let (generation, index) = ((id >> 32) as u32, id as u32 as usize);
        self.slots
            .get_mut(index)
            .filter(|s| s.generation == generation && !matches!(s.state, State::Free))
    }

    fn release(&mut self, id: u64) {
        if let Some(slot) = self.slot(id) {
            slot.state = State::Free;
            self.free.push(id as u32);
            self.len -= 1;
        }
    }
}

impl Pending {
    pub(crate) fn new(stop: tokio_util::sync::CancellationToken) -> Self {
        Pending {
            inner: Mutex::new(Table {
                slots: Vec::new(),
                free: Vec::new(),
                len: 0,
            }),
            busy: Notify::new(),
            stop,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a call on `session`, woken through `waker` when its outcome arrives; its id is
    /// `generation << 32 | slot`.
    pub(crate) fn insert(&self, session: u64, deadline: Instant, waker: Option<Waker>) -> u64 {
        let mut t = self.lock();
        let index = match t.free.pop() {
            Some(i) => i,
            None => {
                t.slots.push(Slot {
                    generation: 0,
                    state: State::Free,
                    session: 0,
                    deadline,
                });
                (t.slots.len() - 1) as u32
            }
        };
        let slot = &mut t.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = State::Waiting(waker);
        slot.session = session;
        slot.deadline = deadline;
        let id = (u64::from(slot.generation) << 32) | u64::from(index);
        t.len += 1;
        let first = t.len == 1;
        drop(t);
        if first {
            self.busy.notify_one();
        }
        id
    }

    /// Ends call `id` with `result` if it is still waiting, and wakes its caller.
    pub(crate) fn complete(&self, id: u64, result: Result<Frame, Status>) {
        let waker = {
            let mut t = self.lock();
            match t.slot(id) {
                Some(slot) => match std::mem::replace(&mut slot.state, State::Done(result)) {
                    State::Waiting(w) => w,
                    // Already answered: keep the first outcome.
                    other => {
                        slot.state = other;
                        None
                    }
                },
                None => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The caller's side: the outcome of call `id` once there is one (the slot is then free).
    pub(crate) fn poll_outcome(
        &self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Frame, Status>> {
        let mut t = self.lock();
        let Some(slot) = t.slot(id) else {
            return Poll::Ready(Err(Status::internal("call lost its slot")));
        };
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Waiting(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                slot.state = State::Waiting(Some(w));
                Poll::Pending
            }
            State::Done(r) => {
                t.free.push(id as u32);
                t.len -= 1;
                Poll::Ready(r)
            }
            State::Free => Poll::Ready(Err(Status::internal("call lost its slot"))),
        }
    }

    /// Gives up call `id` (its caller stopped waiting); `true` if no outcome had arrived.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut t = self.lock();
        let waiting = matches!(t.slot(id).map(|s| &s.state), Some(State::Waiting(_)));
        t.release(id);
        waiting
    }

    /// Ends, with `status`, every waiting call whose slot matches `pred`.
    fn fail_where(&self, pred: impl Fn(&Slot) -> bool, status: &Status) {
        let wakers: Vec<Waker> = {
            let mut t = self.lock();
            let mut wakers = Vec::new();
            for slot in t.slots.iter_mut() {
                if matches!(slot.state, State::Waiting(_)) && pred(slot) {
                    if let State::Waiting(Some(w)) =
                        std::mem::replace(&mut slot.state, State::Done(Err(status.clone())))
                    {
                        wakers.push(w);
                    }
                }
            }
            wakers
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Fails every call pending on `session`.
    pub(crate) fn fail_session(&self, session: u64, status: &Status) {
        self.fail_where(|slot| slot.session == session, status);
    }

    /// Ends every call whose deadline has passed with `deadline_exceeded`.
    pub(crate) fn expire(&self, now: Instant) {
        let st =
            Status::deadline_exceeded("no response within the deadline").with_sent(Sent::Maybe);
        self.fail_where(|slot| slot.deadline <= now, &st);
    }

    /// Whether some call is waiting for a response on `session` (a scan: only asked of a
    /// connection the server is draining).
    pub(crate) fn has_calls_on(&self, session: u64) -> bool {
        self.lock()
            .slots
            .iter()
            .any(|s| s.session == session && matches!(s.state, State::Waiting(_)))
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }
}

/// How often the sweeper looks for calls past their deadline while calls are pending: a call
/// ends at most this much after its deadline (the server enforces the deadline on its side too).
const SWEEP_EVERY: Duration = Duration::from_millis(5);

/// Ends calls whose deadline has passed — one task per endpoint instead of a timer per call.
pub(crate) async fn sweep(pending: Arc<Pending>) {
    let stop = pending.stop.clone();
    loop {
        while pending.len() == 0 {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = pending.busy.notified() => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        pending.expire(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::frame::{encode_frame, kind, FrameCodec, Header, Limits};
    use super::super::super::status::Code;
    use super::*;
    use bytes::BytesMut;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;
    use std::task::Wake;
    use tokio_util::codec::Decoder;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn response(id: u64) -> Frame {
        let mut buf = BytesMut::new();
        let h = Header {
            kind: kind::RESPONSE,
            id,
            ..Header::default()
        };
        encode_frame(&mut buf, &h, &Limits::default(), |_| Ok::<_, ()>(())).expect("encode");
        FrameCodec::new(Limits::default())
            .decode(&mut buf)
            .expect("decode")
            .expect("whole frame")
    }

    #[tokio::test]
    async fn a_sweeper_expires_late_calls_and_ends_with_its_endpoint() {
        let p = Arc::new(Pending::new(tokio_util::sync::CancellationToken::new()));
        let sweeper = tokio::spawn(sweep(p.clone()));
        let id = p.insert(1, Instant::now(), None);
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            std::future::poll_fn(|cx| p.poll_outcome(id, cx)),
        )
        .await
        .expect("expired by the sweeper");
        let st = outcome.expect_err("deadline exceeded");
        assert_eq!(st.code(), Code::DeadlineExceeded);
        p.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), sweeper)
            .await
            .expect("sweeper ends when its endpoint goes")
            .expect("join");
    }

    #[test]
    fn a_slot_takes_one_outcome_wakes_its_caller_and_ignores_stale_ids() {
        let p = Pending::new(tokio_util::sync::CancellationToken::new());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let far = Instant::now() + Duration::from_secs(60);

        let id = p.insert(7, far, None);
        assert!(p.poll_outcome(id, &mut cx).is_pending());
        p.complete(id, Ok(response(id)));
        p.complete(id, Err(Status::internal("second outcome is ignored")));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        match p.poll_outcome(id, &mut cx) {
            Poll::Ready(Ok(f)) => assert_eq!(f.id, id),
            other => panic!("expected the response, got {other:?}"),
        }
        assert_eq!(p.len(), 0, "slot free once taken");

        // The slot is reused with a new generation: the old id no longer reaches it.
        let id2 = p.insert(7, far, None);
        assert_eq!(id2 as u32, id as u32);
        assert_ne!(id2, id);
        p.complete(id, Ok(response(id)));
        assert!(
            p.poll_outcome(id2, &mut cx).is_pending(),
            "stale id ignored"
        );

        // A closing session fails its waiting calls; giving up a call frees its slot.
        let other = p.insert(8, far, None);
        p.fail_session(7, &Status::unavailable("gone"));
        match p.poll_outcome(id2, &mut cx) {
            Poll::Ready(Err(st)) => assert_eq!(st.code(), Code::Unavailable),
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert!(p.remove(other), "still waiting when given up");
        assert_eq!(p.len(), 0);
        p.expire(Instant::now() + Duration::from_secs(120));
        assert_eq!(p.len(), 0);
    }
}
