//! A small client for etcd's v3 API (the KV, Lease and Watch services,
//! generated from etcd's own protobuf files: proto/README.md). It talks to
//! one member at a time, as etcd's Go client does, and moves to the next
//! when that one fails or does not answer within [`ATTEMPT_TIMEOUT`]; a
//! call fails only when every member did, so an etcd without quorum is an
//! error the caller sees within seconds, not a hang.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::pb::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::request_op::Request;
use pb::watch_client::WatchClient;

/// How long one member has to answer one call before the next is tried:
/// longer than an etcd leader election (about a second).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// TLS to etcd: the CA that signed its members' certificates, and this
/// replica's client certificate and key when etcd asks for one (PEM).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub identity: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("bad etcd endpoint {0:?}: expected http://HOST:PORT, or https:// with TLS settings")]
    BadEndpoint(String),
    #[error("TLS to etcd: {0}")]
    Tls(String),
    #[error("no etcd endpoint given")]
    NoEndpoint,
    /// No member could be reached, or none has quorum.
    #[error("etcd unavailable (no member of {endpoints} answered): {last}")]
    Unavailable { endpoints: String, last: String },
    /// A fenced write made by a replica that no longer leads.
    #[error("not the leader any more: the write was refused by etcd")]
    Deposed,
    #[error("etcd refused the call: {0}")]
    Refused(String),
}

/// Whether a failed call may go to another member: the member is down,
/// cut off, or without a leader (etcd answers those `Unavailable`).
fn moves_on(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

fn text(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    }
}

/// A connection to an etcd cluster (cheap to clone: shared channels).
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// The member calls go to now.
    at: AtomicUsize,
    /// Whether the last call had an answer.
    up: AtomicBool,
}

