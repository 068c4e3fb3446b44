//! The shell every engine shares (`rollout::driver`, `alert::driver`):
//! one task owns the engine and is reached only through its [`Mailbox`];
//! it sleeps to the engine's next deadline ([`until`]), feeds it inputs,
//! and carries out what the engine decided with one rule, **persist
//! before acting**, through [`Held`]: what a failed persist decided is
//! neither acted on nor forgotten, and the persist is tried again with
//! backoff until it succeeds.
//!
//! The engines themselves (`picket_rollout`, `picket_alert`) do no I/O;
//! each driver adds only what is its own: which inputs it waits on and
//! what its outputs do.

use std::time::Duration;

use picket_model::backoff::Backoff;
use tokio::sync::{mpsc, oneshot};

/// The command queue of a driver's task: cheap to clone, and the only way
/// in. A command that wants an answer carries a oneshot sender.
#[derive(Debug)]
pub struct Mailbox<C> {
    tx: mpsc::Sender<C>,
}

impl<C> Clone for Mailbox<C> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
        }
    }
}

/// The driver's task has stopped (only at shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the driver has stopped")]
pub struct Gone;

impl<C> Mailbox<C> {
    /// A mailbox holding up to `depth` commands, and its receiving end.
    pub fn new(depth: usize) -> (Mailbox<C>, mpsc::Receiver<C>) {
        let (tx, rx) = mpsc::channel(depth);
        (Mailbox { tx }, rx)
    }

    /// Sends the command `make` builds around a reply sender, and waits
    /// for the reply.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> C) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }
}

/// How long to sleep until `deadline` (Unix ms) from `now`; with no
/// deadline, an hour (a driver wakes on its inputs long before).
pub fn until(deadline: Option<i64>, now: i64) -> Duration {
    deadline.map_or(Duration::from_secs(3600), |d| {
        Duration::from_millis(u64::try_from(d.saturating_sub(now)).unwrap_or(0))
    })
}

/// Decisions waiting on their persist: acted on, in the order decided,
/// only once a persist that covers them has succeeded.
#[derive(Debug)]
pub struct Held<T> {
    items: Vec<T>,
    retry: Backoff,
    wait: Duration,
}

/// What [`Held::persist`] says: act on these now, or wait and try again.
#[derive(Debug, PartialEq)]
pub enum Persisted<T> {
    /// Stored: carry these out, in order.
    Act(Vec<T>),
    /// The store refused; nothing is to be carried out yet.
    Held,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held::new(Duration::from_millis(250), Duration::from_secs(5))
    }
}

impl<T> Held<T> {
    /// Retries from `first`, doubling up to `cap` (at least half of each
    /// wait, so a failing store is not hammered).
    pub fn new(first: Duration, cap: Duration) -> Self {
        Held {
            items: Vec::new(),
            retry: Backoff::new(first, cap).with_floor(0.5),
            wait: Duration::ZERO,
        }
    }

    /// Something is held, or a persist failed: the driver should call
    /// [`Held::persist`] again after [`Held::retry_in`], even with no new
    /// input.
    pub fn is_waiting(&self) -> bool {
        !self.items.is_empty() || self.retry.attempts() > 0
    }

    /// How long to wait before the next try.
    pub fn retry_in(&self) -> Duration {
        self.wait
    }

    /// Persists with `write` (given what is held and what is new, in the
    /// order decided, to store along with the engine's state if it
    /// wants); on success every item is returned to act on, on failure
    /// they are all kept for the next call. The first failure and the
    /// recovery are logged once, as `what`, not every attempt.
    pub async fn persist<E: std::fmt::Display, W, F>(
        &mut self,
        new: impl IntoIterator<Item = T>,
        what: &str,
        write: W,
    ) -> Persisted<T>
    where
        W: FnOnce(&[T]) -> F,
        F: std::future::Future<Output = Result<(), E>>,
    {
        self.items.extend(new);
        match write(&self.items).await {
            Ok(()) => {
                if self.retry.attempts() > 0 {
                    tracing::info!(what, "stored again; carrying out what was held");
                    self.retry.reset();
                }
                Persisted::Act(std::mem::take(&mut self.items))
            }
            Err(error) => {
                if self.retry.attempts() == 0 {
                    tracing::error!(what, %error, held = self.items.len(), "cannot persist; holding what was decided and retrying");
                }
                self.wait = self.retry.next_delay(&mut rand::rng());
                Persisted::Held
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_decided_is_acted_on_before_it_is_stored_or_forgotten_after() {
        let mut h: Held<u32> = Held::default();
        let fail = |_: &[u32]| async { Err::<(), _>("disk full") };
        assert_eq!(h.persist([1, 2], "t", fail).await, Persisted::Held);
        assert!(h.is_waiting());
        assert!(h.retry_in() <= Duration::from_millis(250));
        assert_eq!(h.persist([3], "t", fail).await, Persisted::Held);
        // The write sees everything held, oldest first, and then it is acted on.
        let seen = std::cell::RefCell::new(Vec::new());
        let ok = |items: &[u32]| {
            seen.borrow_mut().extend_from_slice(items);
            async { Ok::<(), &str>(()) }
        };
        assert_eq!(
            h.persist([4], "t", ok).await,
            Persisted::Act(vec![1, 2, 3, 4])
        );
        assert_eq!(*seen.borrow(), [1, 2, 3, 4]);
        assert!(!h.is_waiting());
        assert_eq!(h.persist([], "t", ok).await, Persisted::Act(vec![]));
    }

    #[tokio::test]
    async fn a_mailbox_answers_until_its_task_stops() {
        let (m, mut rx) = Mailbox::<oneshot::Sender<u32>>::new(4);
        let task = tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(7);
            }
        });
        assert_eq!(m.ask(|r| r).await, Ok(7));
        task.abort();
        let _ = task.await;
        assert_eq!(m.ask(|r| r).await, Err(Gone));
        assert_eq!(until(Some(1_500), 1_000), Duration::from_millis(500));
        assert_eq!(until(Some(500), 1_000), Duration::ZERO);
        assert_eq!(until(None, 0), Duration::from_secs(3600));
    }
}
