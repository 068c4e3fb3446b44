//! `picket-control backup` and `restore`: one archive holds what a data
//! folder needs to be served again as it was (docs/operations.md).
//!
//! The archive is a tar file, written 0600 since it holds the CA key:
//! `picket-backup.json` first (format version, when, from where), then
//! `control.toml`, the alert file if one is set (`alerts.toml`), the CA,
//! server and admin certificates and keys, the store's index dump
//! (`store.kv`) and its block segments (`blocks/...`), and `SHA256SUMS`
//! last. A restore reads and checks the whole archive before anything is
//! put in place, so a truncated or damaged archive, or one from a newer
//! Picket, writes nothing.
//!
//! A running control plane is asked for a snapshot over its local socket
//! ([`crate::local`]); a stopped one's store is opened here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod cluster;
pub mod local;
use picket_config::control::ControlConfig;
use picket_store::Store;
use picket_store::snapshot::{self, KV_FILE};

/// The archive format this build writes and reads.
pub const FORMAT: u32 = 1;
const HEADER: &str = "picket-backup.json";
const SUMS: &str = "SHA256SUMS";
const CONFIG: &str = "control.toml";
const ALERTS: &str = "alerts.toml";
/// Files of the data folder that go in as they are (those present).
const PKI_FILES: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "admin.crt",
    "admin.key",
];

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    created_unix_ms: i64,
    picket_version: String,
    data_dir: PathBuf,
}

/// What `backup` did.
pub struct BackupReport {
    pub bytes: u64,
    pub files: usize,
    /// How long the control plane held writes off (None: it was stopped).
    pub frozen_ms: Option<u64>,
}

/// Writes an archive of the control plane configured by `config` to `out`.
pub fn backup(config: &Path, out: &Path, force: bool) -> anyhow::Result<BackupReport> {
    let cfg = ControlConfig::load(config)?;
    if out.exists() && !force {
        bail!("{} exists; give --force to replace it", out.display());
    }
    let data = &cfg.data_dir;
    // The snapshot: from the running control plane, or taken here.
    let (snap_dir, segments, frozen_ms) =
        match local::request_snapshot(data).with_context(|| {
            format!(
                "asking the control plane on {} for a snapshot",
                data.display()
            )
        })? {
            Some(reply) => {
                if let Some(e) = reply.error {
                    bail!("the control plane could not take a snapshot: {e}");
                }
                let path = reply
                    .path
                    .context("the control plane sent no snapshot folder")?;
                let path = confined(data, &path, &reply.segments)?;
                (path, reply.segments, Some(reply.frozen_ms))
            }
            None => {
                let store = Store::open(data).with_context(|| {
                    format!(
                        "no control plane answers on {} and its store cannot be opened",
                        data.display()
                    )
                })?;
                let dir = data
                    .join(local::SNAPSHOTS)
                    .join(format!("offline-{}", std::process::id()));
                let snap = store.snapshot(data, &dir)?;
                (dir, snap.segments, None)
            }
        };
    let _snapshot = Remove::armed(&snap_dir);

    let partial = partial_path(out);
    let _ = std::fs::remove_file(&partial);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut partial_guard = Remove::armed(&partial);
    let mut w = Writer::new(BufWriter::with_capacity(1 << 20, file));
    let header = Header {
        format: FORMAT,
        created_unix_ms: picket_clock::now_ms(),
        picket_version: env!("PICKET_VERSION").into(),
        data_dir: data.clone(),
    };
    w.bytes(HEADER, &serde_json::to_vec_pretty(&header)?)?;
    w.file(CONFIG, config, None)?;
    if let Some(alerts) = &cfg.alerts {
        w.file(ALERTS, alerts, None)?;
    }
    for name in PKI_FILES {
        let p = data.join(name);
        if p.exists() {
            w.file(name, &p, None)?;
        }
    }
    w.file(KV_FILE, &snap_dir.join(KV_FILE), None)?;
    for (rel, len) in &segments {
        let name = rel.to_str().context("a segment path is not UTF-8")?;
        w.file(name, &snap_dir.join(rel), Some(*len))?;
    }
    let files = w.sums.len();
    let written = || -> anyhow::Result<u64> {
        let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file.metadata()?.len())
    };
    let bytes = written().with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("cannot move {} to {}", partial.display(), out.display()))?;
    partial_guard.disarm();
    Ok(BackupReport {
        bytes,
        files,
        frozen_ms,
    })
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// The snapshot folder the socket named, once it is known to be inside the
/// data folder's snapshots, with every segment path relative and inside
/// it: the backup runs as root and reads whatever it is pointed at, and
/// the socket's answer is not to be trusted further than that.
fn confined(
    data: &Path,
    path: &Path,
    segments: &BTreeMap<PathBuf, u64>,
) -> anyhow::Result<PathBuf> {
    let base = data
        .join(local::SNAPSHOTS)
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", data.join(local::SNAPSHOTS).display()))?;
    let real = path
        .canonicalize()
        .with_context(|| format!("the snapshot folder {} is not there", path.display()))?;
    if !real.starts_with(&base) || real == base {
        bail!(
            "the control plane named {} as its snapshot, outside {}; refusing to read it",
            path.display(),
            base.display()
        );
    }
    let plain = |p: &Path| p.components().all(|c| matches!(c, Component::Normal(_)));
    if let Some(bad) = segments.keys().find(|p| !plain(p)) {
        bail!(
            "the control plane named a segment {} outside its snapshot; refusing to read it",
            bad.display()
        );
    }
    Ok(real)
}