impl Etcd {
    /// [`Etcd::connect_with`], TLS from PEM files when `ca` is given (and a
    /// client certificate when `cert` and `key` are).
    pub fn connect_files(
        endpoints: &[String],
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Etcd, EtcdError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| EtcdError::Tls(format!("cannot read {}: {e}", p.display())))
        };
        let tls = match ca {
            None => None,
            Some(ca) => Some(EtcdTls {
                ca_pem: read(ca)?,
                identity: match (cert, key) {
                    (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                    _ => None,
                },
            }),
        };
        Etcd::connect_with(endpoints, tls.as_ref())
    }

    /// Channels to `endpoints` (`http://HOST:PORT`, one per member).
    /// Connects lazily: an etcd that is down makes calls fail, not this.
    pub fn connect(endpoints: &[String]) -> Result<Etcd, EtcdError> {
        Etcd::connect_with(endpoints, None)
    }

    /// [`Etcd::connect`], over TLS to `https://` endpoints when `tls`.
    pub fn connect_with(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Etcd, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoint);
        }
        let tls_config = tls.map(|t| {
            let cfg = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca_pem));
            match &t.identity {
                Some((cert, key)) => cfg.identity(tonic::transport::Identity::from_pem(cert, key)),
                None => cfg,
            }
        });
        let mut channels = Vec::new();
        for e in endpoints {
            let scheme_ok = match tls {
                Some(_) => e.starts_with("https://"),
                None => e.starts_with("http://"),
            };
            if !scheme_ok {
                return Err(EtcdError::BadEndpoint(e.clone()));
            }
            let mut ep =
                Endpoint::from_shared(e.clone()).map_err(|_| EtcdError::BadEndpoint(e.clone()))?;
            if let Some(cfg) = &tls_config {
                ep = ep
                    .tls_config(cfg.clone())
                    .map_err(|x| EtcdError::Tls(format!("{e}: {x}")))?;
            }
            let ep = ep
                .connect_timeout(ATTEMPT_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true);
            channels.push(ep.connect_lazy());
        }
        let at = rand::random_range(0..channels.len());
        Ok(Etcd {
            inner: Arc::new(Inner {
                endpoints: endpoints.to_vec(),
                channels,
                at: AtomicUsize::new(at),
                up: AtomicBool::new(false),
            }),
        })
    }

    /// Whether etcd answered the last call (a quorum behind it).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::SeqCst)
    }

    pub(crate) fn answered(&self, up: bool) {
        self.inner.up.store(up, Ordering::SeqCst);
    }

    /// The members, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The member calls go to now, and its channel.
    pub(crate) fn pinned(&self) -> (usize, Channel) {
        let i = self.inner.at.load(Ordering::SeqCst) % self.inner.channels.len();
        (i, self.inner.channels[i].clone())
    }

    /// Member `i` failed: later calls go to the next (unless another
    /// caller moved on already).
    pub(crate) fn move_on(&self, i: usize) {
        let n = self.inner.channels.len();
        let _ = self
            .inner
            .at
            .compare_exchange(i, (i + 1) % n, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Runs `call` on the pinned member, then on each other in turn while
    /// they fail in a way another member may not.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = String::new();
        for _ in 0..self.inner.channels.len() {
            let (i, ch) = self.pinned();
            match tokio::time::timeout(ATTEMPT_TIMEOUT, call(ch)).await {
                Ok(Ok(r)) => {
                    self.answered(true);
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) if !moves_on(&s) => {
                    self.answered(true);
                    return Err(EtcdError::Refused(text(&s)));
                }
                Ok(Err(s)) => last = text(&s),
                Err(_) => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            }
            self.move_on(i);
        }
        self.answered(false);
        Err(EtcdError::Unavailable {
            endpoints: self.inner.endpoints.join(","),
            last,
        })
    }

    pub(crate) fn lease(ch: Channel) -> LeaseClient<Channel> {
        LeaseClient::new(ch)
    }

    /// The keys from `key` up to `range_end` (none: `key` alone).
    async fn range(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
    ) -> Result<pb::RangeResponse, EtcdError> {
        let req = pb::RangeRequest {
            key,
            range_end,
            ..Default::default()
        };
        self.call(|ch| {
            let req = req.clone();
            async move { KvClient::new(ch).range(req).await }
        })
        .await
    }

    /// A watch of the keys from `key` up to `range_end` from `revision`
    /// on the pinned member; `None` (and the next member pinned) when it
    /// cannot be opened. etcd answers the stream once it has the request,
    /// so the request is queued before the stream opens.
    pub(crate) async fn watch_from(
        &self,
        key: &[u8],
        range_end: Vec<u8>,
        revision: i64,
    ) -> Option<Watching> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: key.to_vec(),
                    range_end,
                    start_revision: revision,
                    // Progress reports while nothing changes.
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        tx.send(create).await.ok()?;
        let (member, ch) = self.pinned();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, WatchClient::new(ch).watch(stream)).await {
            Ok(Ok(s)) => Some(Watching {
                etcd: self.clone(),
                member,
                inbound: s.into_inner(),
                _requests: tx,
            }),
            _ => {
                self.move_on(member);
                None
            }
        }
    }

    /// The value of `key` and its create revision, if it exists; and the
    /// store's revision when read.
    pub async fn get(&self, key: &str) -> Result<(Option<Kv>, i64), EtcdError> {
        let r = self.range(key.as_bytes().to_vec(), Vec::new()).await?;
        let rev = r.header.map_or(0, |h| h.revision);
        Ok((r.kvs.into_iter().next().map(Kv::from), rev))
    }

    /// Every key under `prefix` with its value, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
        let (all, _) = self.list_at(prefix).await?;
        Ok(all
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    /// [`Etcd::list`], raw keys, and the store's revision when read.
    pub async fn list_at(&self, prefix: &str) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, i64), EtcdError> {
        let p = prefix.as_bytes();
        let r = self.range(p.to_vec(), prefix_end(p)).await?;
        let revision = r.header.map_or(0, |h| h.revision);
        Ok((
            r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            revision,
        ))
    }

    /// One transaction: `success` if every `compare` holds, else `failure`.
    /// A transaction that timed out on one member is sent to the next, so
    /// it may be applied twice: callers send only what is the same done
    /// twice (puts of whole values, a create that checks who holds the key).
    pub async fn txn(
        &self,
        compare: Vec<pb::Compare>,
        success: Vec<pb::RequestOp>,
        failure: Vec<pb::RequestOp>,
    ) -> Result<pb::TxnResponse, EtcdError> {
        let req = pb::TxnRequest {
            compare,
            success,
            failure,
        };
        self.call(|ch| {
            let req = req.clone();
            async move { KvClient::new(ch).txn(req).await }
        })
        .await
    }

    /// `keys` read in one transaction (one revision for all), and that
    /// revision.
    pub async fn get_many(&self, keys: &[Vec<u8>]) -> Result<(Vec<Option<Kv>>, i64), EtcdError> {
        let r = self
            .txn(Vec::new(), keys.iter().map(get_op).collect(), Vec::new())
            .await?;
        let revision = r.header.map_or(0, |h| h.revision);
        let values = r
            .responses
            .into_iter()
            .map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(range)) => {
                    range.kvs.into_iter().next().map(Kv::from)
                }
                _ => None,
            })
            .collect();
        Ok((values, revision))
    }

    /// `ops` if every `compare` holds: the revision they were written at,
    /// or `None` when a compare failed (nothing written).
    pub async fn commit(
        &self,
        compare: Vec<pb::Compare>,
        ops: Vec<pb::RequestOp>,
    ) -> Result<Option<i64>, EtcdError> {
        let r = self.txn(compare, ops, Vec::new()).await?;
        Ok(r.succeeded.then(|| r.header.map_or(0, |h| h.revision)))
    }

    /// A lease of `ttl` seconds: its id and granted TTL.
    pub async fn grant(&self, ttl: i64) -> Result<(i64, i64), EtcdError> {
        let r = self
            .call(|ch| async move {
                Etcd::lease(ch)
                    .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                    .await
            })
            .await?;
        Ok((r.id, r.ttl))
    }

    /// Ends lease `id` now: the keys attached to it go.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call(|ch| async move {
            Etcd::lease(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
        })
        .await
        .map(|_| ())
    }
}

