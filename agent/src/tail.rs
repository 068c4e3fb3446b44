//! Following a log file: lines as they are appended, through rename
//! rotation, copytruncate, truncation, deletion and re-creation, a file
//! that does not exist yet, partial last lines, invalid UTF-8 and
//! over-long lines. No parsing here, and no inotify either: the caller
//! calls [`Tailer::poll`] when inotify says something changed (and now and
//! then regardless).
//!
//! A file is known by device and inode plus a fingerprint of its first
//! bytes, never by its path. The [`Position`] after each batch of lines is
//! committed by the caller together with the records made from them, so a
//! restart resumes exactly after the last line stored.
//!
//! After a restart, the saved position is found again:
//! - same file (inode and head match), grown: resume at the offset;
//! - the file at the path is another one (renamed away while we were down):
//!   the old one is looked for beside it by inode (`app.log.1`, …), drained
//!   from the offset, then the new file is read from its start;
//! - same inode but shorter (copytruncate while we were down): the copy
//!   whose head matches the saved fingerprint (`app.log.1`) is read from
//!   the offset to its end, then the truncated file from its start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fnv::head_digest;
use serde::{Deserialize, Serialize};

/// Bytes of a file's head that make its fingerprint.
const HEAD: u64 = 256;
/// Bytes read per `read` call.
const CHUNK: usize = 64 * 1024;

/// Where a source stands: which file, how far, and what it starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    /// End of the last complete line handed out.
    pub offset: u64,
    /// Digest of the first `head_len` bytes.
    pub head: String,
    pub head_len: u64,
}

/// One line, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// Cut at the cap; the rest of the line was skipped.
    pub truncated: bool,
    /// Not valid UTF-8; decoded lossily.
    pub invalid_utf8: bool,
}

pub struct Tailer {
    path: PathBuf,
    cap: usize,
    from_start: bool,
    /// The file being read and where it stands.
    cur: Option<Open>,
    /// A rotated copy or old inode to drain before `cur` (restart recovery).
    drain: Option<Open>,
    /// Set once a position has been established (saved or fresh).
    pos: Option<Position>,
}

struct Open {
    file: File,
    dev: u64,
    ino: u64,
    /// Offset of the next byte to read.
    read_at: u64,
    /// End of the last complete line handed out.
    line_end: u64,
    partial: Vec<u8>,
    /// Inside an over-long line: drop bytes until the next newline.
    skipping: bool,
    head: String,
    head_len: u64,
}

mod fnv {
    //! The head fingerprint: a 64-bit FNV-1a digest, hex. Collisions only
    //! matter between files at the same path, and the inode is compared too.
    pub fn head_digest(bytes: &[u8]) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

fn head_of(file: &mut File, len: u64) -> std::io::Result<(String, u64)> {
    let n = len.min(HEAD);
    let mut buf = vec![0u8; n as usize];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut buf)?;
    Ok((head_digest(&buf), n))
}

impl Open {
    fn new(path: &Path, at: u64) -> std::io::Result<Open> {
        let mut file = File::open(path)?;
        let md = file.metadata()?;
        let (head, head_len) = head_of(&mut file, md.len())?;
        let at = at.min(md.len());
        file.seek(SeekFrom::Start(at))?;
        Ok(Open {
            file,
            dev: md.dev(),
            ino: md.ino(),
            read_at: at,
            line_end: at,
            partial: Vec::new(),
            skipping: false,
            head,
            head_len,
        })
    }

    /// Head fingerprint of the first `len` bytes, as it is now.
    fn head_now(&mut self, len: u64) -> std::io::Result<String> {
        let (h, _) = head_of(&mut self.file, len)?;
        self.file.seek(SeekFrom::Start(self.read_at))?;
        Ok(h)
    }

