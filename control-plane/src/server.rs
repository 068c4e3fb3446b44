//! Wires the control plane together: store, CA, gRPC and HTTP servers on
//! listeners bound by the caller, until the shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::alert::front::Alerts;
use crate::audit::Audit;
use crate::grpc::state::State;
use crate::rollout::front::Rollouts;
use crate::sessions::Sessions;
use picket_config::control::ControlConfig;
use picket_pki::Ca;
use picket_store::Store;

/// Both listeners, bound before anything else starts so that a port in use
/// is reported at once, naming the address.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<Self> {
        let g = TcpListener::bind(grpc)
            .await
            .with_context(|| format!("cannot listen on {grpc} (listen)"))?;
        let h = TcpListener::bind(http)
            .await
            .with_context(|| format!("cannot listen on {http} (http_listen)"))?;
        Ok(Listeners { grpc: g, http: h })
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }
}

/// What a finished rollout becomes: an event of the control plane's own
/// host (SPEC §9), stored off the driver's task.
fn finished_events(
    sinks: crate::ingest::Sinks,
    host: String,
    tasks: tokio_util::task::TaskTracker,
) -> crate::rollout::driver::FinishedSink {
    Box::new(move |id, p, kind| {
        let name = p.spec.name.clone().unwrap_or_default();
        let severity = match kind {
            "rollout_succeeded" => picket_proto::v1::Severity::Info,
            "rollout_aborted" => picket_proto::v1::Severity::Low,
            _ => picket_proto::v1::Severity::High,
        };
        let event = picket_proto::v1::Event {
            source: crate::ingest::OWN_SOURCE.into(),
            path: String::new(),
            kind: kind.to_string(),
            severity: severity as i32,
            message: format!("rollout {id} ({name}): {}", p.state.as_str()),
            fields: [
                ("rollout".to_string(), id.to_string()),
                ("name".to_string(), name),
            ]
            .into(),
            time_unix_ms: p.finished_ms.unwrap_or_else(picket_clock::now_ms),
        };
        let (sinks, host) = (sinks.clone(), host.clone());
        tasks.spawn_blocking(move || {
            if let Err(error) = crate::ingest::own_event(&sinks, &host, event) {
                tracing::error!(%error, "cannot store a finished rollout's event");
            }
        });
    })
}

/// How long shutdown waits for sessions to store and ack what they hold.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// What a replica does when its copy of the shared state sees a user or
/// an agent revoked (through any replica): their streams here end.
fn revocations(
    sessions: &Arc<Sessions>,
    user_streams: &Arc<crate::grpc::cut::UserStreams>,
) -> impl Fn(&str, &[u8], Option<&[u8]>) + Send + Sync + 'static {
    let (sessions, user_streams) = (sessions.clone(), user_streams.clone());
    move |tree, _key, value| {
        let Some(v) = value else { return };
        match tree {
            picket_store::USERS => {
                if let Ok(u) = serde_json::from_slice::<picket_store::UserRecord>(v)
                    && u.revoked_ms.is_some()
                {
                    user_streams.cut(&u.name);
                }
            }
            picket_store::AGENTS => {
                if let Ok(a) = serde_json::from_slice::<picket_store::AgentRecord>(v)
                    && a.revoked_ms.is_some()
                {
                    sessions.close(&a.name);
                }
            }
            _ => {}
        }
    }
}

