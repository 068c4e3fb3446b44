//! Each user's open admin streams (follows, watches, runs), so that
//! revoking the user ends them at once: the next call is refused by the
//! interceptor, and a stream already open ends here with UNAUTHENTICATED.
//!
//! A std `Mutex`: it is never held across an `.await`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use super::auth::Caller;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Default)]
pub struct UserStreams {
    users: Mutex<HashMap<String, Cut>>,
    /// Streams cut per user since [`UserStreams::take_counted`]: in
    /// cluster mode a revocation may be applied here by the users' mirror
    /// before the revoking call asks.
    counted: Mutex<HashMap<String, u32>>,
}

#[derive(Clone, Default)]
struct Cut {
    token: CancellationToken,
    open: Arc<AtomicU32>,
}

impl UserStreams {
    /// `s`, ended with UNAUTHENTICATED when `caller` is revoked. Agents'
    /// streams are cut by `sessions` instead.
    pub fn guard<T: Send + 'static>(&self, caller: &Caller, s: Boxed<T>) -> Boxed<T> {
        let Caller::User { name, .. } = caller else {
            return s;
        };
        // Counted under the lock, so that `cut` sees every stream it ends.
        let cut = {
            let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
            let cut = users.entry(name.clone()).or_default();
            cut.open.fetch_add(1, Ordering::SeqCst);
            cut.clone()
        };
        Box::pin(Guarded {
            inner: s,
            cancelled: Box::pin(cut.token.cancelled_owned()),
            open: cut.open,
            user: name.clone(),
            done: false,
        })
    }

    /// Ends every open stream of `user`; returns how many there were.
    pub fn cut(&self, user: &str) -> u32 {
        let cut = self
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        let n = cut.map_or(0, |c| {
            // Counted before the cancel: a cancelled stream may end and be
            // dropped on another worker thread before `cancel` returns.
            let open = c.open.load(Ordering::SeqCst);
            c.token.cancel();
            open
        });
        if n > 0 {
            *self
                .counted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(user.to_string())
                .or_default() += n;
        }
        n
    }

    /// How many of `user`'s streams were cut since last asked.
    pub fn take_counted(&self, user: &str) -> u32 {
        self.counted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user)
            .unwrap_or(0)
    }
}

struct Guarded<T> {
    inner: Boxed<T>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    open: Arc<AtomicU32>,
    user: String,
    done: bool,
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T> Stream for Guarded<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.cancelled.as_mut().poll(cx).is_ready() {
            self.done = true;
            let why = format!("user {} was revoked", self.user);
            return Poll::Ready(Some(Err(Status::unauthenticated(why))));
        }
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_model::Role;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_cut_ends_only_that_users_streams() {
        let streams = UserStreams::default();
        let alice = Caller::User {
            name: "alice".into(),
            role: Role::Viewer,
        };
        let bob = Caller::User {
            name: "bob".into(),
            role: Role::Viewer,
        };
        let pending = || -> Boxed<u32> { Box::pin(tokio_stream::pending()) };
        let mut a1 = streams.guard(&alice, pending());
        let mut a2 = streams.guard(&alice, pending());
        let mut b = streams.guard(&bob, Box::pin(tokio_stream::iter([Ok(7)])));
        assert_eq!(streams.cut("alice"), 2);
        for s in [&mut a1, &mut a2] {
            let e = s.next().await.and_then(Result::err).map(|e| e.code());
            assert_eq!(e, Some(tonic::Code::Unauthenticated));
            assert!(s.next().await.is_none());
        }
        assert_eq!(b.next().await.and_then(Result::ok), Some(7));
        drop(b);
        assert_eq!(streams.cut("bob"), 0);
        assert_eq!(streams.cut("nobody"), 0);
    }
}
