//! A [`Backend`] that fails its writes on demand: for tests of what a
//! caller does when the disk refuses (a full disk, an I/O error), over
//! the real backend it wraps. Reads always go through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::StoreError;
use crate::backend::Backend;
use crate::backend::guarded::{Guarded, WritePolicy};

/// Wraps a backend; while [`Faulty::fail`] is on, every write and flush
/// returns an I/O error and changes nothing.
pub type Faulty = Guarded<Switch>;

/// The switch of a [`Faulty`] backend.
#[derive(Default)]
pub struct Switch {
    failing: AtomicBool,
    refused: AtomicU64,
}

impl WritePolicy for Switch {
    fn before(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            let e = std::io::Error::from_raw_os_error(28); // ENOSPC
            return Err(StoreError::Engine(sled::Error::Io(e)));
        }
        Ok(())
    }
}

impl Faulty {
    pub fn new(inner: Arc<dyn Backend>) -> Faulty {
        Guarded {
            inner,
            policy: Switch::default(),
        }
    }

    /// Turns failing writes on or off.
    pub fn fail(&self, on: bool) {
        self.policy.failing.store(on, Ordering::SeqCst);
    }

    /// How many writes were refused so far.
    pub fn refused(&self) -> u64 {
        self.policy.refused.load(Ordering::SeqCst)
    }
}
