//! `picketctl rollout create|list|status|watch|pause|resume|approve|abort|
//! rollback` (SPEC §9). `status -o json` prints the SPEC's one object;
//! `list -o json` one line per rollout, the same object without waves.

mod watch;

use std::io::Write;

use picket_model::rollout::RawSpec;
use picket_proto::v1;
use serde_json::{Value, json};

use super::rpc;
use crate::args::{Format, RolloutCmd};
use crate::client::Admin;
use crate::output::{Table, escape_terminal as esc, json_line, time};

pub async fn run(
    admin: &mut Admin,
    cmd: RolloutCmd,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let act = |id: String, a: v1::RolloutAction| v1::RolloutActionRequest {
        id,
        action: a as i32,
    };
    let acted = match cmd {
        RolloutCmd::Create { file } => {
            let spec = read_spec(&file)?;
            let id = admin
                .create_rollout(v1::CreateRolloutRequest {
                    spec: Some(spec.into()),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .id;
            writeln!(out, "{id}")?;
            return Ok(());
        }
        // Answered before anything connects (`cmd::check`).
        RolloutCmd::Check { .. } => return Ok(()),
        RolloutCmd::List => {
            let all = admin
                .list_rollouts(v1::ListRolloutsRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .rollouts;
            return list(&all, fmt, out);
        }
        RolloutCmd::Status { id } => {
            let r = admin
                .get_rollout(v1::GetRolloutRequest { id })
                .await
                .map_err(rpc)?
                .into_inner();
            return show(&r, fmt, out);
        }
        RolloutCmd::Watch { id } => return watch::run(admin, id, fmt).await,
        RolloutCmd::Pause { id } => act(id, v1::RolloutAction::Pause),
        RolloutCmd::Resume { id } => act(id, v1::RolloutAction::Resume),
        RolloutCmd::Approve { id } => act(id, v1::RolloutAction::Approve),
        RolloutCmd::Abort { id } => act(id, v1::RolloutAction::Abort),
        RolloutCmd::Rollback { id } => act(id, v1::RolloutAction::Rollback),
    };
    let r = admin.act_on_rollout(acted).await.map_err(rpc)?.into_inner();
    match fmt {
        Format::Json => json_line(out, &rollout_json(&r, true))?,
        Format::Table => writeln!(out, "{}: {}", r.id, r.state)?,
    }
    Ok(())
}

/// The file, read and checked whole here first (exit 2 with every
/// problem); the control plane checks again and plans it over the fleet.
fn read_spec(file: &std::path::Path) -> anyhow::Result<RawSpec> {
    let bad = |m: String| crate::BadConfig(anyhow::anyhow!("{}: {m}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
    let spec: RawSpec =
        toml::from_str(&text).map_err(|e| bad(e.to_string().trim().replace('\n', " ")))?;
    spec.check().map_err(|e| bad(e.to_string()))?;
    Ok(spec)
}

pub(super) fn rollout_json(r: &v1::Rollout, waves: bool) -> Value {
    let mut v = json!({
        "id": r.id, "name": r.name, "state": r.state,
        "created": time(r.created_unix_ms), "finished": time(r.finished_unix_ms),
    });
    if waves {
        v["waves"] = r
            .waves
            .iter()
            .map(|w| {
                json!({"name": w.name, "state": w.state, "hosts": w.hosts.iter().map(|h| json!({
                    "name": h.name, "state": h.state,
                    "steps": h.steps.iter().map(|s| json!({
                        "name": s.name, "state": s.state, "exit_code": s.exit_code,
                        "duration_ms": s.duration_ms, "output": s.output,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()})
            })
            .collect();
    }
    v
}

fn list(all: &[v1::Rollout], fmt: Format, out: &mut impl Write) -> anyhow::Result<()> {
    if fmt == Format::Json {
        for r in all {
            json_line(out, &rollout_json(r, false))?;
        }
        return Ok(());
    }
    let mut t = Table::new(&mut *out, &["ID", "NAME", "STATE", "CREATED", "FINISHED"])?;
    for r in all {
        t.row(&[
            r.id.clone(),
            esc(&r.name).into_owned(),
            r.state.clone(),
            time(r.created_unix_ms).unwrap_or_default(),
            time(r.finished_unix_ms).unwrap_or_else(|| "-".into()),
        ])?;
    }
    t.finish()?;
    Ok(())
}

fn show(r: &v1::Rollout, fmt: Format, out: &mut impl Write) -> anyhow::Result<()> {
    if fmt == Format::Json {
        json_line(out, &rollout_json(r, true))?;
        return Ok(());
    }
    writeln!(out, "{} {:?}: {}", r.id, esc(&r.name), r.state)?;
    for w in &r.waves {
        writeln!(out, "\nwave {} ({})", esc(&w.name), w.state)?;
        for h in &w.hosts {
            writeln!(out, "  {} {}", esc(&h.name), h.state)?;
            for s in &h.steps {
                let code = s.exit_code.map_or(String::new(), |c| format!(" exit {c}"));
                writeln!(
                    out,
                    "    {} {}: {}{} ({} ms)",
                    s.phase,
                    esc(&s.name),
                    s.state,
                    code,
                    s.duration_ms
                )?;
                for line in s
                    .output
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    writeln!(out, "      | {}", esc(line))?;
                }
            }
        }
    }
    Ok(())
}