/// An open watch on one member. The request side stays open as long as
/// this lives (closing it would end the client's half of the stream).
pub(crate) struct Watching {
    etcd: Etcd,
    member: usize,
    inbound: tonic::Streaming<pb::WatchResponse>,
    _requests: tokio::sync::mpsc::Sender<pb::WatchRequest>,
}

impl Watching {
    /// The next response; `None` once the stream broke, and then later
    /// calls go to the next member.
    pub(crate) async fn next(&mut self) -> Option<pb::WatchResponse> {
        match self.inbound.message().await {
            Ok(Some(w)) => Some(w),
            _ => {
                self.etcd.move_on(self.member);
                None
            }
        }
    }
}

/// A key's value and the revision that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl From<crate::pb::mvccpb::KeyValue> for Kv {
    fn from(kv: crate::pb::mvccpb::KeyValue) -> Kv {
        Kv {
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// A put of `key` (attached to `lease` unless 0).
pub fn put(key: impl AsRef<[u8]>, value: &[u8], lease: i64) -> pb::PutRequest {
    pb::PutRequest {
        key: key.as_ref().to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    }
}

/// [`put`] as a transaction's operation.
pub fn put_op(key: impl AsRef<[u8]>, value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(put(key, value, lease))),
    }
}

/// A read of `key` as a transaction's operation.
pub fn get_op(key: impl AsRef<[u8]>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestRange(pb::RangeRequest {
            key: key.as_ref().to_vec(),
            ..Default::default()
        })),
    }
}

/// A delete of `key` as a transaction's operation.
pub fn delete_op(key: impl AsRef<[u8]>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.as_ref().to_vec(),
            ..Default::default()
        })),
    }
}

/// Holds when `key` was created at `revision` (0: `key` does not exist).
pub fn created_at(key: impl AsRef<[u8]>, revision: i64) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.as_ref().to_vec(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        range_end: Vec::new(),
    }
}

/// Holds when `key` was last written at `revision`.
pub fn modified_at(key: impl AsRef<[u8]>, revision: i64) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_ref().to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

/// Holds when `key` holds `value`.
pub fn value_is(key: impl AsRef<[u8]>, value: &[u8]) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: key.as_ref().to_vec(),
        target_union: Some(TargetUnion::Value(value.to_vec())),
        range_end: Vec::new(),
    }
}

/// The end of the range of every key starting with `prefix` (etcd's
/// `WithPrefix`): the prefix with its last byte below 0xff plus one.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_range_ends_past_every_key_under_it() {
        assert_eq!(
            super::prefix_end(b"/picket/replicas/"),
            b"/picket/replicas0"
        );
        assert_eq!(super::prefix_end(b"a\xff"), b"b");
        assert_eq!(super::prefix_end(b"\xff"), vec![0]);
    }
}
