//! The local admin socket, `data_dir/control.sock` (mode 0600): what a
//! command on the same host (`picket-control backup`) needs of the running
//! control plane, which alone may open the store. Whoever can open the
//! socket can read `ca.key` beside it, so it asks nothing more.
//!
//! One request a connection, one line each way. `snapshot` answers with
//! a JSON [`Reply`]: a consistent snapshot of the store
//! ([`picket_store::snapshot`]) in a new folder under
//! `data_dir/snapshots/`, which the caller deletes when done (leftovers
//! are deleted at the next start).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use picket_store::Store;

pub const SOCKET: &str = "control.sock";
pub const SNAPSHOTS: &str = "snapshots";

/// The answer to `snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// The snapshot folder, or None with `error`.
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub segments: BTreeMap<PathBuf, u64>,
    #[serde(default)]
    pub frozen_ms: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// Binds the socket (replacing a stale one) and deletes snapshots a
/// crashed backup left behind.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_dir_all(data_dir.join(SNAPSHOTS));
    let path = data_dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    store: Store,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let seq = std::sync::Arc::new(AtomicU64::new(0));
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = listener.accept() => c,
        };
        let Ok((conn, _)) = conn else { continue };
        let (store, dir, seq) = (store.clone(), data_dir.clone(), seq.clone());
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r.take(256));
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match line.trim() {
                "snapshot" => {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let into = dir
                        .join(SNAPSHOTS)
                        .join(format!("{}-{n}", picket_clock::now_ms()));
                    let d = dir.clone();
                    match store
                        .blocking(move |s| s.snapshot(&d, &into).map(|r| (r, into)))
                        .await
                    {
                        Ok((snap, into)) => {
                            tracing::info!(
                                pairs = snap.pairs,
                                segments = snap.segments.len(),
                                frozen_ms = snap.frozen_ms,
                                "snapshot taken for a backup"
                            );
                            Reply {
                                path: Some(into),
                                segments: snap.segments,
                                frozen_ms: snap.frozen_ms,
                                error: None,
                            }
                        }
                        Err(e) => failed(format!("snapshot failed: {e}")),
                    }
                }
                other => failed(format!("unknown request {other:?}")),
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
    let _ = std::fs::remove_file(data_dir.join(SOCKET));
}

fn failed(error: String) -> Reply {
    Reply {
        path: None,
        segments: BTreeMap::new(),
        frozen_ms: 0,
        error: Some(error),
    }
}

/// Asks the control plane running on `data_dir` for a snapshot. `Ok(None)`:
/// none is running there (no socket, or nobody listening).
pub fn request_snapshot(data_dir: &Path) -> std::io::Result<Option<Reply>> {
    let path = data_dir.join(SOCKET);
    let mut conn = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    conn.write_all(b"snapshot\n")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    serde_json::from_str(&line).map(Some).map_err(|e| {
        std::io::Error::other(format!("the control plane's answer is not understood: {e}"))
    })
}
