//! Ingest: records from an agent's stream into the store, exactly once.
//!
//! Records at or below the agent's acked sequence number are repeats (a
//! replay after a reconnect) and are skipped. The rest are written in one
//! atomic batch with the new acked number; the session acks them on the
//! wire once a flush has made them durable (`grpc::agent`).

mod worker;
pub use worker::{GROUP_RECORDS, Ingester};

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use picket_proto::frame::FrameError;
use picket_proto::scan::{self, PayloadView};
use picket_proto::v1;
use prost::Message;

use std::sync::Arc;

use crate::counters::Counters;
use crate::feed::Feed;
use crate::fleet::Fleet;
use picket_clock::now_ms;
use picket_store::StoreError;
use picket_store::metrics::{Point, Sample};
use picket_store::records::{Records, Wire};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record {seq} is out of order (after {after})")]
    OutOfOrder { seq: u64, after: u64 },
}

/// What ingest writes to: the feed (the store, and live followers), each
/// host's newest sample, and the counters.
#[derive(Clone)]
pub struct Sinks {
    /// A sample dated further ahead than this (`[limits] sample_ahead`) is
    /// stored at its receive time: one dated in the future would outlive
    /// every retention.
    pub sample_ahead_ms: i64,
    pub feed: Arc<Feed>,
    pub fleet: Arc<Fleet>,
    pub counters: Arc<Counters>,
    /// What the alert rules can use of each batch.
    pub alerts: Arc<picket_tap::Tap>,
}

#[derive(Clone, Copy, PartialEq)]
enum Origin {
    Agent,
    ControlPlane,
}

/// The source of the control plane's own events (SPEC §9).
pub const OWN_SOURCE: &str = "picket";

fn store_batch(
    to: &Sinks,
    agent: &str,
    acked: u64,
    batch: &v1::RecordBatch,
    origin: Origin,
) -> Result<u64, IngestError> {
    let mut p = prepare(to, agent, acked, batch, origin)?;
    if p.last != acked {
        to.feed.store(agent, std::mem::take(&mut p.out), p.last)?;
    }
    Ok(finish(to, agent, acked, p))
}

/// A batch decoded and checked, ready to store: its records, the new
/// acked number, and what is counted and told once it is stored.
struct Prepared<'a> {
    out: Records<'a>,
    last: u64,
    newest: Option<Sample>,
    tap: Option<picket_tap::Collector>,
    repeats: u64,
    rejected: u64,
    clamped: u64,
    first_error: Option<(u64, FrameError)>,
}

/// Decodes and checks `agent`'s batch (records above `acked`) for storing.
///
/// Events and log lines are stored as the agent encoded them, once
/// checked (`scan`); a record that does not decode is skipped and counted
/// (`rejected`), and its sequence number still acked, so that one bad
/// record cannot stall the agent's stream.
fn prepare<'a>(
    to: &Sinks,
    agent: &str,
    acked: u64,
    batch: &'a v1::RecordBatch,
    origin: Origin,
) -> Result<Prepared<'a>, IngestError> {
    let mut out = Records::default();
    let received = now_ms();
    let mut last = acked;
    let (mut repeats, mut rejected, mut clamped) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut tap = to.alerts.collector(agent, received).map(|c| {
        if origin == Origin::Agent {
            c
        } else {
            c.not_alive()
        }
    });
    for bytes in &batch.records {
        let r = match scan::record(bytes) {
            Ok(r) => r,
            Err(e) => {
                // Its sequence number is unknown, but entries are framed
                // one by one: the next record's number moves past it.
                rejected += 1;
                first_error.get_or_insert((last + 1, e));
                continue;
            }
        };
        if r.seq <= last {
            if r.seq <= acked {
                repeats += 1;
                continue;
            }
            return Err(IngestError::OutOfOrder {
                seq: r.seq,
                after: last,
            });
        }
        last = r.seq;
        let wire = |payload, time_ms| Wire {
            id: 0,
            seq: r.seq,
            time_ms,
            received_ms: received,
            payload: Cow::Borrowed(payload),
        };
        let stored = match r.payload {
            PayloadView::Event(p) => scan::event_check(p).and_then(|(t, head)| {
                if head.source == OWN_SOURCE && origin == Origin::Agent {
                    return Err(FrameError::Malformed(
                        "source \"picket\" is the control plane's own; refused from an agent",
                    ));
                }
                if let Some(c) = &mut tap {
                    c.event(p, &head);
                }
                out.events.push(wire(p, t));
                Ok(())
            }),
            PayloadView::Log(p) => scan::log_time(p).map(|t| out.logs.push(wire(p, t))),
            PayloadView::Metrics(p) => v1::MetricSample::decode(p)
                .map(|m| {
                    let mut s = sample(m);
                    if s.time_ms > received.saturating_add(to.sample_ahead_ms) {
                        s.time_ms = received;
                        clamped += 1;
                    }
                    if let Some(c) = &mut tap {
                        c.sample(&s.points);
                    }
                    out.samples.push(s)
                })
                .map_err(FrameError::from),
            // An empty record still takes its sequence number.
            PayloadView::None => Ok(()),
        };
        if let Err(e) = stored {
            rejected += 1;
            first_error.get_or_insert((r.seq, e));
        }
    }
    let newest = out.samples.iter().max_by_key(|s| s.time_ms).cloned();
    Ok(Prepared {
        out,
        last,
        newest,
        tap,
        repeats,
        rejected,
        clamped,
        first_error,
    })
}

