//! Runs the configured sources: inotify wakes it, each [`Tailer`] reads
//! what is new, each [`Parser`] makes events, and the lines, the events and
//! the source's new read position go to the buffer in one batch. Runs on a
//! thread of its own (file and sled I/O are blocking).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use picket_proto::v1::{self, record::Payload};
use tokio_util::sync::CancellationToken;

use crate::buffer::{Buffer, BufferError};
use crate::config::{AgentConfig, SourceConfig};
use crate::sources::Parser;
use crate::tail::{Position, Tailer};

/// Lines per buffer batch.
const BATCH_LINES: usize = 2000;

/// Lines no parser recognised (kept as `other`), since start.
pub static UNPARSED: AtomicU64 = AtomicU64::new(0);

struct Source {
    cfg: SourceConfig,
    key: String,
    tailer: Tailer,
    parser: Parser,
    /// A batch read but not yet buffered (the buffer was full, or a write
    /// failed): pushed again before anything more is read, so no line is
    /// lost while the tailer has moved past it.
    pending: Option<(Vec<Payload>, Vec<u8>, usize)>,
}

/// Tails every source until `shutdown`. Returns when cancelled.
pub fn run(cfg: &AgentConfig, buffer: Arc<Buffer>, shutdown: CancellationToken) {
    let mut sources: Vec<Source> = cfg
        .sources
        .iter()
        .map(|s| {
            let key = s.path.display().to_string();
            let saved = buffer
                .position(&key)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<Position>(&b).ok());
            Source {
                tailer: Tailer::new(&s.path, saved, cfg.max_line_bytes, s.from_start),
                parser: Parser::for_kind(s.kind),
                key,
                cfg: s.clone(),
                pending: None,
            }
        })
        .collect();
    if sources.is_empty() {
        return;
    }

    // Watch each source's folder: creation and renames show up there.
    let (wake_tx, wake) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = wake_tx.send(());
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

    while !shutdown.is_cancelled() {
        let mut busy = false;
        for s in &mut sources {
            match pump(s, &buffer) {
                Ok(n) => busy |= n >= BATCH_LINES,
                Err(Pump::Full) => {
                    // Events are never dropped: wait for acks to make room.
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(Pump::Other(e)) => {
                    tracing::warn!(path = %s.cfg.path.display(), error = %e, "source read failed");
                }
            }
        }
        if busy {
            continue;
        }
        // Sleep until inotify says something changed; poll now and then
        // anyway, in case an event was missed (queue overflow, NFS).
        let _ = wake.recv_timeout(Duration::from_secs(1));
        while wake.try_recv().is_ok() {}
    }
}

enum Pump {
    Full,
    Other(String),
}

/// Reads one batch from a source and buffers it; returns lines read.
fn pump(s: &mut Source, buffer: &Buffer) -> Result<usize, Pump> {
    if let Some((payloads, pos, n)) = s.pending.take() {
        return push(s, buffer, payloads, pos, n);
    }
    let lines = s
        .tailer
        .poll(BATCH_LINES)
        .map_err(|e| Pump::Other(e.to_string()))?;
    let read_ms = crate::now_ms();
    let mut payloads = Vec::with_capacity(lines.len() * 2);
    let source = s.cfg.kind.as_str().to_string();
    let path = s.key.clone();
    let n = lines.len();
    let mut parsed = Vec::new();
    for l in lines {
        parsed.extend(s.parser.feed(&l.text, read_ms));
        payloads.push(Payload::Log(v1::LogLine {
            source: source.clone(),
            path: path.clone(),
            line: l.text,
            read_unix_ms: read_ms,
            truncated: l.truncated,
            invalid_utf8: l.invalid_utf8,
        }));
    }
    if n < BATCH_LINES {
        // At the end of the file: a multi-line block is complete.
        parsed.extend(s.parser.flush());
    }
    for p in parsed {
        if !p.parsed {
            UNPARSED.fetch_add(1, Ordering::Relaxed);
        }
        payloads.push(Payload::Event(v1::Event {
            source: source.clone(),
            path: path.clone(),
            kind: p.kind,
            severity: v1::Severity::from(p.severity) as i32,
            message: p.message,
            fields: p.fields,
            time_unix_ms: p.time_ms.unwrap_or(read_ms),
        }));
    }
    if payloads.is_empty() {
        return Ok(0);
    }
    let pos = s
        .tailer
        .position()
        .map(|p| serde_json::to_vec(&p).unwrap_or_default())
        .unwrap_or_default();
    push(s, buffer, payloads, pos, n)
}

fn push(
    s: &mut Source,
    buffer: &Buffer,
    payloads: Vec<Payload>,
    pos: Vec<u8>,
    n: usize,
) -> Result<usize, Pump> {
    // The buffer takes the batch whole or not at all; keep it to retry.
    match buffer.push(&payloads, Some((&s.key, &pos))) {
        Ok(_) => Ok(n),
        Err(e) => {
            s.pending = Some((payloads, pos, n));
            match e {
                BufferError::Full(_) => Err(Pump::Full),
                e => Err(Pump::Other(e.to_string())),
            }
        }
    }
}
