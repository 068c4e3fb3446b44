//! `picketctl completions SHELL` and `picketctl man DIR`: generated from
//! the clap definitions (clap_complete, clap_mangen), so they cannot drift
//! from what the CLI takes. No server, no settings.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::args::{Cli, Shell};

pub fn completions(shell: Shell, out: &mut impl Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // Rendered whole first: clap_complete panics on a failed write, and
    // `picketctl completions bash | head` must end as a broken pipe does.
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "picketctl", &mut buf);
    out.write_all(&buf)?;
    Ok(())
}

/// Writes `picketctl.1` and a page for every subcommand, named as `man`
/// finds them (`man picketctl-rollout-create`).
pub fn man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the manual pages in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option and argument says what it is for, in `--help`, the
    /// manual pages and the completions alike.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "picketctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn completions_and_pages_are_written() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("rollout") && text.contains("selector"),
                "{shell:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        man(dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("picketctl-rollout-create.1")).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(dir.path().join("picketctl.1").exists());
    }
}
