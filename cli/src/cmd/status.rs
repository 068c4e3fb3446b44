//! `picketctl status` and `picketctl whoami`.

use std::io::Write;

use picket_model::Role;
use picket_proto::v1;
use serde_json::json;

use super::rpc;
use crate::args::Format;
use crate::client::Admin;
use crate::output::{escape_terminal as esc, json_line, time};

pub async fn status(admin: &mut Admin, fmt: Format, out: &mut impl Write) -> anyhow::Result<()> {
    let s = admin
        .status(v1::StatusRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    match fmt {
        Format::Json => json_line(
            out,
            &json!({
                "version": s.version,
                "hosts": {"up": s.agents_online, "down": s.agents_offline, "revoked": s.agents_revoked},
                "alerts_firing": s.alerts_firing,
                "rollouts_running": s.rollouts_running,
                "agent_versions": s.agent_versions,
                "replicas": s.replicas.iter()
                    .map(|r| json!({"node": r.node, "advertise": r.advertise}))
                    .collect::<Vec<_>>(),
                "leader": (!s.leader.is_empty()).then_some(&s.leader),
                "leader_since": time(s.leader_since_unix_ms).filter(|_| !s.leader.is_empty()),
            }),
        )?,
        Format::Table => {
            writeln!(out, "control plane  {}", s.version)?;
            writeln!(
                out,
                "hosts          {} up, {} down, {} revoked",
                s.agents_online, s.agents_offline, s.agents_revoked
            )?;
            writeln!(out, "alerts         {} firing", s.alerts_firing)?;
            writeln!(out, "rollouts       {} running", s.rollouts_running)?;
            writeln!(out, "agents         {}", by_version(&s.agent_versions))?;
            if !s.replicas.is_empty() || !s.leader.is_empty() {
                let names: Vec<String> = s
                    .replicas
                    .iter()
                    .map(|r| format!("{} ({})", esc(&r.node), esc(&r.advertise)))
                    .collect();
                writeln!(out, "replicas       {}", names.join(", "))?;
                let leader = if s.leader.is_empty() {
                    "none (an election is under way, or etcd has no quorum)".to_string()
                } else {
                    let since = time(s.leader_since_unix_ms).unwrap_or_else(|| "?".into());
                    format!("{} since {since}", esc(&s.leader))
                };
                writeln!(out, "leader         {leader}")?;
            }
        }
    }
    Ok(())
}

/// `0.1.0+1a2b3c4d (4), 0.1.0+0f9e8d7c (1)`: the largest count first.
fn by_version(v: &std::collections::BTreeMap<String, u32>) -> String {
    let mut v: Vec<(&String, &u32)> = v.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = v
        .iter()
        .map(|(version, n)| {
            let version = if version.is_empty() {
                "never connected"
            } else {
                version
            };
            format!("{version} ({n})")
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

pub async fn whoami(admin: &mut Admin, fmt: Format, out: &mut impl Write) -> anyhow::Result<()> {
    let w = admin
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    let role = picket_proto::convert::role(w.role).map_or("unknown", Role::as_str);
    match fmt {
        Format::Json => json_line(out, &json!({"name": w.name, "role": role}))?,
        Format::Table => writeln!(out, "{} ({role})", w.name)?,
    }
    Ok(())
}