    /// Reads to EOF; returns complete lines (and their end offsets).
    fn read_lines(&mut self, cap: usize, max: usize, out: &mut Vec<Line>) -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        while out.len() < max {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let mut start = 0;
            for i in 0..n {
                if buf[i] == b'\n' {
                    self.take_bytes(&buf[start..i], cap, out);
                    start = i + 1;
                    if self.skipping {
                        self.skipping = false;
                    } else {
                        out.push(decode(std::mem::take(&mut self.partial), false));
                    }
                    self.line_end = self.read_at + (i as u64) + 1;
                }
            }
            self.take_bytes(&buf[start..n], cap, out);
            self.read_at += n as u64;
        }
        // A file opened while shorter than the fingerprint's length gets
        // its full fingerprint once it has grown.
        if self.head_len < HEAD && self.read_at > self.head_len {
            let (h, len) = head_of(&mut self.file, self.read_at)?;
            self.head = h;
            self.head_len = len;
            self.file.seek(SeekFrom::Start(self.read_at))?;
        }
        Ok(())
    }

    /// Adds bytes to the partial line; past the cap, emits the cut line and
    /// skips the rest of it.
    fn take_bytes(&mut self, bytes: &[u8], cap: usize, out: &mut Vec<Line>) {
        if self.skipping || bytes.is_empty() {
            return;
        }
        let room = cap.saturating_sub(self.partial.len());
        if bytes.len() <= room {
            self.partial.extend_from_slice(bytes);
        } else {
            self.partial.extend_from_slice(&bytes[..room]);
            out.push(decode(std::mem::take(&mut self.partial), true));
            self.skipping = true;
        }
    }

    /// A partial last line, handed out as is (the file is finished with).
    fn finish(&mut self, out: &mut Vec<Line>) {
        if !self.partial.is_empty() {
            out.push(decode(std::mem::take(&mut self.partial), false));
        }
        self.line_end = self.read_at;
    }

    fn position(&self) -> Position {
        Position {
            dev: self.dev,
            ino: self.ino,
            offset: self.line_end,
            head: self.head.clone(),
            head_len: self.head_len,
        }
    }
}

fn decode(bytes: Vec<u8>, truncated: bool) -> Line {
    match String::from_utf8(bytes) {
        Ok(text) => Line {
            text,
            truncated,
            invalid_utf8: false,
        },
        Err(e) => Line {
            text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            truncated,
            invalid_utf8: true,
        },
    }
}

/// Rotated siblings of `path` (`app.log.1`, `app.log.2.gz` is skipped as
/// compressed), newest first.
fn siblings(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy().into_owned();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.len() > name.len() && n.starts_with(&name) && !n.ends_with(".gz")
                })
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

