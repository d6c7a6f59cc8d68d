//! A bounded multi-producer queue that allocates nothing while empty: a mutex-protected
//! `VecDeque` that the receiver swaps out whole, so it locks once per batch, not per message.
//! Senders wait only while it is at capacity; the receiver wakes them when it takes messages out
//! of a full queue. An idle session's queues hold no buffer (tokio's channels allocate a
//! 32-slot block up front, per channel).

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;

/// Batches larger than this are not kept for reuse once drained.
const KEEP_CAPACITY: usize = 16;

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver is closed or gone.
    closed: bool,
    senders: usize,
    rx_waker: Option<Waker>,
    /// How many messages the receiver took last time: an empty buffer is grown to that at
    /// once instead of doubling step by step (one allocation per burst, not several).
    last: usize,
}

impl<T> State<T> {
    /// Room for the next message.
    fn room(&mut self, cap: usize) {
        if self.queue.capacity() == 0 {
            self.queue.reserve(self.last.clamp(1, cap));
        }
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Mirrors `State::closed`, for lock-free checks.
    closed: AtomicBool,
    cap: usize,
    /// Woken when room appears or the receiver goes away.
    space: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half (cloneable).
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.shared.lock();
            st.senders -= 1;
            if st.senders == 0 {
                st.rx_waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The receiving half.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The batch taken out of the shared queue, handed out one by one.
    batch: VecDeque<T>,
}

/// Why `try_send` did not queue a message; holds it.
pub(crate) enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// A queue holding at most `cap` messages (not counting a batch the receiver has taken out).
pub(crate) fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            closed: false,
            senders: 1,
            rx_waker: None,
            last: 0,
        }),
        closed: AtomicBool::new(false),
        cap: cap.max(1),
        space: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            batch: VecDeque::new(),
        },
    )
}

impl<T> Sender<T> {
    /// Queues `msg` if there is room: `Ok`, or gives it back with whether the queue was full.
    fn push(&self, msg: T) -> Result<(), (T, bool)> {
        let st = self.shared.lock();
        if st.closed {
            return Err((msg, false));
        }
        self.enqueue(st, msg)
    }

    /// Queues what `write` makes, if there is room, under one lock. `write` is given the last
    /// message still queued (the receiver has not taken it yet), when there is one: it may
    /// add to it and return `None`, or return a message of its own to queue. Fails with the
    /// message `write` made (`None` if it was not called) and whether the queue was full.
    pub(crate) fn push_with(
        &self,
        write: impl FnOnce(Option<&mut T>) -> Option<T>,
    ) -> Result<(), (Option<T>, bool)> {
        let mut st = self.shared.lock();
        if st.closed {
            return Err((None, false));
        }
        let Some(msg) = write(st.queue.back_mut()) else {
            return Ok(());
        };
        self.enqueue(st, msg).map_err(|(m, full)| (Some(m), full))
    }

