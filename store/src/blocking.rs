//! Where blocking work runs, the one rule for the whole control plane
//! (and the feed):
//! a sled write, a flush, an fsync, a file read or a wait on a lock that
//! is held across one never runs on a runtime worker as it is. Async code
//! hands it to the blocking pool (`Store::blocking`, `spawn_blocking`) or
//! to a thread of its own (ingest's storers and flushers); synchronous
//! code that the runtime calls directly (tonic's interceptor, the audit
//! log, the feed's snapshot) wraps it in [`in_place`], so the worker's
//! other tasks move to another worker while it waits.

/// Runs `f`, which may block, from synchronous code the runtime calls: on
/// a multi-threaded runtime through `block_in_place`, elsewhere (a
/// blocking thread, a test's single-threaded runtime, no runtime) as it is.
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A runtime of its own for an async client (etcd, PostgreSQL) behind a
/// synchronous interface: [`Runner::wait`] runs a future there and waits
/// for it from any thread, a worker of another runtime included. A caller
/// on the control plane's runtime thus never waits on a task of that same
/// runtime, and nothing deadlocks on a runtime full of waiting workers.
/// Shut down on drop, from any context.
pub struct Runner {
    runtime: Option<tokio::runtime::Runtime>,
    name: &'static str,
}

impl Runner {
    /// A runtime of `threads` workers named `picket-<name>`.
    pub fn new(name: &'static str, threads: usize) -> Result<Runner, crate::StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(format!("picket-{name}"))
            .enable_all()
            .build()
            .map_err(|e| crate::StoreError::Task(format!("cannot start {name}'s runtime: {e}")))?;
        Ok(Runner {
            runtime: Some(runtime),
            name,
        })
    }

    /// Enters the runtime (to build a client that spawns its tasks there).
    pub fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.runtime.as_ref().map(|r| r.enter())
    }

    /// Runs `fut` on the runtime and waits for its output.
    pub fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, crate::StoreError> {
        self.start(fut)?.wait()
    }

    /// Starts `fut` on the runtime; its output is waited for later
    /// ([`Started::wait`]), so that the caller works meanwhile.
    pub fn start<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<Started<T>, crate::StoreError> {
        let rt = self.runtime.as_ref().ok_or_else(|| stopped(self.name))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        Ok(Started {
            rx,
            name: self.name,
        })
    }
}

fn stopped(name: &str) -> crate::StoreError {
    crate::StoreError::Task(format!("{name}'s runtime stopped"))
}

/// A future started on a [`Runner`], its output still to come.
pub struct Started<T> {
    rx: std::sync::mpsc::Receiver<T>,
    name: &'static str,
}

impl<T> Started<T> {
    /// Waits for the output.
    pub fn wait(self) -> Result<T, crate::StoreError> {
        self.rx.recv().map_err(|_| stopped(self.name))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