/// After a prepared batch is stored: the host's newest sample, the alert
/// tap, the counters. Returns the new acked number.
fn finish(to: &Sinks, agent: &str, acked: u64, p: Prepared<'_>) -> u64 {
    // Counted once stored: a batch the store refused is applied again.
    if p.last != acked {
        if let Some(newest) = p.newest {
            to.fleet.set_latest(agent, newest);
        }
        if let Some(c) = p.tap {
            to.alerts.send_blocking(c);
        }
    }
    let counters = &to.counters;
    counters.duplicates.fetch_add(p.repeats, Ordering::Relaxed);
    counters
        .samples_clamped
        .fetch_add(p.clamped, Ordering::Relaxed);
    if let Some((seq, error)) = p.first_error {
        counters.rejected.fetch_add(p.rejected, Ordering::Relaxed);
        tracing::warn!(%agent, seq, %error, rejected = p.rejected, "skipped records that do not decode");
    }
    p.last
}

/// Stores an event the control plane raises itself (a finished rollout)
/// as the next record of host `host`, durably.
pub fn own_event(to: &Sinks, host: &str, event: v1::Event) -> Result<(), IngestError> {
    let acked = to.feed.acked_seq(host)?;
    let record = v1::Record {
        seq: acked + 1,
        payload: Some(v1::record::Payload::Event(event)),
    };
    store_batch(
        to,
        host,
        acked,
        &picket_proto::frame::batch_of(&[record]),
        Origin::ControlPlane,
    )?;
    to.feed.flush()?;
    Ok(())
}