/// Deletes a file or folder when dropped, unless disarmed: what a failed
/// backup or restore leaves half-written.
struct Remove(Option<PathBuf>);

impl Remove {
    fn armed(p: &Path) -> Self {
        Remove(Some(p.to_path_buf()))
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Remove {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

/// `SHA256SUMS`: a line per entry, as sha256sum writes them.
fn sums_text(sums: &[(String, String)]) -> String {
    sums.iter().map(|(n, h)| format!("{h}  {n}\n")).collect()
}

/// A tar writer that sums every entry.
struct Writer<W: Write> {
    tar: tar::Builder<W>,
    sums: Vec<(String, String)>,
}

impl<W: Write> Writer<W> {
    fn new(w: W) -> Self {
        Writer {
            tar: tar::Builder::new(w),
            sums: Vec::new(),
        }
    }

    fn header(len: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(len);
        h.set_mode(0o600);
        h.set_mtime(u64::try_from(picket_clock::now_ms() / 1000).unwrap_or(0));
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    fn bytes(&mut self, name: &str, data: &[u8]) -> anyhow::Result<()> {
        self.sums
            .push((name.into(), hex::encode(Sha256::digest(data))));
        let mut h = Self::header(data.len() as u64);
        self.tar
            .append_data(&mut h, name, data)
            .with_context(|| format!("writing {name} into the archive"))
    }

    /// The file at `path` (its first `len` bytes, if given).
    fn file(&mut self, name: &str, path: &Path, len: Option<u64>) -> anyhow::Result<()> {
        let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let len = match len {
            Some(l) => l,
            None => f.metadata()?.len(),
        };
        let mut hashing = Hashing {
            inner: f.take(len),
            sha: Sha256::new(),
        };
        let mut h = Self::header(len);
        self.tar
            .append_data(&mut h, name, &mut hashing)
            .with_context(|| format!("writing {} into the archive", path.display()))?;
        self.sums
            .push((name.into(), hex::encode(hashing.sha.finalize())));
        Ok(())
    }

    /// Appends the sums and ends the archive; returns what it wrote to.
    fn finish(mut self) -> anyhow::Result<W> {
        let sums = sums_text(&self.sums);
        let mut h = Self::header(sums.len() as u64);
        self.tar.append_data(&mut h, SUMS, sums.as_bytes())?;
        Ok(self.tar.into_inner()?)
    }
}

struct Hashing<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// What `restore` did.
pub struct RestoreReport {
    pub config: PathBuf,
    pub pairs: u64,
    pub files: usize,
}

/// Makes `data_dir` (new, or empty) from the archive `from`.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<RestoreReport> {
    let data_dir = std::path::absolute(data_dir)
        .with_context(|| format!("bad --data-dir {}", data_dir.display()))?;
    let occupied = std::fs::read_dir(&data_dir).map(|mut d| d.next().is_some());
    if matches!(occupied, Ok(true)) {
        bail!(
            "{} is not empty; restore into a new folder (it must hold no store)",
            data_dir.display()
        );
    }
    let archive = File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let parent = data_dir
        .parent()
        .context("--data-dir has no parent folder")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = data_dir.file_name().context("--data-dir has no name")?;
    let tmp = parent.join(format!(
        ".{}.restoring-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    make_dir(&tmp)?;
    let mut tmp_guard = Remove::armed(&tmp);

    let files = unpack(BufReader::new(archive), &tmp)
        .with_context(|| format!("{} is not a usable Picket backup", from.display()))?;
    let kv = tmp.join(KV_FILE);
    let mut dump = BufReader::new(File::open(&kv).context("the archive has no store.kv")?);
    let pairs = snapshot::load(&tmp, &mut dump)?;
    std::fs::remove_file(&kv)?;
    let alerts = tmp.join(ALERTS).exists().then(|| data_dir.join(ALERTS));
    let cfg_text =
        std::fs::read_to_string(tmp.join(CONFIG)).context("the archive has no control.toml")?;
    let cfg_text = repoint(&cfg_text, &data_dir, alerts.as_deref());
    std::fs::write(tmp.join(CONFIG), cfg_text)?;
    // The rewritten file must load as `run` will load it.
    ControlConfig::load(&tmp.join(CONFIG)).context("the restored control.toml")?;
    if data_dir.exists() {
        std::fs::remove_dir(&data_dir)
            .with_context(|| format!("cannot replace the empty {}", data_dir.display()))?;
    }
    std::fs::rename(&tmp, &data_dir)
        .with_context(|| format!("cannot move the restored folder to {}", data_dir.display()))?;
    tmp_guard.disarm();
    Ok(RestoreReport {
        config: data_dir.join(CONFIG),
        pairs,
        files,
    })
}

fn make_dir(p: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Unpacks and checks every entry into `into`; returns how many files.
fn unpack(r: impl Read, into: &Path) -> anyhow::Result<usize> {
    let mut tar = tar::Archive::new(r);
    let mut sums: Vec<(String, String)> = Vec::new();
    let mut listed: Option<String> = None;
    for (i, entry) in tar.entries().context("reading the archive")?.enumerate() {
        let mut entry = entry.context("the archive is damaged or truncated")?;
        let name = entry
            .path()
            .context("an entry's name is not readable")?
            .to_str()
            .context("an entry's name is not UTF-8")?
            .to_string();
        if listed.is_some() {
            bail!("entry {name:?} comes after {SUMS}");
        }
        let mut data = Vec::new();
        if name == HEADER || name == SUMS {
            entry
                .read_to_end(&mut data)
                .context("the archive is truncated")?;
        }
        if i == 0 {
            if name != HEADER {
                bail!("it does not start with {HEADER}");
            }
            let h: Header =
                serde_json::from_slice(&data).context("its header is not understood")?;
            if h.format > FORMAT {
                bail!(
                    "it is format {}, written by Picket {}; this picket-control reads format {FORMAT} at most (upgrade it first)",
                    h.format,
                    h.picket_version
                );
            }
            sums.push((name, hex::encode(Sha256::digest(&data))));
            continue;
        }
        if name == SUMS {
            listed = Some(String::from_utf8(data).context("SHA256SUMS is not text")?);
            continue;
        }
        let rel = safe_path(&name)?;
        let path = into.join(&rel);
        if let Some(p) = path.parent() {
            make_dir(p)?;
        }
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let size = entry.header().size().unwrap_or(u64::MAX);
        let mut hashing = Hashing {
            inner: &mut entry,
            sha: Sha256::new(),
        };
        let mut out = BufWriter::new(out);
        let n = std::io::copy(&mut hashing, &mut out).context("the archive is truncated")?;
        if n != size {
            bail!("the archive is truncated (in {name})");
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        sums.push((name, hex::encode(hashing.sha.finalize())));
    }
    let Some(listed) = listed else {
        bail!("the archive is truncated: it ends before {SUMS}");
    };
    if listed != sums_text(&sums) {
        bail!("its checksums do not match its contents (damaged)");
    }
    Ok(sums.len())
}

/// A relative path of plain components only.
fn safe_path(name: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(name);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(p.to_path_buf())
    } else {
        bail!("entry {name:?} is not a plain relative path")
    }
}

/// `control.toml` with `data_dir` (and `alerts`, when the archive has
/// the alert file) pointing into the restored folder; comments and every
/// other key as they were.
fn repoint(text: &str, data_dir: &Path, alerts: Option<&Path>) -> String {
    let quoted = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut out = String::with_capacity(text.len() + 64);
    let mut top = true;
    let mut alerts_done = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            if top
                && !alerts_done
                && let Some(a) = alerts
            {
                out.push_str(&format!("alerts = {}\n", quoted(a)));
                alerts_done = true;
            }
            top = false;
        }
        let key = t.split('=').next().map(str::trim);
        if top && key == Some("data_dir") {
            out.push_str(&format!("data_dir = {}\n", quoted(data_dir)));
        } else if top && key == Some("alerts") {
            if let Some(a) = alerts {
                out.push_str(&format!("alerts = {}\n", quoted(a)));
                alerts_done = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !alerts_done && let Some(a) = alerts {
        // No table in the file: the key can go at its end.
        out.push_str(&format!("alerts = {}\n", quoted(a)));
    }
    out
}

#[cfg(test)]
mod tests;