    /// Queues `msg` under the lock `st` if there is room, then wakes the receiver (outside
    /// the lock) when it is the first message.
    fn enqueue(&self, mut st: MutexGuard<'_, State<T>>, msg: T) -> Result<(), (T, bool)> {
        if st.queue.len() >= self.shared.cap {
            return Err((msg, true));
        }
        st.room(self.shared.cap);
        st.queue.push_back(msg);
        let waker = if st.queue.len() == 1 {
            st.rx_waker.take()
        } else {
            None
        };
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `msg`, waiting while the queue is full; gives it back if the receiver is gone.
    pub(crate) async fn send(&self, msg: T) -> Result<(), T> {
        // The usual case first: room now, no waiter to register.
        let mut msg = match self.push(msg) {
            Ok(()) => return Ok(()),
            Err((m, false)) => return Err(m),
            Err((m, true)) => m,
        };
        loop {
            let mut room = pin!(self.shared.space.notified());
            room.as_mut().enable();
            match self.push(msg) {
                Ok(()) => return Ok(()),
                Err((m, false)) => return Err(m),
                Err((m, true)) => msg = m,
            }
            room.await;
        }
    }

    /// Moves messages from `next` into the queue under one lock, while there is room: the
    /// reader hands over every frame of a read this way. Returns `Ok(true)` once `next` is
    /// exhausted, `Ok(false)` if the queue filled first (call [`wait_for_room`] and go on),
    /// `Err(())` if the receiver is gone. `next` is only called when there is room.
    ///
    /// [`wait_for_room`]: Sender::wait_for_room
    pub(crate) fn push_from(&self, next: &mut dyn FnMut() -> Option<T>) -> Result<bool, ()> {
        let mut st = self.shared.lock();
        if st.closed {
            return Err(());
        }
        let mut done = false;
        while st.queue.len() < self.shared.cap {
            match next() {
                Some(msg) => {
                    st.room(self.shared.cap);
                    st.queue.push_back(msg);
                    if st.queue.len() == 1 {
                        // Woken at the first message, not after the last, so that on a
                        // one-thread runtime the receiver is scheduled behind the tasks `next`
                        // woke so far and ahead of those it wakes later (a codec that
                        // completes calls as it decodes uses this). Woken outside the lock.
                        if let Some(w) = st.rx_waker.take() {
                            drop(st);
                            w.wake();
                            st = self.shared.lock();
                            if st.closed {
                                return Err(());
                            }
                        }
                    }
                }
                None => {
                    done = true;
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Waits until the queue has room (or the receiver is gone).
    pub(crate) async fn wait_for_room(&self) {
        let mut room = pin!(self.shared.space.notified());
        room.as_mut().enable();
        {
            let st = self.shared.lock();
            if st.closed || st.queue.len() < self.shared.cap {
                return;
            }
        }
        room.await;
    }

    /// Queues `msg` if there is room now.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.push(msg).map_err(|(m, full)| {
            if full {
                TrySendError::Full(m)
            } else {
                TrySendError::Closed(m)
            }
        })
    }

    /// Whether the receiver is gone or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl<T> Receiver<T> {
    /// Moves everything queued into `batch`; `false` if there was nothing.
    fn refill(&mut self) -> bool {
        let was_full = {
            let mut st = self.shared.lock();
            if st.queue.is_empty() {
                return false;
            }
            let full = st.queue.len() >= self.shared.cap;
            st.last = st.queue.len();
            std::mem::swap(&mut st.queue, &mut self.batch);
            full
        };
        if was_full {
            self.shared.space.notify_waiters();
        }
        true
    }

    fn next(&mut self) -> Option<T> {
        let m = self.batch.pop_front();
        if self.batch.is_empty() && self.batch.capacity() > KEEP_CAPACITY {
            // A burst made it large: do not keep that much memory for a quiet session.
            self.batch = VecDeque::new();
        }
        m
    }

    /// Waits until a message is queued, without taking it: `true` when
    /// [`try_recv`](Self::try_recv) will give one, `false` once every sender is gone and the
    /// queue is empty. (A caller that takes messages in a loop holds no message across its
    /// wait this way.)
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.batch.is_empty() && !self.refill() {
            let mut st = self.shared.lock();
            if !st.queue.is_empty() {
                drop(st);
                self.refill();
            } else if st.senders == 0 {
                return Poll::Ready(false);
            } else {
                // Going idle: give the drained batch's buffer back to the queue (if the queue
                // has none), so an idle session keeps one buffer, not two, and the next
                // message needs no allocation.
                if st.queue.capacity() == 0 && self.batch.capacity() > 0 {
                    std::mem::swap(&mut st.queue, &mut self.batch);
                }
                match &st.rx_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.rx_waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        }
        Poll::Ready(true)
    }

    /// Polls for the next message; `None` once every sender is gone and the queue is empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.poll_ready(cx)
            .map(|ready| if ready { self.next() } else { None })
    }

    /// The next message if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        if self.batch.is_empty() && !self.refill() {
            return None;
        }
        self.next()
    }

    /// Waits for the next message.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Refuses further messages (those queued can still be taken) and wakes waiting senders.
    pub(crate) fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.closed.store(true, Ordering::Release);
        self.shared.space.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn push_with_adds_to_the_last_queued_message_or_queues_its_own() {
        let (tx, mut rx) = channel::<Vec<u8>>(2);
        // Nothing queued: the writer is given nothing to add to.
        assert!(tx
            .push_with(|last| {
                assert!(last.is_none());
                Some(vec![1])
            })
            .is_ok());
        // Added to the message still queued: nothing new is queued.
        assert!(tx
            .push_with(|last| {
                last.expect("queued").push(2);
                None
            })
            .is_ok());
        assert!(tx.push_with(|_| Some(vec![3])).is_ok());
        // Full: the message made is given back.
        match tx.push_with(|_| Some(vec![4])) {
            Err((Some(m), true)) => assert_eq!(m, vec![4]),
            _ => panic!("expected full"),
        }
        assert_eq!(rx.recv().await, Some(vec![1, 2]));
        assert_eq!(rx.recv().await, Some(vec![3]));
        // Taken by the receiver: the next writer starts a message of its own.
        assert!(tx
            .push_with(|last| {
                assert!(last.is_none());
                Some(vec![5])
            })
            .is_ok());
        assert_eq!(rx.recv().await, Some(vec![5]));
        drop(rx);
        // Closed: the writer is not called.
        assert!(matches!(
            tx.push_with(|_| unreachable!("closed")),
            Err((None, false))
        ));
    }

    #[tokio::test]
    async fn bounded_waits_for_room_and_fails_when_closed() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.try_send(1).ok().expect("room");
        tx.send(2).await.expect("room");
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(3).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "waits while full");
        assert_eq!(rx.recv().await, Some(1));
        waiting
            .await
            .expect("join")
            .expect("sent after room appeared");
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        tx.try_send(4).ok().expect("room");
        tx.try_send(5).ok().expect("room");
        let tx3 = tx.clone();
        let blocked = tokio::spawn(async move { tx3.send(6).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(
            blocked.await.expect("join"),
            Err(6),
            "a closed queue wakes its waiters"
        );
        assert!(matches!(tx.try_send(7), Err(TrySendError::Closed(7))));
    }
}
