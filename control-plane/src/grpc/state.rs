//! What the services share: store, CA, live sessions, audit, config and
//! the shutdown signal.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::counters::Counters;
use crate::fleet::Fleet;
use crate::sessions::Sessions;
use picket_config::control::ControlConfig;
use picket_pki::Ca;
use picket_store::Store;

pub struct State {
    /// This replica's place in the cluster (SPEC §12); `None` alone.
    pub cluster: Option<Arc<crate::cluster::Replica>>,
    pub store: Store,
    pub ca: Arc<Ca>,
    /// The certificate the gRPC port presents (`identity` keeps it current).
    pub identity: Arc<picket_tls::server::Identity>,
    pub sessions: Arc<Sessions>,
    /// Users' open admin streams, cut when a user is revoked.
    pub user_streams: Arc<super::cut::UserStreams>,
    /// Steps in flight to agents, and their updates back.
    pub steps: Arc<crate::steps::Steps>,
    /// The rollout driver (alone, or while leading), or the shared
    /// rollouts (a follower).
    pub rollouts: crate::rollout::front::Rollouts,
    /// The alert driver (and its tap and outbox).
    pub alerts: crate::alert::front::Alerts,
    pub audit: Audit,
    pub cfg: ControlConfig,
    /// Each host's newest metrics sample.
    pub fleet: Arc<Fleet>,
    /// Stored events and log lines, live, for followers.
    pub feed: Arc<crate::feed::Feed>,
    /// The thread that stores every session's batches.
    pub ingester: Arc<crate::ingest::Ingester>,
    pub counters: Arc<Counters>,
    /// Connections without a client certificate, and what was refused.
    pub gate: Arc<super::accept::Gate>,
    /// Cancelled on SIGTERM/SIGINT: streams end, servers stop accepting.
    pub shutdown: CancellationToken,
    /// Every task that may write to the store (sessions, their storers and
    /// flushers, feeds, maintenance): awaited after `shutdown` and before
    /// the final flush, so nothing is mid-write when the process exits.
    pub tasks: tokio_util::task::TaskTracker,
}

impl State {
    /// Whether `host`'s agent streams now: with this control plane, or in
    /// cluster mode with another replica (presence).
    pub fn streaming(&self, host: &str) -> bool {
        self.sessions.is_online(host)
            || (self.cluster.as_deref()).is_some_and(|c| c.elsewhere(host))
    }
}
