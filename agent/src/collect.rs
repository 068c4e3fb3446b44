//! Runs the configured sources: inotify wakes it, each [`Tailer`] reads
//! what is new, each [`Parser`] makes events, and the lines, the events and
//! the source's new read position go to the buffer in one batch: the
//! batches of every source that had something new on one wake-up go as one
//! push (one fsync). Reading and parsing run on one thread, buffer writes
//! on another (a queue of two pushes between them), so that parsing the
//! next batch overlaps writing the last; both block on file I/O.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use picket_proto::frame::{EventRef, LogRef};
use tokio_util::sync::CancellationToken;

use crate::buffer::{Buffer, BufferError, Encoded};
use crate::tail::{Line, Position, Tailer};
use picket_config::agent::{AgentConfig, SourceConfig};
use picket_sources::Parser;

/// Lines per buffer batch.
pub const BATCH_LINES: usize = 2000;

/// Lines no parser recognised (kept as `other`), since start.
pub static UNPARSED: AtomicU64 = AtomicU64::new(0);

/// Saved read positions that could not be read back at start (the source
/// then started afresh), since start.
pub static BAD_POSITIONS: AtomicU64 = AtomicU64::new(0);

struct Source {
    cfg: SourceConfig,
    key: String,
    tailer: Tailer,
    parser: Parser,
}

/// One source's batch for the buffer: records and the read position after
/// them, committed together.
struct Write {
    /// Encoded here, on the reading thread, which also frees the parsed
    /// records: the writer only copies bytes.
    records: Encoded,
    key: String,
    position: Vec<u8>,
}

/// Tails every source until `shutdown`. Returns when cancelled.
pub fn run(cfg: &AgentConfig, buffer: Arc<Buffer>, shutdown: CancellationToken) {
    let mut sources: Vec<Source> = cfg
        .sources
        .iter()
        .map(|s| {
            let key = s.path.display().to_string();
            let saved = saved_position(&buffer, s);
            Source {
                tailer: Tailer::new(&s.path, saved, cfg.max_line_bytes, s.from_start),
                parser: Parser::for_kind(s.kind),
                key,
                cfg: s.clone(),
            }
        })
        .collect();
    if sources.is_empty() {
        return;
    }

    // Watch each source's folder: creation and renames show up there.
    // Wake-ups coalesce: one pending is enough to make the loop read
    // again, so a busy file's events cannot pile up while it reads.
    let (wake_tx, wake) = mpsc::sync_channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = wake_tx.try_send(());
    });
    let dirs: BTreeSet<PathBuf> = cfg
        .sources
        .iter()
        .filter_map(|s| s.path.parent().map(PathBuf::from))
        .collect();
    match &mut watcher {
        Ok(w) => {
            for d in &dirs {
                if let Err(error) = w.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %d.display(), %error, "cannot watch; polling it every second");
                }
            }
        }
        Err(error) => tracing::warn!(%error, "inotify unavailable; polling every second"),
    }

    let (queue, writes) = mpsc::sync_channel::<Vec<Write>>(2);
    let writer = {
        let (buffer, shutdown) = (buffer.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("picket-writer".into())
            .spawn(move || write_all(&buffer, writes, &shutdown))
    };
    let writer = match writer {
        Ok(w) => w,
        Err(error) => {
            tracing::error!(%error, "cannot start the buffer writer; sources not read");
            return;
        }
    };
    while !shutdown.is_cancelled() {
        let mut busy = false;
        let mut group = Vec::new();
        for s in &mut sources {
            match pump(s) {
                Ok(None) => {}
                Ok(Some((write, n))) => {
                    busy |= n >= BATCH_LINES;
                    group.push(write);
                }
                Err(e) => {
                    tracing::warn!(path = %s.cfg.path.display(), error = %e, "source read failed");
                }
            }
        }
        if !group.is_empty() && queue.send(group).is_err() {
            break;
        }
        if busy {
            continue;
        }
        // Sleep until inotify says something changed; poll now and then
        // anyway, in case an event was missed (queue overflow, NFS).
        let _ = wake.recv_timeout(Duration::from_secs(1));
        while wake.try_recv().is_ok() {}
    }
    drop(queue);
    let _ = writer.join();
}

