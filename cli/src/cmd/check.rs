//! `picketctl rollout check -f FILE...` and `picketctl alerts check
//! FILE...`: the checks the control plane runs, offline, for a CI
//! pipeline. No server, no credentials. Each finding is a line,
//! `FILE:LINE:COL: field: message` (or a JSON object with `-o json`), on
//! stdout; exit 0 when clean, 1 on a problem (or a warning with
//! `--strict`), 2 when a file cannot be read.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use picket_config::check::Finding;

use crate::args::Format;
use crate::{BadConfig, Failed};

#[derive(Clone, Copy)]
pub enum Kind {
    Rollout,
    Alerts,
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .map_err(|e| BadConfig(anyhow!("cannot read {}: {e}", file.display())).into())
}

fn findings(kind: Kind, file: &Path, text: &str) -> Vec<Finding> {
    let name = file.display().to_string();
    match kind {
        Kind::Rollout => picket_config::check::rollout(&name, text),
        Kind::Alerts => picket_alert::rules::check_file(&name, text).1,
    }
}

/// Checks every file, prints every finding, and says how it ended.
pub fn files(files: &[PathBuf], kind: Kind, strict: bool, fmt: Format) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for f in files {
        let text = read(f)?;
        all.extend(findings(kind, f, &text));
    }
    report(&all, strict, fmt, &mut std::io::stdout().lock())
}

/// Prints `found`; an error (a warning too, with `strict`) ends in exit 1.
pub fn report(
    found: &[Finding],
    strict: bool,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let tally = picket_config::check::print(found, fmt == Format::Json, out)?;
    if tally.fails(strict) {
        return Err(Failed(tally.to_string()).into());
    }
    Ok(())
}

/// `rollout create -f FILE`: the file is read and checked before
/// anything connects; a bad one is every problem on stderr and exit 2.
pub fn before_create(file: &Path) -> anyhow::Result<()> {
    let text = read(file)?;
    let found = findings(Kind::Rollout, file, &text);
    if found.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    Err(BadConfig(anyhow!("{}", lines.join("\n"))).into())
}
