//! `picketctl agents list|show|label|revoke|forget`.

use std::io::Write;

use picket_proto::v1;

use super::rpc;
use crate::args::{AgentsCmd, Format};
use crate::client::Admin;
use crate::output::{Table, agent_json, agent_state, ago, json_line, labels_str};

pub async fn run(
    admin: &mut Admin,
    cmd: AgentsCmd,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let agents = match cmd {
        AgentsCmd::Forget { name } => {
            let r = admin
                .forget_agent(v1::ForgetAgentRequest { name })
                .await
                .map_err(rpc)?
                .into_inner();
            return match fmt {
                Format::Json => Ok(json_line(
                    out,
                    &serde_json::json!({"name": r.name, "forgotten": true}),
                )?),
                Format::Table => Ok(writeln!(
                    out,
                    "Agent {} forgotten: it may enroll again with a new token",
                    r.name
                )?),
            };
        }
        AgentsCmd::List => {
            admin
                .list_agents(v1::ListAgentsRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .agents
        }
        AgentsCmd::Show { name } => vec![
            admin
                .get_agent(v1::GetAgentRequest { name })
                .await
                .map_err(rpc)?
                .into_inner(),
        ],
        AgentsCmd::Label { name, changes } => {
            let mut req = v1::LabelAgentRequest {
                name,
                ..Default::default()
            };
            for c in changes {
                match c.strip_suffix('-').filter(|k| !k.contains('=')) {
                    Some(k) => req.remove.push(k.to_string()),
                    None => {
                        let (k, v) = picket_model::parse_label(&c)
                            .map_err(|e| crate::BadConfig(anyhow::anyhow!("{c}: {e}")))?;
                        req.set.insert(k, v);
                    }
                }
            }
            vec![admin.label_agent(req).await.map_err(rpc)?.into_inner()]
        }
        AgentsCmd::Revoke { name } => vec![
            admin
                .revoke_agent(v1::RevokeAgentRequest { name })
                .await
                .map_err(rpc)?
                .into_inner(),
        ],
    };
    match fmt {
        Format::Json => {
            for a in &agents {
                json_line(out, &agent_json(a))?;
            }
        }
        Format::Table => {
            let now = picket_clock::now_ms();
            let mut t = Table::new(
                &mut *out,
                &[
                    "NAME",
                    "STATUS",
                    "LAST SEEN",
                    "VERSION",
                    "OS",
                    "ADDRESSES",
                    "LABELS",
                ],
            )?;
            for a in &agents {
                let inv = a.inventory.clone().unwrap_or_default();
                t.row(&[
                    a.name.clone(),
                    agent_state(a),
                    ago(a.last_seen_unix_ms, now),
                    inv.agent_version,
                    inv.os,
                    inv.addresses.join(","),
                    labels_str(&a.labels),
                ])?;
            }
            t.finish()?;
            if let [a] = &agents[..]
                && let Some(r) = &a.last_rollout
            {
                writeln!(
                    out,
                    "\nLast rollout: {} {:?}: {} (this host: {})",
                    r.id, r.name, r.state, r.host_state
                )?;
            }
        }
    }
    Ok(())
}
