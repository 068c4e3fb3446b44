//! One thread stores every session's batches: it takes what has queued
//! up (up to [`GROUP_RECORDS`] records) and stores it as one write, then
//! answers each session. At 10,000 agents a session's batch is a sample
//! or two; a blocking task and a store write each cost more than the
//! batch (a thread woken and parked per batch, and the engine writing and
//! syncing each batch it is given at once). The sessions keep their own
//! order (each waits for its answer before the next batch) and their own
//! flush-then-ack (`grpc::agent`); the thread flushes each group it
//! stored before it answers, so that those flushes find little to write
//! and the groups grow under load (one engine write and one flush for
//! many sessions).

use std::sync::Arc;
use std::sync::mpsc;

use picket_proto::v1;
use picket_store::StoreError;
use picket_store::records::Records;
use tokio::sync::oneshot;

use super::{IngestError, Origin, Sinks, finish, prepare};

/// At most about this many records are stored in one go.
pub const GROUP_RECORDS: usize = 16_384;

struct Job {
    agent: String,
    acked: u64,
    batch: Arc<v1::RecordBatch>,
    reply: oneshot::Sender<Result<u64, IngestError>>,
}

/// The handle sessions submit batches through.
pub struct Ingester {
    tx: mpsc::Sender<Job>,
}

