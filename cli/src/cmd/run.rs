//! `picketctl run`: JSON lines `{"host","state","exit_code","duration_ms",
//! "output"}` (SPEC §9), or a header line per host and its output for
//! people. Exit 1 when any host did not succeed.

use picket_proto::v1;
use serde_json::json;
use tokio_stream::StreamExt;

use super::rpc;
use crate::args::Format;
use crate::client::Admin;
use crate::output::{escape_terminal as esc, json_line};

pub async fn run(admin: &mut Admin, r: v1::RunRequest, fmt: Format) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stream = admin.run(r).await.map_err(rpc)?.into_inner();
    let (mut total, mut bad) = (0usize, 0usize);
    while let Some(item) = stream.next().await {
        let h = item.map_err(rpc)?;
        total += 1;
        if h.state != "succeeded" {
            bad += 1;
        }
        let mut out = std::io::stdout().lock();
        match fmt {
            Format::Json => json_line(
                &mut out,
                &json!({"host": h.host, "state": h.state, "exit_code": h.exit_code,
                        "duration_ms": h.duration_ms, "output": h.output}),
            )?,
            Format::Table => {
                let code = h.exit_code.map_or(String::new(), |c| format!(" exit {c}"));
                writeln!(
                    out,
                    "{} {}{} ({} ms)",
                    esc(&h.host),
                    h.state,
                    code,
                    h.duration_ms
                )?;
                for line in h.output.lines() {
                    writeln!(out, "  | {}", esc(line))?;
                }
            }
        }
        out.flush()?;
    }
    if bad > 0 {
        return Err(crate::Failed(format!("{bad} of {total} host(s) did not succeed")).into());
    }
    Ok(())
}