fn sample(m: v1::MetricSample) -> Sample {
    Sample {
        time_ms: m.time_unix_ms,
        points: m
            .gauges
            .into_iter()
            .filter(|g| !g.name.is_empty())
            .map(|g| Point {
                name: g.name,
                labels: g.labels.into_iter().collect(),
                value: g.value,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use picket_model::Severity;
    use picket_proto::frame;
    use picket_proto::v1::record::Payload;

    use super::*;
    use picket_store::Store;

    pub(super) fn sinks(store: &Store) -> Sinks {
        Sinks {
            sample_ahead_ms: 300_000,
            feed: Arc::new(
                Feed::new(
                    Arc::new(store.clone()),
                    Default::default(),
                    Default::default(),
                )
                .unwrap(),
            ),
            fleet: Default::default(),
            counters: Default::default(),
            alerts: picket_tap::Tap::detached(),
        }
    }

    /// An agent's batch stored as a session stores it (the ingest thread
    /// does the same, many at a time: `worker`).
    fn apply(
        to: &Sinks,
        agent: &str,
        acked: u64,
        batch: &v1::RecordBatch,
    ) -> Result<u64, IngestError> {
        store_batch(to, agent, acked, batch, Origin::Agent)
    }

    fn record(seq: u64, p: Payload) -> v1::Record {
        v1::Record {
            seq,
            payload: Some(p),
        }
    }

    #[test]
    fn records_are_stored_as_sent_and_bad_ones_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
        let st = sinks(&store);
        let event = v1::Event {
            source: "suricata".into(),
            path: "/eve".into(),
            kind: "alert".into(),
            severity: v1::Severity::High as i32,
            message: "m".into(),
            fields: [("signature".to_string(), "ET x".to_string())].into(),
            time_unix_ms: 5_000,
        };
        let line = v1::LogLine {
            source: "suricata".into(),
            line: "l".into(),
            read_unix_ms: 6_000,
            ..Default::default()
        };
        let mut batch = frame::batch_of(&[
            record(1, Payload::Event(event.clone())),
            record(2, Payload::Log(line)),
            record(4, Payload::Metrics(v1::MetricSample::default())),
        ]);
        // Seq 3: an event whose message is not UTF-8.
        let mut bad =
            frame::batch_of(&[record(3, Payload::Event(event.clone()))]).records[0].to_vec();
        let m = bad.iter().rposition(|b| *b == b'm').unwrap();
        bad[m] = 0xff;
        batch.records.insert(2, bad.into());

        assert_eq!(apply(&st, "h", 0, &batch).unwrap(), 4);
        assert_eq!(st.counters.rejected.load(Ordering::Relaxed), 1);
        let events: Vec<_> = store
            .events_since(0, None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!((e.host.as_str(), e.seq, e.time_ms), ("h", 1, 5_000));
        assert_eq!((e.kind.as_str(), e.severity), ("alert", Severity::High));
        assert_eq!(e.fields["signature"], "ET x");
        let logs: Vec<_> = store
            .logs_since(0, None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            (logs[0].line.as_str(), logs[0].time_ms, logs[0].seq),
            ("l", 6_000, 2)
        );
        assert_eq!(store.acked_seq("h").unwrap(), 4);

        // A replay is skipped; a record too broken to show its sequence
        // number is skipped too, and the next one still stored.
        assert_eq!(apply(&st, "h", 4, &batch).unwrap(), 4);
        assert_eq!(st.counters.duplicates.load(Ordering::Relaxed), 4);
        let mut broken = frame::batch_of(&[record(6, Payload::Event(event))]);
        broken.records.insert(0, vec![0x0a, 0x7f].into());
        assert_eq!(apply(&st, "h", 4, &broken).unwrap(), 6);
        assert_eq!(st.counters.rejected.load(Ordering::Relaxed), 2);
        assert_eq!(store.events_since(0, None).unwrap().count(), 2);
    }

    #[test]
    fn a_sample_dated_hours_ahead_is_stored_at_its_receive_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
        let st = sinks(&store);
        let now = picket_clock::now_ms();
        let sample = |t: i64| {
            Payload::Metrics(v1::MetricSample {
                time_unix_ms: t,
                gauges: vec![v1::Gauge {
                    name: "load1".into(),
                    value: 1.0,
                    ..Default::default()
                }],
            })
        };
        let batch = frame::batch_of(&[
            record(1, sample(now + 3_600_000)),
            record(2, sample(now - 1_000)),
        ]);
        assert_eq!(apply(&st, "h", 0, &batch).unwrap(), 2);
        assert_eq!(st.counters.samples_clamped.load(Ordering::Relaxed), 1);
        let times: Vec<i64> = store
            .samples("h", 0, i64::MAX)
            .unwrap()
            .iter()
            .map(|s| s.time_ms)
            .collect();
        assert_eq!(times.len(), 2);
        assert!(
            times.iter().all(|t| *t <= picket_clock::now_ms()),
            "{times:?}"
        );
    }

    #[test]
    fn the_control_planes_own_source_is_refused_from_agents() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
        let st = sinks(&store);
        let forged = v1::Event {
            source: OWN_SOURCE.into(),
            kind: "rollout_failed".into(),
            severity: v1::Severity::High as i32,
            message: "rollout r-1: failed".into(),
            time_unix_ms: 5_000,
            ..Default::default()
        };
        let batch = frame::batch_of(&[record(1, Payload::Event(forged.clone()))]);
        assert_eq!(apply(&st, "h", 0, &batch).unwrap(), 1, "acked, not stored");
        assert_eq!(st.counters.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(store.events_since(0, None).unwrap().count(), 0);
        // The control plane's own are stored.
        own_event(&st, "cp", forged).unwrap();
        let e: Vec<_> = store
            .events_since(0, None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!((e.len(), e[0].host.as_str()), (1, "cp"));
    }
}
