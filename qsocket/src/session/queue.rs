//! A bounded multi-producer queue that is cheap per message: tokio's unbounded channel (a few
//! atomic operations per message, no semaphore) plus a counter of queued messages. Senders
//! wait only while it is at capacity; the receiver wakes them when it takes a message out of a
//! full queue.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, Notify};

struct Shared {
    /// Messages queued or being queued.
    len: AtomicUsize,
    cap: usize,
    /// Woken when room appears or the receiver goes away.
    space: Notify,
}

/// The sending half (cloneable).
pub(crate) struct Sender<T> {
    tx: mpsc::UnboundedSender<T>,
    shared: Arc<Shared>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The receiving half.
pub(crate) struct Receiver<T> {
    rx: mpsc::UnboundedReceiver<T>,
    shared: Arc<Shared>,
}

/// Why `try_send` did not queue a message; holds it.
pub(crate) enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// A queue holding at most `cap` messages.
pub(crate) fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        len: AtomicUsize::new(0),
        cap: cap.max(1),
        space: Notify::new(),
    });
    (
        Sender {
            tx,
            shared: shared.clone(),
        },
        Receiver { rx, shared },
    )
}

impl<T> Sender<T> {
    /// Takes a slot if one is free.
    fn reserve(&self) -> bool {
        let s = &self.shared;
        let mut n = s.len.load(Ordering::Relaxed);
        while n < s.cap {
            match s
                .len
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    fn push(&self, msg: T) -> Result<(), T> {
        self.tx.send(msg).map_err(|e| {
            self.shared.len.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }

    /// Queues `msg`, waiting while the queue is full; gives it back if the receiver is gone.
    pub(crate) async fn send(&self, msg: T) -> Result<(), T> {
        loop {
            if self.tx.is_closed() {
                return Err(msg);
            }
            if self.reserve() {
                return self.push(msg);
            }
            let mut room = pin!(self.shared.space.notified());
            room.as_mut().enable();
            if self.tx.is_closed() || self.shared.len.load(Ordering::Acquire) < self.shared.cap {
                continue;
            }
            room.await;
        }
    }

    /// Queues `msg` if there is room now.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        if self.tx.is_closed() {
            return Err(TrySendError::Closed(msg));
        }
        if !self.reserve() {
            return Err(TrySendError::Full(msg));
        }
        self.push(msg).map_err(TrySendError::Closed)
    }

    /// Whether the receiver is gone or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl<T> Receiver<T> {
    fn taken(&self) {
        let s = &self.shared;
        if s.len.fetch_sub(1, Ordering::AcqRel) >= s.cap {
            s.space.notify_waiters();
        }
    }

    /// Polls for the next message; `None` once every sender is gone and the queue is empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &r {
            self.taken();
        }
        r
    }

    /// The next message if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        let m = self.rx.try_recv().ok()?;
        self.taken();
        Some(m)
    }

    /// Waits for the next message.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Refuses further messages (those queued can still be taken) and wakes waiting senders.
    pub(crate) fn close(&mut self) {
        self.rx.close();
        self.shared.space.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