impl Tailer {
    /// A tailer for `path`, resuming from `saved` if there is one; a fresh
    /// source starts at the end of the file unless `from_start`.
    pub fn new(path: &Path, saved: Option<Position>, cap: usize, from_start: bool) -> Tailer {
        Tailer {
            path: path.to_path_buf(),
            cap: cap.max(1),
            from_start,
            cur: None,
            drain: None,
            pos: saved,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The position to commit with the lines handed out so far.
    pub fn position(&self) -> Option<Position> {
        match (&self.drain, &self.cur) {
            // While draining a rotated file, the saved position stays on it.
            (Some(d), _) => Some(d.position()),
            (None, Some(c)) => Some(c.position()),
            (None, None) => self.pos.clone(),
        }
    }

    /// Opens the file at the path, reconciling with the saved position.
    fn open(&mut self) -> std::io::Result<bool> {
        let md = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(saved) = self.pos.clone() else {
            let at = if self.from_start { 0 } else { md.len() };
            self.cur = Some(Open::new(&self.path, at)?);
            return Ok(true);
        };
        let same_inode = md.dev() == saved.dev && md.ino() == saved.ino;
        let mut here = Open::new(&self.path, 0)?;
        let same_head = saved.head_len == 0
            || (md.len() >= saved.head_len && here.head_now(saved.head_len)? == saved.head);
        if same_inode && same_head && md.len() >= saved.offset {
            here.file.seek(SeekFrom::Start(saved.offset))?;
            here.read_at = saved.offset;
            here.line_end = saved.offset;
            self.cur = Some(here);
            return Ok(true);
        }
        // Rotated while we were away: find the old content beside it.
        for p in siblings(&self.path) {
            let Ok(mut o) = Open::new(&p, 0) else {
                continue;
            };
            let len = o.file.metadata()?.len();
            let by_inode = !same_inode && o.dev == saved.dev && o.ino == saved.ino;
            let by_head = len >= saved.head_len && o.head_now(saved.head_len)? == saved.head;
            if (by_inode || by_head) && len >= saved.offset {
                o.file.seek(SeekFrom::Start(saved.offset))?;
                o.read_at = saved.offset;
                o.line_end = saved.offset;
                self.drain = Some(o);
                break;
            }
        }
        if self.drain.is_none() {
            tracing::warn!(path = %self.path.display(), "log file changed while the agent was down and no rotated copy matches; reading it from the start");
        }
        self.cur = Some(here);
        Ok(true)
    }

    /// Reads a batch of the file being drained before `cur`; done with it
    /// once a read ends short of `max`.
    fn read_drain(&mut self, max: usize, out: &mut Vec<Line>) -> std::io::Result<()> {
        if let Some(d) = &mut self.drain {
            d.read_lines(self.cap, max, out)?;
            if out.len() < max {
                d.finish(out);
                self.drain = None;
            }
        }
        Ok(())
    }

    /// Reads what is new, at most about `max` lines.
    pub fn poll(&mut self, max: usize) -> std::io::Result<Vec<Line>> {
        let mut out = Vec::new();
        if self.cur.is_none() && !self.open()? {
            return Ok(out);
        }
        if self.drain.is_some() {
            self.read_drain(max, &mut out)?;
            return Ok(out);
        }
        let Some(cur) = &mut self.cur else {
            return Ok(out);
        };
        cur.read_lines(self.cap, max, &mut out)?;
        if out.len() >= max {
            return Ok(out);
        }
        // At the end of what we hold: has the path moved on?
        match std::fs::metadata(&self.path) {
            Ok(md) if md.dev() != cur.dev || md.ino() != cur.ino => {
                // Renamed away (and maybe re-created): the old file is
                // drained to its end; then the new one from its start.
                cur.finish(&mut out);
                self.pos = None;
                self.from_start = true;
                self.cur = None;
                self.open()?;
            }
            Ok(md) if md.len() < cur.read_at => {
                // Truncated in place (copytruncate). Bytes past our offset
                // that reached only the copy are drained from it first, a
                // batch a poll like any other read (the copy may be large).
                let old = cur.position();
                let read_at = cur.read_at;
                let mut copy = None;
                for p in siblings(&self.path) {
                    let Ok(mut o) = Open::new(&p, 0) else {
                        continue;
                    };
                    let len = o.file.metadata()?.len();
                    if len > read_at && old.head_len > 0 && o.head_now(old.head_len)? == old.head {
                        o.file.seek(SeekFrom::Start(read_at))?;
                        o.read_at = read_at;
                        o.line_end = cur.line_end;
                        o.partial = std::mem::take(&mut cur.partial);
                        o.skipping = cur.skipping;
                        copy = Some(o);
                        break;
                    }
                }
                cur.finish(&mut out);
                let path = self.path.clone();
                *cur = Open::new(&path, 0)?;
                self.drain = copy;
                self.read_drain(max, &mut out)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Deleted: what we hold is drained; wait for a new file.
                cur.finish(&mut out);
                self.pos = None;
                self.from_start = true;
                self.cur = None;
            }
            Err(e) => return Err(e),
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(p: &Path, s: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(s).unwrap();
    }

    /// What logrotate's `copytruncate` does: copy, then truncate in place.
    fn copytruncate(p: &Path, copy: &Path) {
        std::fs::copy(p, copy).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p)
            .unwrap();
    }

    fn texts(lines: Vec<Line>) -> Vec<String> {
        lines.into_iter().map(|l| l.text).collect()
    }

    #[test]
    fn fresh_source_starts_at_the_end_or_the_start() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        append(&p, b"old 1\nold 2\n");
        let mut t = Tailer::new(&p, None, 1024, false);
        assert!(t.poll(100).unwrap().is_empty());
        append(&p, b"new\n");
        assert_eq!(texts(t.poll(100).unwrap()), ["new"]);
        let mut t = Tailer::new(&p, None, 1024, true);
        assert_eq!(texts(t.poll(100).unwrap()), ["old 1", "old 2", "new"]);
    }

    #[test]
    fn partial_lines_join_and_positions_stop_at_line_ends() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut t = Tailer::new(&p, None, 1024, true);
        assert!(t.poll(100).unwrap().is_empty(), "file does not exist yet");
        append(&p, b"hel");
        assert!(t.poll(100).unwrap().is_empty());
        assert_eq!(t.position().unwrap().offset, 0);
        append(&p, b"lo\nwor");
        assert_eq!(texts(t.poll(100).unwrap()), ["hello"]);
        assert_eq!(t.position().unwrap().offset, 6);
        append(&p, b"ld\n");
        assert_eq!(texts(t.poll(100).unwrap()), ["world"]);
    }

    #[test]
    fn long_lines_are_cut_and_marked_and_bad_utf8_flagged() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut t = Tailer::new(&p, None, 10, true);
        append(&p, b"0123456789abcdef\nshort\n\xff\xfebad\n");
        let l = t.poll(100).unwrap();
        assert_eq!(
            l[0],
            Line {
                text: "0123456789".into(),
                truncated: true,
                invalid_utf8: false
            }
        );
        assert_eq!(l[1].text, "short");
        assert!(!l[1].truncated);
        assert!(l[2].invalid_utf8 && l[2].text.ends_with("bad"));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn rename_rotation_drains_the_old_file_first() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut t = Tailer::new(&p, None, 1024, true);
        append(&p, b"1\n");
        assert_eq!(texts(t.poll(100).unwrap()), ["1"]);
        append(&p, b"2\n");
        std::fs::rename(&p, d.path().join("a.log.1")).unwrap();
        append(&d.path().join("a.log.1"), b"3\n"); // a late write to the old file
        append(&p, b"4\n");
        let mut got = texts(t.poll(100).unwrap());
        got.extend(texts(t.poll(100).unwrap()));
        assert_eq!(got, ["2", "3", "4"]);
    }

