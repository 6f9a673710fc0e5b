//! The bounded queue between a stream's task and its gRPC response body.
//!
//! A plain channel cannot end a stream whose proxy stopped reading: the
//! closing status would wait behind the full queue. [`Responder::abort`]
//! drops the queued responses at once and leaves the status for the body to
//! yield next, so a stuck proxy holds neither our task nor its queue.

use futures::Stream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tonic::Status;

type Item<R> = Result<R, Status>;

struct Receiving<R> {
    rx: mpsc::Receiver<Item<R>>,
    /// Set by [`Responder::abort`]: yielded before anything else.
    abort: Option<Status>,
    done: bool,
}

fn lock<R>(state: &Mutex<Receiving<R>>) -> MutexGuard<'_, Receiving<R>> {
    // Nothing panics while holding it; if something did, the state is
    // still a valid queue.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The response stream of one ADS stream: what tonic sends to the proxy.
pub struct ResponseStream<R> {
    state: Arc<Mutex<Receiving<R>>>,
}

impl<R> Stream for ResponseStream<R> {
    type Item = Item<R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<R>>> {
        let mut state = lock(&self.state);
        if state.done {
            return Poll::Ready(None);
        }
        if let Some(status) = state.abort.take() {
            state.done = true;
            return Poll::Ready(Some(Err(status)));
        }
        let next = state.rx.poll_recv(cx);
        if let Poll::Ready(None) = next {
            state.done = true;
        }
        next
    }
}

/// The task's side of the queue.
pub(super) struct Responder<R> {
    tx: mpsc::Sender<Item<R>>,
    /// Weak, so that the response stream going away (the proxy left) drops
    /// the receiver and [`Responder::closed`] resolves.
    state: Weak<Mutex<Receiving<R>>>,
    timeout: Duration,
}

/// Why a response was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unsent {
    /// The proxy is gone.
    Closed,
    /// The queue stayed full for the whole send timeout.
    TimedOut,
}

/// A queue of `capacity` responses whose sends give up after `timeout`.
pub(super) fn response_queue<R>(
    capacity: usize,
    timeout: Duration,
) -> (Responder<R>, ResponseStream<R>) {
    let (tx, rx) = mpsc::channel(capacity);
    let state = Arc::new(Mutex::new(Receiving {
        rx,
        abort: None,
        done: false,
    }));
    let responder = Responder {
        tx,
        state: Arc::downgrade(&state),
        timeout,
    };
    (responder, ResponseStream { state })
}

impl<R> Responder<R> {
    /// Queues `item`, waiting at most the send timeout for room.
    pub(super) async fn send(&self, item: Item<R>) -> Result<(), Unsent> {
        match self.tx.send_timeout(item, self.timeout).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Closed(_)) => Err(Unsent::Closed),
            Err(SendTimeoutError::Timeout(_)) => Err(Unsent::TimedOut),
        }
    }

    /// Ends the response stream with `status`, dropping what is queued. The
    /// body yields the status the next time it is polled; the task must end
    /// (dropping this) so the body is woken.
    pub(super) fn abort(&self, status: Status) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let mut state = lock(&state);
        state.rx.close();
        while state.rx.try_recv().is_ok() {}
        state.abort = Some(status);
    }

    /// Resolves when the proxy stopped reading responses for good.
    pub(super) async fn closed(&self) {
        self.tx.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn ads_queue_times_out_when_full_and_abort_drops_what_is_queued() {
        let (tx, mut rx) = response_queue::<u32>(2, Duration::from_millis(20));
        tx.send(Ok(1)).await.expect("room");
        tx.send(Ok(2)).await.expect("room");
        assert_eq!(tx.send(Ok(3)).await, Err(Unsent::TimedOut));
        tx.abort(Status::resource_exhausted("slow"));
        drop(tx);
        let first = rx.next().await.expect("the status");
        assert_eq!(
            first.expect_err("aborted").code(),
            tonic::Code::ResourceExhausted
        );
        assert!(rx.next().await.is_none(), "nothing after the status");
    }

    #[tokio::test]
    async fn ads_queue_is_closed_when_the_stream_is_dropped() {
        let (tx, rx) = response_queue::<u32>(2, Duration::from_secs(5));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("closed resolves");
        assert_eq!(tx.send(Ok(1)).await, Err(Unsent::Closed));
    }
}
