//! Leadership on an etcd lease (SPEC §12), as Kubernetes' lease lock and
//! etcd's own election do it: each replica holds a lease (TTL 5 s, renewed
//! every second) and tries to create one key, `<prefix>/leader`, attached
//! to it; whoever creates it leads until its lease ends. When the leader
//! dies or stops renewing, etcd deletes the key at the lease's end and the
//! others, watching it, try again at once: a new leader within the TTL
//! plus a round trip.
//!
//! Fencing: a [`Term`] is the key's create revision. A write the leader's
//! engines make goes through [`Term::fenced`], a transaction conditioned on
//! the key still having that create revision, so a leader that was paused
//! or cut off past its lease (and may not know it yet) has every write
//! refused by etcd itself.

use std::time::Duration;

use picket_model::backoff::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::AbortOnDropHandle;

use crate::etcd::{ATTEMPT_TIMEOUT, Etcd, EtcdError, created_at, get_op, put_op};
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb::event::EventType;

/// Leadership's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The lease's time to live: how long a dead leader holds the key.
    pub ttl: Duration,
    /// How often the lease is renewed.
    pub renew_every: Duration,
    /// The key prefix of this cluster's state (`/picket`).
    pub prefix: String,
    /// What this replica publishes of itself under `<prefix>/replicas/<node>`
    /// while its lease lives (its advertised address).
    pub advertise: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
            prefix: "/picket".into(),
            advertise: String::new(),
        }
    }
}

/// What this replica is, as far as it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not leading; the leader's node name when one is known.
    Follower {
        leader: Option<String>,
    },
    Leader(Term),
}

/// One leader's tenure: the leader key's create revision, and the lease
/// it hangs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    pub revision: i64,
    pub lease: i64,
    /// When this replica became leader (Unix ms, its clock).
    pub since_ms: i64,
}

impl Term {
    /// `ops` applied in one transaction if this term still stands;
    /// [`EtcdError::Deposed`] (and nothing applied) if not.
    pub async fn fenced(
        &self,
        etcd: &Etcd,
        ops: Vec<pb::RequestOp>,
    ) -> Result<pb::TxnResponse, EtcdError> {
        let r = etcd
            .txn(vec![created_at(&self.key, self.revision)], ops, Vec::new())
            .await?;
        if r.succeeded {
            Ok(r)
        } else {
            Err(EtcdError::Deposed)
        }
    }
}

/// A replica's campaign, running until [`Leadership::resign`] or drop.
/// Dropped, it stops without a word to etcd, as a crash would: a lease
/// held runs out by itself.
pub struct Leadership {
    role: watch::Receiver<Role>,
    task: AbortOnDropHandle<()>,
    /// The lease held now, if any.
    lease: watch::Receiver<Option<i64>>,
    etcd: Etcd,
}