    #[test]
    fn copytruncate_recovers_unread_lines_from_the_copy() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut t = Tailer::new(&p, None, 1024, true);
        append(&p, b"first line of the file\n");
        assert_eq!(texts(t.poll(100).unwrap()), ["first line of the file"]);
        append(&p, b"unread 1\nunread 2\n");
        copytruncate(&p, &d.path().join("a.log.1"));
        append(&p, b"after\n");
        let mut got = texts(t.poll(100).unwrap());
        got.extend(texts(t.poll(100).unwrap()));
        assert_eq!(got, ["unread 1", "unread 2", "after"]);
    }

    /// A copy with much left unread is drained a batch a poll, not in one
    /// read that holds all of it.
    #[test]
    fn copytruncate_drains_a_large_copy_in_batches() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut t = Tailer::new(&p, None, 1024, true);
        append(&p, b"first line of the file\n");
        assert_eq!(texts(t.poll(100).unwrap()), ["first line of the file"]);
        let unread: Vec<String> = (0..50_000).map(|i| format!("unread {i}")).collect();
        append(&p, (unread.join("\n") + "\npart").as_bytes());
        copytruncate(&p, &d.path().join("a.log.1"));
        append(&p, b"after\n");
        let mut got: Vec<String> = Vec::new();
        let mut biggest = 0;
        for _ in 0..1_000 {
            let batch = texts(t.poll(100).unwrap());
            biggest = biggest.max(batch.len());
            got.extend(batch);
            if got.last().map(String::as_str) == Some("after") {
                break;
            }
        }
        let mut want = unread.clone();
        want.push("part".into());
        want.push("after".into());
        assert_eq!(got, want);
        // One 64 KiB read is about 5,000 of these lines.
        assert!(biggest < 10_000, "a poll handed out {biggest} lines");
    }

    #[test]
    fn deletion_and_recreation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        let mut t = Tailer::new(&p, None, 1024, true);
        append(&p, b"a\n");
        assert_eq!(texts(t.poll(100).unwrap()), ["a"]);
        std::fs::remove_file(&p).unwrap();
        assert!(t.poll(100).unwrap().is_empty());
        append(&p, b"b\n");
        assert_eq!(texts(t.poll(100).unwrap()), ["b"]);
    }

    #[test]
    fn restart_resumes_even_if_rotated_while_down() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        append(&p, b"head line that fingerprints this file\n1\n");
        let mut t = Tailer::new(&p, None, 1024, true);
        assert_eq!(t.poll(100).unwrap().len(), 2);
        let saved = t.position().unwrap();
        drop(t);

        // Plain restart.
        append(&p, b"2\n");
        let mut t = Tailer::new(&p, Some(saved.clone()), 1024, false);
        assert_eq!(texts(t.poll(100).unwrap()), ["2"]);
        let saved = t.position().unwrap();
        drop(t);

        // Renamed away while down, new file at the path.
        append(&p, b"3\n");
        std::fs::rename(&p, d.path().join("a.log.1")).unwrap();
        append(&p, b"4\n");
        let mut t = Tailer::new(&p, Some(saved), 1024, false);
        let mut got = texts(t.poll(100).unwrap());
        got.extend(texts(t.poll(100).unwrap()));
        assert_eq!(got, ["3", "4"]);
        let saved = t.position().unwrap();
        drop(t);

        // Copytruncate while down.
        append(&p, b"5 padding to be longer than before\n");
        copytruncate(&p, &d.path().join("a.log.1"));
        append(&p, b"6\n");
        let mut t = Tailer::new(&p, Some(saved), 1024, false);
        let mut got = texts(t.poll(100).unwrap());
        got.extend(texts(t.poll(100).unwrap()));
        assert_eq!(got, ["5 padding to be longer than before", "6"]);
    }
}