/// Opens the store and the CA, then serves until `shutdown`; waits for
/// the tasks that write, then flushes the store before returning.
pub async fn run(
    cfg: ControlConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::open_with_floor(&cfg.data_dir, cfg.min_free_percent)?;
    let sessions = Arc::new(Sessions::default());
    let user_streams: Arc<crate::grpc::cut::UserStreams> = Arc::default();
    // Cluster mode (SPEC §12): identity (agents, tokens, users, audit)
    // lives in etcd before anything holds the store.
    let (store, shared) = match &cfg.cluster {
        Some(c) => {
            let (store, shared) =
                crate::cluster::share(store, c, revocations(&sessions, &user_streams))
                    .context("joining the cluster")?;
            (store, Some(shared))
        }
        None => (store, None),
    };
    let ca = Ca::load(&cfg.data_dir).with_context(|| {
        format!(
            "no usable CA in {}; run `picket-control init`",
            cfg.data_dir.display()
        )
    })?;
    let ca = Arc::new(ca);
    let identity =
        crate::identity::load(&cfg.data_dir).context("loading the server certificate")?;
    crate::identity::spawn(
        cfg.data_dir.clone(),
        ca.clone(),
        identity.clone(),
        shutdown.clone(),
    );
    let records_db = crate::cluster::records::open(cfg.cluster.as_ref())?;
    let tasks = tokio_util::task::TaskTracker::new();
    let steps = Arc::new(
        crate::steps::Steps::new(sessions.clone()).with_output_limit(cfg.limits.step_output_bytes),
    );
    let sinks = crate::ingest::Sinks {
        sample_ahead_ms: picket_model::millis(cfg.limits.sample_ahead),
        feed: Arc::new(
            crate::feed::Feed::new(
                crate::cluster::records::kept(records_db.as_ref(), &store),
                shutdown.clone(),
                tasks.clone(),
            )?
            .with_follower_budget(cfg.limits.follower_queue_bytes),
        ),
        fleet: Default::default(),
        counters: Default::default(),
        alerts: picket_tap::Tap::detached(),
    };
    // Cluster mode with a records database: the leader's alert engine is
    // fed from it, whichever replica stored what.
    if cfg.cluster.is_some() && records_db.is_none() {
        tracing::warn!(
            "cluster mode without `postgres`: each replica keeps the records it receives, and \
             the leader's alert rules see only the events and samples of the agents streaming \
             to it (docs/cluster.md)"
        );
    }
    // Woken by the feed's follower of the database's commits (below).
    let tap_wake = Arc::new(tokio::sync::Notify::new());
    let tapped = records_db.as_ref().map(|db| crate::alert::driver::Tapped {
        records: db.clone(),
        wake: tap_wake.clone(),
    });
    let alert_kit = crate::alert::driver::Kit::new(crate::alert::driver::Parts {
        store: store.clone(),
        file: cfg.alerts.clone(),
        now: picket_clock::now_ms,
        name: cfg.name.clone(),
        records: tapped,
    })
    .await
    .context("starting the alert driver")?;
    let sinks = crate::ingest::Sinks {
        alerts: alert_kit.tap.clone(),
        ..sinks
    };
    if let Some(db) = records_db {
        let follow =
            crate::cluster::records::follow(db, sinks.feed.clone(), tap_wake, shutdown.clone());
        tasks.spawn(follow);
    }
    // Cluster mode: campaign and publish this replica (SPEC §12).
    let cluster = match &cfg.cluster {
        Some(c) => {
            let etcd = crate::cluster::connect(c).context("joining the cluster")?;
            let cluster = picket_cluster::Cluster::start(etcd, &c.node, &c.advertise);
            let replica = Arc::new(crate::cluster::Replica { cluster });
            crate::cluster::relay::Relayer::start(replica.clone(), &steps);
            tasks.spawn(crate::cluster::publish_presence(
                sessions.clone(),
                replica.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(crate::cluster::follow_presence(
                sessions.clone(),
                replica.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(crate::cluster::vouch_for_others(
                replica.clone(),
                alert_kit.tap.clone(),
                cfg.heartbeat_interval,
                shutdown.clone(),
            ));
            Some(replica)
        }
        None => None,
    };
    let parts = {
        let (store, steps, sinks, name, tasks) = (
            store.clone(),
            steps.clone(),
            sinks.clone(),
            cfg.name.clone(),
            tasks.clone(),
        );
        move || crate::rollout::driver::Parts {
            store: store.clone(),
            steps: steps.clone(),
            events: finished_events(sinks.clone(), name.clone(), tasks.clone()),
            now: picket_clock::now_ms,
        }
    };
    let (rollouts, alerts) = match (&cluster, shared) {
        // Cluster mode: the drivers run on the leader only.
        (Some(replica), Some(shared)) => {
            let t = tasks.clone();
            let start: crate::cluster::lead::StartDriver<_> = Box::new(move |stop| {
                let (parts, t) = (parts(), t.clone());
                Box::pin(async move {
                    crate::rollout::driver::start(parts, stop, &t)
                        .await
                        .map_err(|e| Box::new(e) as _)
                })
            });
            let led = crate::cluster::lead::Led {
                what: "rollouts",
                done: "driven",
                trees: &[picket_store::ROLLOUTS],
                start,
            };
            let slot = crate::cluster::lead::while_leading(
                replica.clone(),
                shared.clone(),
                led,
                shutdown.clone(),
                &tasks,
            );
            let (t, kit) = (tasks.clone(), alert_kit.clone());
            let start: crate::cluster::lead::StartDriver<_> = Box::new(move |stop| {
                let (t, kit) = (t.clone(), kit.clone());
                Box::pin(async move {
                    kit.refresh().await;
                    kit.start(stop, &t).await.map_err(|e| Box::new(e) as _)
                })
            });
            let led = crate::cluster::lead::Led {
                what: "alerts",
                done: "decided and notified",
                trees: &[picket_store::ALERTS, picket_store::OUTBOX],
                start,
            };
            let alerts = crate::cluster::lead::while_leading(
                replica.clone(),
                shared,
                led,
                shutdown.clone(),
                &tasks,
            );
            let role = Some(replica.cluster.roles());
            (
                Rollouts::replica(slot, store.clone(), replica.cluster.roles()),
                Alerts::replica(alerts, alert_kit, role),
            )
        }
        _ => (
            Rollouts::alone(
                crate::rollout::driver::start(parts(), shutdown.clone(), &tasks)
                    .await
                    .context("starting the rollout driver")?,
                store.clone(),
            ),
            Alerts::alone(
                alert_kit
                    .start(shutdown.clone(), &tasks)
                    .await
                    .context("starting the alert driver")?,
                alert_kit,
            ),
        ),
    };
    let ingester = Arc::new(
        crate::ingest::Ingester::start(sinks.clone()).context("starting the ingest thread")?,
    );
    let state = Arc::new(State {
        cluster,
        audit: Audit::new(store.clone()),
        store: store.clone(),
        ca,
        identity,
        sessions,
        user_streams,
        steps,
        rollouts,
        alerts,
        cfg,
        fleet: sinks.fleet,
        feed: sinks.feed,
        ingester,
        counters: sinks.counters,
        gate: Default::default(),
        shutdown: shutdown.clone(),
        tasks,
    });
    tracing::info!(
        grpc = %listeners.grpc_addr()?,
        http = %listeners.http_addr()?,
        fingerprint = %state.ca.fingerprint(),
        "control plane listening"
    );
    // Without its socket the control plane still serves; only `backup`
    // cannot reach it (a path over the 108 bytes a socket may have, say).
    match crate::local::bind(&state.cfg.data_dir) {
        Ok(local) => {
            tokio::spawn(crate::local::serve(
                local,
                state.store.clone(),
                state.cfg.data_dir.clone(),
                shutdown.clone(),
            ));
        }
        Err(error) => tracing::warn!(
            %error,
            path = %state.cfg.data_dir.join(crate::local::SOCKET).display(),
            "cannot create the local socket; `picket-control backup` cannot reach this control plane"
        ),
    }
    let grpc = tokio::spawn(crate::grpc::serve(listeners.grpc, state.clone()));
    let http = tokio::spawn(crate::http::serve(listeners.http, state.clone()));
    // Retention of shared records is the leader's (SPEC §12); records a
    // replica keeps itself (no `postgres`) are its own to expire.
    let keeps: crate::fleet::Keeps = match (&state.cluster, state.feed.records().shared()) {
        (Some(replica), true) => {
            let roles = replica.cluster.roles();
            Arc::new(move || matches!(*roles.borrow(), picket_cluster::Role::Leader(_)))
        }
        _ => Arc::new(|| true),
    };
    state.tasks.spawn(crate::fleet::maintain(
        state.store.clone(),
        state.feed.records().clone(),
        state.fleet.clone(),
        crate::fleet::Retention::of(&state.cfg),
        keeps,
        shutdown.clone(),
    ));
    state
        .tasks
        .spawn(crate::recovery::run(state.store.clone(), shutdown.clone()));
    crate::lifecycle::notify_ready(shutdown.clone());

    let result = tokio::select! {
        r = grpc => r.context("gRPC server task")?.context("gRPC server"),
        r = http => r.context("HTTP server task")?.context("HTTP server"),
        _ = shutdown.cancelled() => Ok(()),
    };
    shutdown.cancel();
    crate::lifecycle::notify_stopping();
    // Sessions end their streams, store what they had queued and ack it;
    // feeds and maintenance stop. Then the last flush.
    state.tasks.close();
    if tokio::time::timeout(DRAIN, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.tasks.len(),
            "tasks still running after {DRAIN:?}; flushing anyway (agents replay what was not acked)"
        );
    }
    store.flush().context("flushing the store")?;
    // Leadership and presence go at once, not at the lease's end.
    if let Some(c) = state.cluster.as_ref() {
        c.cluster.resign().await;
    }
    tracing::info!("control plane stopped");
    result
}