/// The read position saved for `s`, if one is saved and readable. One that
/// cannot be read (a damaged store) is logged and counted, and the source
/// starts afresh: at the end of the file, or at its start with
/// `from_start`. The log line says which, so an operator knows what was
/// skipped or may show again.
fn saved_position(buffer: &Buffer, s: &SourceConfig) -> Option<Position> {
    let path = s.path.display();
    let bad = |error: String| {
        BAD_POSITIONS.fetch_add(1, Ordering::Relaxed);
        let size = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
        if s.from_start {
            tracing::error!(%path, %error, "saved read position unreadable; reading the file from its start, so lines already sent may be sent again");
        } else {
            tracing::error!(%path, %error, skipped_bytes = size, "saved read position unreadable; reading from the end of the file, so lines written since the last position saved (up to skipped_bytes) are not read");
        }
        None
    };
    match buffer.position(&s.path.display().to_string()) {
        Ok(None) => None,
        Ok(Some(b)) => match serde_json::from_slice::<Position>(&b) {
            Ok(p) => Some(p),
            Err(e) => bad(format!("bad position record: {e}")),
        },
        Err(e) => bad(e.to_string()),
    }
}

/// Buffers each group of batches in order. A group the buffer cannot take
/// yet (full of events, or a failed write) is retried until it can: the
/// reader has moved past its lines, so giving up would lose them, and
/// waiting holds the reader back through the queue. Only at shutdown is a
/// group abandoned, and then its read positions were never committed
/// either: the lines are read again after the restart.
fn write_all(buffer: &Buffer, writes: mpsc::Receiver<Vec<Write>>, shutdown: &CancellationToken) {
    for group in writes {
        let records: Vec<&Encoded> = group.iter().map(|w| &w.records).collect();
        let positions: Vec<(&str, &[u8])> = group
            .iter()
            .map(|w| (w.key.as_str(), w.position.as_slice()))
            .collect();
        loop {
            match buffer.push_encoded(&records, &positions) {
                Ok(_) => break,
                Err(BufferError::Full(_)) => {
                    // Events are never dropped: wait for acks to make room.
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot buffer lines; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// Reads and parses one batch from a source; returns it with the number
/// of lines read, or `None` when there was nothing new.
fn pump(s: &mut Source) -> std::io::Result<Option<(Write, usize)>> {
    let lines = s.tailer.poll(BATCH_LINES)?;
    let n = lines.len();
    // Short of a full batch means the end of the file: a multi-line block
    // is then complete.
    let records = records(
        s.cfg.kind.as_str(),
        &s.key,
        &mut s.parser,
        &lines,
        picket_clock::now_ms(),
        n < BATCH_LINES,
    );
    if records.is_empty() {
        return Ok(None);
    }
    let position = s
        .tailer
        .position()
        .map(|p| serde_json::to_vec(&p).unwrap_or_default())
        .unwrap_or_default();
    Ok(Some((
        Write {
            records,
            key: s.key.clone(),
            position,
        },
        n,
    )))
}

/// The records a batch of lines makes, encoded: each line for the log
/// store, then the events parsed from them. `at_end` flushes a parser's
/// held-back multi-line block. Events are encoded from what the parser
/// borrowed from the lines, with no owned copy in between.
pub fn records(
    source: &str,
    path: &str,
    parser: &mut Parser,
    lines: &[Line],
    read_ms: i64,
    at_end: bool,
) -> Encoded {
    let text: usize = lines.iter().map(|l| l.text.len()).sum();
    let mut out = Encoded::with_capacity(lines.len() * 2, text * 3);
    let mut parsed = Vec::with_capacity(lines.len());
    for l in lines {
        parser.feed(&l.text, read_ms, &mut parsed);
        out.push_log(&LogRef {
            source,
            path,
            line: &l.text,
            read_unix_ms: read_ms,
            truncated: l.truncated,
            invalid_utf8: l.invalid_utf8,
        });
    }
    if at_end {
        parser.flush(&mut parsed);
    }
    for p in &parsed {
        if !p.parsed {
            UNPARSED.fetch_add(1, Ordering::Relaxed);
        }
        out.push_event(&EventRef {
            source,
            path,
            kind: &p.kind,
            severity: p.severity.into(),
            message: &p.message,
            fields: p.fields.iter(),
            time_unix_ms: p.time_ms.unwrap_or(read_ms),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use picket_proto::frame;
    use picket_proto::v1::{self, record::Payload};
    use prost::Message;

    use super::*;
    use picket_model::SourceKind;

    fn line(text: &str) -> Line {
        Line {
            text: text.to_string(),
            truncated: false,
            invalid_utf8: false,
        }
    }

    /// The records of a batch, decoded with the generated types.
    fn decoded(e: &Encoded) -> Vec<Payload> {
        let mut batch = Vec::new();
        for (seq, (bytes, _)) in (1..).zip(e.iter()) {
            frame::put_encoded(seq, bytes, &mut batch);
        }
        frame::decode_records(&v1::RecordBatch::decode(&batch[..]).unwrap())
            .unwrap()
            .into_iter()
            .map(|r| r.payload.unwrap())
            .collect()
    }

    #[test]
    fn a_batch_is_its_lines_then_their_events() {
        let eve = r#"{"timestamp":"2024-12-16T18:00:15.123456+0000","event_type":"alert","src_ip":"192.0.2.1","alert":{"signature":"a \"q\"","severity":1}}"#;
        let lines = [line(eve), line("not json")];
        let mut parser = Parser::for_kind(SourceKind::Suricata);
        let got = decoded(&records("suricata", "/eve", &mut parser, &lines, 99, false));
        assert_eq!(got.len(), 4, "{got:#?}");
        for (p, l) in got.iter().zip(&lines) {
            let Payload::Log(log) = p else {
                panic!("{p:?}")
            };
            assert_eq!(
                (log.line.as_str(), log.source.as_str()),
                (l.text.as_str(), "suricata")
            );
            assert_eq!((log.path.as_str(), log.read_unix_ms), ("/eve", 99));
        }
        let Payload::Event(alert) = &got[2] else {
            panic!()
        };
        assert_eq!(
            (alert.kind.as_str(), alert.message.as_str()),
            ("alert", eve)
        );
        assert_eq!(alert.severity, v1::Severity::High as i32);
        assert_eq!(alert.time_unix_ms, 1_734_372_015_123);
        assert_eq!(alert.fields["signature"], "a \"q\"");
        assert_eq!(alert.fields["alert_severity"], "1");
        assert_eq!(alert.fields["src_ip"], "192.0.2.1");
        let Payload::Event(other) = &got[3] else {
            panic!()
        };
        assert_eq!(
            (other.kind.as_str(), other.time_unix_ms),
            ("other", 99),
            "read time"
        );
    }

    #[test]
    fn an_unreadable_saved_position_is_counted_and_the_source_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::open(dir.path(), 1 << 20).unwrap();
        let src = SourceConfig {
            kind: SourceKind::Raw,
            path: dir.path().join("app.log"),
            from_start: false,
        };
        let key = src.path.display().to_string();
        assert_eq!(saved_position(&buffer, &src), None, "nothing saved yet");
        let before = BAD_POSITIONS.load(Ordering::Relaxed);
        buffer
            .push_encoded(&[&Encoded::default()], &[(&key, b"{not a position")])
            .unwrap();
        assert_eq!(saved_position(&buffer, &src), None);
        assert_eq!(BAD_POSITIONS.load(Ordering::Relaxed), before + 1);
        // A good one reads back.
        let p = Position {
            dev: 1,
            ino: 2,
            offset: 3,
            head: "h".into(),
            head_len: 1,
        };
        buffer
            .push_encoded(
                &[&Encoded::default()],
                &[(&key, &serde_json::to_vec(&p).unwrap())],
            )
            .unwrap();
        assert_eq!(saved_position(&buffer, &src), Some(p));
    }

    #[test]
    fn an_ossec_block_is_flushed_at_the_end_of_a_batch() {
        let lines = [
            line("** Alert 1510376428.465: - syslog,sudo"),
            line("2017 Nov 11 00:00:28 ubnt->/var/log/messages"),
            line("Rule: 5402 (level 3) -> 'Successful sudo to ROOT executed'"),
        ];
        let mut parser = Parser::for_kind(SourceKind::Ossec);
        let got = decoded(&records("ossec", "/a", &mut parser, &lines, 0, false));
        assert_eq!(got.len(), 3, "the block waits for its end");
        let got = decoded(&records("ossec", "/a", &mut parser, &[], 0, true));
        let [Payload::Event(e)] = &got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(e.fields["rule_id"], "5402");
        assert_eq!(e.message.lines().count(), 3);
    }
}
