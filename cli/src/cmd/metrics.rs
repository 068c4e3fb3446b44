//! `picketctl metrics HOST [--since] [--field]`.

use std::io::Write;
use std::time::Duration;

use picket_proto::v1;
use serde_json::json;

use super::rpc;
use crate::args::Format;
use crate::client::Admin;
use crate::output::{Table, human, json_line, labels_str, sparkline, time};

pub async fn run(
    admin: &mut Admin,
    host: String,
    since: Duration,
    field: String,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let since_ms = picket_clock::ago_ms(since).max(1);
    let r = admin
        .query_metrics(v1::QueryMetricsRequest {
            host: host.clone(),
            since_unix_ms: since_ms,
            field,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    match fmt {
        Format::Json => {
            for s in &r.series {
                let labels: std::collections::BTreeMap<_, _> = s.labels.iter().collect();
                for p in &s.points {
                    let mut v = json!({"host": host, "metric": s.name, "labels": labels,
                                       "time": time(p.time_unix_ms), "value": p.value});
                    if r.resolution != "raw" {
                        v["min"] = json!(p.min);
                        v["max"] = json!(p.max);
                    }
                    json_line(out, &v)?;
                }
            }
        }
        Format::Table => {
            if r.series.is_empty() {
                writeln!(
                    out,
                    "no samples from {host} in the last {}",
                    humantime::format_duration(since)
                )?;
                return Ok(());
            }
            let mut t = Table::new(
                &mut *out,
                &["METRIC", "LABELS", "LAST", "MIN", "MAX", "TREND"],
            )?;
            for s in &r.series {
                let values: Vec<f64> = s.points.iter().map(|p| p.value).collect();
                let last = values.last().copied().unwrap_or(0.0);
                let min = s.points.iter().map(|p| p.min).fold(f64::INFINITY, f64::min);
                let max = s
                    .points
                    .iter()
                    .map(|p| p.max)
                    .fold(f64::NEG_INFINITY, f64::max);
                t.row(&[
                    s.name.clone(),
                    labels_str(&s.labels),
                    human(&s.name, last),
                    human(&s.name, min),
                    human(&s.name, max),
                    sparkline(&values, 40),
                ])?;
            }
            t.finish()?;
            writeln!(
                out,
                "({} resolution, since {})",
                r.resolution,
                time(since_ms).unwrap_or_default()
            )?;
        }
    }
    Ok(())
}
