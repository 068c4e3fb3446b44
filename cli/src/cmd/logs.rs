//! `picketctl logs`: JSON lines `{"host","source","path","time","seq","line"}`
//! (SPEC §7), or `host source| line` for people.

use picket_proto::v1;
use serde_json::json;

use super::{print_stream, rpc};
use crate::args::Format;
use crate::client::Admin;
use crate::output::{escape_terminal as esc, json_line, time};

pub async fn run(admin: &mut Admin, q: v1::LogsQuery, fmt: Format) -> anyhow::Result<()> {
    let stream = admin.stream_logs(q).await.map_err(rpc)?.into_inner();
    print_stream(stream, |out, l| match fmt {
        Format::Json => json_line(
            out,
            &json!({"host": l.host, "source": l.source, "path": l.path,
                    "time": time(l.time_unix_ms), "seq": l.seq, "line": l.line,
                    "truncated": l.truncated, "invalid_utf8": l.invalid_utf8,
                    "cursor": l.cursor}),
        ),
        Format::Table => writeln!(out, "{} {}| {}", esc(&l.host), esc(&l.source), esc(&l.line)),
    })
    .await
}
