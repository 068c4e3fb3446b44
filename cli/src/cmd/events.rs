//! `picketctl events`: JSON lines as SPEC §6 shows them, or one line an
//! event for people.

use picket_model::Severity;
use picket_proto::v1;
use serde_json::json;

use super::{print_stream, rpc};
use crate::args::Format;
use crate::client::Admin;
use crate::output::{escape_terminal as esc, json_line, time};

pub async fn run(admin: &mut Admin, q: v1::EventsQuery, fmt: Format) -> anyhow::Result<()> {
    let stream = admin.stream_events(q).await.map_err(rpc)?.into_inner();
    print_stream(stream, |out, e| {
        let sev = picket_proto::convert::severity(e.severity).map_or("info", Severity::as_str);
        match fmt {
            Format::Json => {
                let fields: std::collections::BTreeMap<_, _> = e.fields.iter().collect();
                json_line(
                    out,
                    &json!({"host": e.host, "source": e.source, "seq": e.seq,
                            "time": time(e.time_unix_ms), "received": time(e.received_unix_ms),
                            "severity": sev, "kind": e.kind, "message": e.message,
                            "fields": fields, "path": e.path, "cursor": e.cursor}),
                )
            }
            Format::Table => {
                let mut fields: Vec<String> = e
                    .fields
                    .iter()
                    .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
                    .collect();
                fields.sort();
                writeln!(
                    out,
                    "{}  {:<12} {:<8} {:<8} {:<12} {}",
                    time(e.time_unix_ms).unwrap_or_default(),
                    esc(&e.host),
                    esc(&e.source),
                    sev,
                    esc(&e.kind),
                    fields.join(" ")
                )
            }
        }
    })
    .await
}
