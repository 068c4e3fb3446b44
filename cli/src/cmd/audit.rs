//! `picketctl audit`: the newest records, oldest first.

use std::io::Write;

use picket_proto::v1;
use serde_json::json;

use super::rpc;
use crate::args::Format;
use crate::client::Admin;
use crate::output::{Table, json_line, time};

pub async fn run(
    admin: &mut Admin,
    limit: u32,
    since_unix_ms: i64,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let records = admin
        .list_audit(v1::ListAuditRequest {
            limit,
            since_unix_ms,
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .records;
    match fmt {
        Format::Json => {
            for r in &records {
                json_line(
                    out,
                    &json!({"time": time(r.time_unix_ms), "actor": r.actor, "action": r.action,
                            "target": r.target, "outcome": r.outcome}),
                )?;
            }
        }
        Format::Table => {
            let mut t = Table::new(&mut *out, &["TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"])?;
            for r in &records {
                t.row(&[
                    time(r.time_unix_ms).unwrap_or_default(),
                    r.actor.clone(),
                    r.action.clone(),
                    r.target.clone(),
                    r.outcome.clone(),
                ])?;
            }
            t.finish()?;
        }
    }
    Ok(())
}