impl Ingester {
    /// Starts the storing thread; it ends once every handle is dropped.
    pub fn start(to: Sinks) -> std::io::Result<Ingester> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("picket-ingest".into())
            .spawn(move || run(&to, &rx))?;
        Ok(Ingester { tx })
    }

    /// Stores `agent`'s batch (records above `acked`); returns the new
    /// acked number. Not yet durable: the caller flushes before it acks.
    pub async fn apply(
        &self,
        agent: &str,
        acked: u64,
        batch: Arc<v1::RecordBatch>,
    ) -> Result<u64, IngestError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            agent: agent.to_string(),
            acked,
            batch,
            reply,
        };
        let gone = || IngestError::Store(StoreError::Task("the ingest thread has stopped".into()));
        self.tx.send(job).map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn run(to: &Sinks, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut records = first.batch.records.len();
        let mut jobs = vec![first];
        while records < GROUP_RECORDS {
            match rx.try_recv() {
                Ok(job) => {
                    records += job.batch.records.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        store_group(to, jobs);
    }
}

/// Prepares each job's batch, stores those with new records in one write,
/// and answers every job.
fn store_group(to: &Sinks, jobs: Vec<Job>) {
    let mut replies = Vec::with_capacity(jobs.len());
    let mut heads = Vec::with_capacity(jobs.len());
    for job in jobs {
        replies.push(Some(job.reply));
        heads.push((job.agent, job.acked, job.batch));
    }
    let mut answer = |i: usize, r: Result<u64, IngestError>| {
        if let Some(reply) = replies.get_mut(i).and_then(Option::take) {
            // A session that went away meanwhile no longer waits.
            let _ = reply.send(r);
        }
    };
    let mut ready = Vec::with_capacity(heads.len());
    for (i, (agent, acked, batch)) in heads.iter().enumerate() {
        match prepare(to, agent, *acked, batch, Origin::Agent) {
            Ok(p) => ready.push(Some(p)),
            Err(e) => {
                ready.push(None);
                answer(i, Err(e));
            }
        }
    }
    let mut batches: Vec<(&str, Records<'_>, u64)> = heads
        .iter()
        .zip(ready.iter_mut())
        .filter_map(|((agent, acked, _), p)| {
            let p = p.as_mut()?;
            (p.last != *acked).then(|| (agent.as_str(), std::mem::take(&mut p.out), p.last))
        })
        .collect();
    let stored = if batches.is_empty() {
        Ok(())
    } else {
        to.feed.store_many(&mut batches)
    };
    drop(batches);
    match stored {
        Ok(()) => {
            // Durable now, in this thread, while the next group queues:
            // each session's own grouped flush (its ack waits on that)
            // then finds nothing or little to write. A failure here is
            // that flush's to meet and handle, as before.
            if let Err(error) = to.feed.flush() {
                tracing::debug!(%error, "ingest: flush after a group failed");
            }
            for (i, ((agent, acked, _), p)) in heads.iter().zip(ready).enumerate() {
                if let Some(p) = p {
                    answer(i, Ok(finish(to, agent, *acked, p)));
                }
            }
        }
        Err(e) => {
            // Every job of the group is refused alike; each session waits
            // for the store and submits its batch again.
            let text = e.to_string();
            let mut first = Some(e);
            for (i, p) in ready.iter().enumerate() {
                if p.is_some() {
                    let e = first
                        .take()
                        .unwrap_or_else(|| StoreError::Write(text.clone()));
                    answer(i, Err(IngestError::Store(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use picket_proto::frame;
    use picket_proto::v1::record::Payload;
    use picket_store::backend::Sled;
    use picket_store::faults::Faulty;
    use picket_store::{Store, StoreError};

    use super::*;

    fn line(seq: u64, text: &str) -> v1::Record {
        v1::Record {
            seq,
            payload: Some(Payload::Log(v1::LogLine {
                source: "raw".into(),
                line: text.into(),
                read_unix_ms: 1_000,
                ..Default::default()
            })),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_sessions_batches_are_stored_each_once_and_a_refused_group_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(Faulty::new(Arc::new(
            Sled::open(&dir.path().join("store")).unwrap(),
        )));
        let store = Store::with_backend(faulty.clone());
        let sinks = crate::ingest::tests::sinks(&store);
        let ing = Arc::new(Ingester::start(sinks.clone()).unwrap());
        // 50 hosts, three batches each, submitted at once: the thread takes
        // them in groups; every session gets its own acked number back.
        let mut tasks = Vec::new();
        for h in 0..50 {
            let ing = ing.clone();
            tasks.push(tokio::spawn(async move {
                let host = format!("h{h:02}");
                let mut acked = 0;
                for b in 0..3u64 {
                    let batch = frame::batch_of(&[
                        line(b * 2 + 1, &format!("{host} {b} a")),
                        line(b * 2 + 2, &format!("{host} {b} b")),
                    ]);
                    acked = ing.apply(&host, acked, Arc::new(batch)).await.unwrap();
                    assert_eq!(acked, b * 2 + 2);
                }
                // A replay of the last batch is a repeat: nothing new.
                let again = frame::batch_of(&[line(5, "x"), line(6, "y")]);
                assert_eq!(ing.apply(&host, acked, Arc::new(again)).await.unwrap(), 6);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let lines: Vec<_> = store
            .logs_since(0, None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 300, "each line once");
        for h in 0..50 {
            assert_eq!(store.acked_seq(&format!("h{h:02}")).unwrap(), 6);
        }
        assert_eq!(
            sinks
                .counters
                .duplicates
                .load(std::sync::atomic::Ordering::Relaxed),
            100
        );

        // The store refuses: every session of the group is told, nothing is
        // stored, and the same batches go through once it accepts.
        faulty.fail(true);
        let batch = |h: &str| Arc::new(frame::batch_of(&[line(7, &format!("{h} late"))]));
        let (a, b) = tokio::join!(
            ing.apply("h00", 6, batch("h00")),
            ing.apply("h01", 6, batch("h01"))
        );
        for r in [a, b] {
            assert!(
                matches!(
                    r,
                    Err(IngestError::Store(StoreError::Write(_))
                        | IngestError::Store(StoreError::Engine(_)))
                ),
                "{r:?}"
            );
        }
        assert_eq!(store.acked_seq("h00").unwrap(), 6);
        faulty.fail(false);
        let (a, b) = tokio::join!(
            ing.apply("h00", 6, batch("h00")),
            ing.apply("h01", 6, batch("h01"))
        );
        assert_eq!((a.unwrap(), b.unwrap()), (7, 7));
        let lines: Vec<_> = store
            .logs_since(0, None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 302);
    }
}