impl Leadership {
    /// Campaigns as `node` on `etcd`, in the background.
    pub fn campaign(etcd: Etcd, node: String, opts: Options) -> Leadership {
        let (tx, role) = watch::channel(Role::Follower { leader: None });
        let (lease_tx, lease) = watch::channel(None);
        let task =
            AbortOnDropHandle::new(tokio::spawn(run(etcd.clone(), node, opts, tx, lease_tx)));
        Leadership {
            role,
            task,
            lease,
            etcd,
        }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// The role as it changes.
    pub fn roles(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The lease this replica holds now (the last one granted: it may
    /// have run out), as it changes.
    pub fn lease(&self) -> watch::Receiver<Option<i64>> {
        self.lease.clone()
    }

    /// Stops campaigning and gives up the lease at once (a clean
    /// shutdown): the others need not wait for the TTL.
    pub async fn resign(&self) {
        self.task.abort();
        let lease = *self.lease.borrow();
        if let Some(lease) = lease {
            let _ = self.etcd.revoke(lease).await;
        }
    }
}

async fn run(
    etcd: Etcd,
    node: String,
    opts: Options,
    role: watch::Sender<Role>,
    held: watch::Sender<Option<i64>>,
) {
    let key = format!("{}/leader", opts.prefix);
    let presence = (
        format!("{}/replicas/{node}", opts.prefix),
        opts.advertise.clone(),
    );
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
    loop {
        let ttl = i64::try_from(opts.ttl.as_secs().max(1)).unwrap_or(5);
        let (id, granted_ttl) = match etcd.grant(ttl).await {
            Ok((id, t)) if id != 0 => (id, t),
            other => {
                let why = other
                    .err()
                    .map_or("a lease with id 0".into(), |e| e.to_string());
                tracing::warn!(error = %why, "etcd: cannot get a lease; campaigning later");
                role.send_if_modified(|r| set(r, Role::Follower { leader: None }));
                let delay = backoff.next_delay(&mut rand::rng());
                sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        held.send_replace(Some(id));
        let valid_until = Instant::now() + Duration::from_secs(granted_ttl.max(1).unsigned_abs());
        let (lost_tx, lost) = watch::channel(false);
        // Ends with this task, aborted or not: a replica that stops
        // campaigning stops renewing.
        let keeper = AbortOnDropHandle::new(tokio::spawn(keep_alive(
            etcd.clone(),
            id,
            valid_until,
            opts.renew_every,
            lost_tx,
        )));
        hold(&etcd, &node, (&key, &presence), id, &role, lost).await;
        drop(keeper);
        role.send_if_modified(|r| set(r, Role::Follower { leader: None }));
        tracing::warn!(node, "lost the etcd lease; campaigning again");
    }
}

fn set(r: &mut Role, new: Role) -> bool {
    if *r == new {
        return false;
    }
    *r = new;
    true
}

/// Renews lease `id` every `every` until it is lost: etcd says it is gone,
/// or no renewal came back before it would have run out. A member that
/// breaks the stream or does not answer within [`ATTEMPT_TIMEOUT`] is left
/// for the next.
async fn keep_alive(
    etcd: Etcd,
    id: i64,
    mut valid_until: Instant,
    every: Duration,
    lost: watch::Sender<bool>,
) {
    'stream: while Instant::now() < valid_until {
        let (tx, rx) = mpsc::channel(1);
        // The first renewal is queued before the stream opens: etcd sends
        // the stream's headers with its first answer.
        let mut sent = Instant::now();
        if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
            continue;
        }
        let (member, ch) = etcd.pinned();
        let opened = timeout(
            ATTEMPT_TIMEOUT,
            Etcd::lease(ch).lease_keep_alive(ReceiverStream::new(rx)),
        )
        .await;
        let mut inbound = match opened {
            Ok(Ok(s)) => s.into_inner(),
            _ => {
                etcd.move_on(member);
                continue;
            }
        };
        loop {
            // An answer within the attempt's time, or another member.
            let answer =
                timeout_at(valid_until.min(sent + ATTEMPT_TIMEOUT), inbound.message()).await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl > 0 => {
                    etcd.answered(true);
                    valid_until = sent + Duration::from_secs(r.ttl.unsigned_abs());
                }
                // The lease is gone (expired or revoked).
                Ok(Ok(Some(_))) => break 'stream,
                // The stream broke or the member is silent: another one.
                _ => {
                    etcd.move_on(member);
                    continue 'stream;
                }
            }
            sleep(every).await;
            sent = Instant::now();
            if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                continue 'stream;
            }
        }
    }
    let _ = lost.send(true);
}

/// Tries for the leader key while lease `lease` lives; leads while the
/// key is ours; returns once the lease is lost. Each try also puts this
/// replica's presence on the lease.
async fn hold(
    etcd: &Etcd,
    node: &str,
    (key, presence): (&str, &(String, String)),
    lease: i64,
    role: &watch::Sender<Role>,
    mut lost: watch::Receiver<bool>,
) {
    while !*lost.borrow() {
        let now = picket_clock::now_ms();
        let value = format!("{node} {now}");
        let tried = etcd
            .txn(
                vec![created_at(key, 0)],
                vec![
                    put_op(key, value.as_bytes(), lease),
                    put_op(&presence.0, presence.1.as_bytes(), lease),
                ],
                vec![
                    get_op(key),
                    put_op(&presence.0, presence.1.as_bytes(), lease),
                ],
            )
            .await;
        let r = match tried {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "etcd: cannot campaign");
                tokio::select! {
                    _ = lost.changed() => {}
                    _ = sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        let read_at = r.header.as_ref().map_or(0, |h| h.revision);
        let holder = leader_of(&r);
        // A campaign sent again after a member timed out may find its own
        // key: that is a win, at the key's create revision.
        let (won, created, since_ms) = match &holder {
            None => (r.succeeded, read_at, now),
            Some(h) => (h.lease == lease, h.created, h.since_ms),
        };
        let new = if won {
            tracing::info!(node, revision = created, "leading");
            Role::Leader(Term {
                key: key.to_string(),
                revision: created,
                lease,
                since_ms,
            })
        } else {
            Role::Follower {
                leader: holder.map(|h| h.node),
            }
        };
        role.send_if_modified(|r| set(r, new));
        if created != 0 {
            wait_gone(etcd, key, created, read_at, &mut lost).await;
        }
        if matches!(*role.borrow(), Role::Leader(_)) {
            tracing::warn!(node, "no longer leading");
        }
        role.send_if_modified(|r| set(r, Role::Follower { leader: None }));
    }
}

/// Who holds the leader key, as a failed campaign read it.
struct Holder {
    node: String,
    since_ms: i64,
    created: i64,
    lease: i64,
}

/// The leader key's value: `NODE SINCE_MS` (a node name has no space).
pub(crate) fn parse_value(v: &[u8]) -> (String, i64) {
    let text = String::from_utf8_lossy(v);
    match text.rsplit_once(' ') {
        Some((node, since)) => (node.to_string(), since.parse().unwrap_or(0)),
        None => (text.into_owned(), 0),
    }
}

fn leader_of(r: &pb::TxnResponse) -> Option<Holder> {
    use pb::response_op::Response;
    r.responses.iter().find_map(|op| match &op.response {
        Some(Response::ResponseRange(range)) => range.kvs.first().map(|kv| {
            let (node, since_ms) = parse_value(&kv.value);
            Holder {
                node,
                since_ms,
                created: kv.create_revision,
                lease: kv.lease,
            }
        }),
        _ => None,
    })
}

/// Returns once `key` no longer has create revision `created` (watched
/// from `after + 1`), or the lease is lost. A broken watch is opened
/// again after checking the key by a read.
async fn wait_gone(
    etcd: &Etcd,
    key: &str,
    created: i64,
    mut after: i64,
    lost: &mut watch::Receiver<bool>,
) {
    while !*lost.borrow() {
        match etcd.get(key).await {
            Ok((kv, rev)) => {
                if kv.is_none_or(|kv| kv.create_revision != created) {
                    return;
                }
                after = after.max(rev);
            }
            Err(_) => {
                tokio::select! {
                    _ = lost.changed() => {}
                    _ = sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
        }
        tokio::select! {
            _ = lost.changed() => return,
            deleted = watch_delete(etcd, key, after + 1) => {
                if deleted {
                    return;
                }
                // The watch broke: check again after a moment.
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Watches `key` from `revision`: true when it is deleted, false when
/// the watch breaks.
async fn watch_delete(etcd: &Etcd, key: &str, revision: i64) -> bool {
    let Some(mut watching) = etcd.watch_from(key.as_bytes(), Vec::new(), revision).await else {
        return false;
    };
    while let Some(w) = watching.next().await {
        if w.canceled {
            return false;
        }
        if w.events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            return true;
        }
    }
    false
}
