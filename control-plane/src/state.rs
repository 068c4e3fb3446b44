//! What the services share: store, CA, live sessions, audit, config and
//! the shutdown signal.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::config::ControlConfig;
use crate::pki::Ca;
use crate::sessions::Sessions;
use crate::store::Store;

pub struct State {
    pub store: Store,
    pub ca: Ca,
    pub sessions: Arc<Sessions>,
    pub audit: Audit,
    pub cfg: ControlConfig,
    /// Cancelled on SIGTERM/SIGINT: streams end, servers stop accepting.
    pub shutdown: CancellationToken,
}
