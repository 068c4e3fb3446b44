//! `picketctl alerts list|show|rules|reload|test` and `picketctl silence
//! create|list|expire` (SPEC §10). `alerts list -o json` prints one line
//! per alert with the SPEC's fields (`fingerprint`, `rule`, `state`,
//! `severity`, `labels`, `started`, `value`, `silenced`) and `inhibited`,
//! `annotations`, `ended`.

use std::io::Write;

use picket_proto::v1;
use serde_json::{Value, json};

use super::rpc;
use crate::args::{AlertsCmd, Format, SilenceCmd};
use crate::client::Admin;
use crate::output::{Table, escape_terminal as esc, json_line, labels_str, time};

pub async fn run(
    admin: &mut Admin,
    cmd: AlertsCmd,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        // Answered before anything connects (`cmd::check`).
        AlertsCmd::Check { .. } => Ok(()),
        AlertsCmd::List { state } => {
            let all = admin
                .list_alerts(v1::ListAlertsRequest {
                    state: state.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .alerts;
            list(&all, fmt, out)?;
            if fmt == Format::Table {
                // Notifiers that are failing, under the alerts they would
                // have told someone about.
                let r = admin
                    .list_alert_rules(v1::ListAlertRulesRequest {})
                    .await
                    .map_err(rpc)?
                    .into_inner();
                for n in r.notifiers.iter().filter(|n| n.queued > 0 || n.failed > 0) {
                    writeln!(
                        out,
                        "notifier {}: {} waiting, {} failed since start; last error: {}",
                        esc(&n.name),
                        n.queued,
                        n.failed,
                        esc(if n.last_error.is_empty() {
                            "-"
                        } else {
                            &n.last_error
                        })
                    )?;
                }
            }
            Ok(())
        }
        AlertsCmd::Show { fingerprint } => {
            let a = admin
                .get_alert(v1::GetAlertRequest { fingerprint })
                .await
                .map_err(rpc)?
                .into_inner();
            show(&a, fmt, out)
        }
        AlertsCmd::Rules => {
            let r = admin
                .list_alert_rules(v1::ListAlertRulesRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            rules(&r, fmt, out)
        }
        AlertsCmd::Reload => {
            let r = admin
                .reload_alerts(v1::ReloadAlertsRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            match fmt {
                Format::Json => json_line(
                    out,
                    &json!({"rules": r.rules, "notifiers": r.notifiers, "warnings": r.warnings}),
                )?,
                Format::Table => {
                    writeln!(
                        out,
                        "reloaded: {} rule(s), {} notifier(s)",
                        r.rules, r.notifiers
                    )?;
                    for w in &r.warnings {
                        writeln!(out, "warning: {}", esc(w))?;
                    }
                }
            }
            Ok(())
        }
        AlertsCmd::Test { notifier } => {
            admin
                .test_notifier(v1::TestNotifierRequest {
                    notifier: notifier.clone(),
                })
                .await
                .map_err(rpc)?;
            match fmt {
                Format::Json => json_line(out, &json!({"notifier": notifier, "sent": true}))?,
                Format::Table => writeln!(out, "sent a test notification to {notifier}")?,
            }
            Ok(())
        }
    }
}

fn alert_json(a: &v1::Alert) -> Value {
    json!({
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "state": a.state,
        "severity": a.severity,
        "labels": a.labels,
        "annotations": a.annotations,
        "started": time(a.started_unix_ms),
        "ended": time(a.ended_unix_ms),
        "value": a.value,
        "silenced": a.silenced,
        "inhibited": a.inhibited,
    })
}

fn state_str(a: &v1::Alert) -> String {
    match (a.silenced, a.inhibited) {
        (true, _) => format!("{} (silenced)", a.state),
        (false, true) => format!("{} (inhibited)", a.state),
        _ => a.state.clone(),
    }
}

fn list(all: &[v1::Alert], fmt: Format, out: &mut impl Write) -> anyhow::Result<()> {
    if fmt == Format::Json {
        for a in all {
            json_line(out, &alert_json(a))?;
        }
        return Ok(());
    }
    let mut t = Table::new(
        &mut *out,
        &[
            "FINGERPRINT",
            "RULE",
            "STATE",
            "SEVERITY",
            "HOST",
            "STARTED",
            "VALUE",
            "SUMMARY",
        ],
    )?;
    for a in all {
        t.row(&[
            a.fingerprint.clone(),
            esc(&a.rule).into_owned(),
            state_str(a),
            a.severity.clone(),
            esc(a.labels.get("host").map_or("-", String::as_str)).into_owned(),
            time(a.started_unix_ms).unwrap_or_else(|| "-".into()),
            esc(&a.value).into_owned(),
            esc(a.annotations.get("summary").map_or("", String::as_str)).into_owned(),
        ])?;
    }
    t.finish()?;
    Ok(())
}

fn show(a: &v1::Alert, fmt: Format, out: &mut impl Write) -> anyhow::Result<()> {
    if fmt == Format::Json {
        json_line(out, &alert_json(a))?;
        return Ok(());
    }
    writeln!(out, "{} {}: {}", a.fingerprint, esc(&a.rule), state_str(a))?;
    writeln!(out, "  severity  {}", a.severity)?;
    writeln!(out, "  labels    {}", esc(&labels_str(&a.labels)))?;
    writeln!(
        out,
        "  active    {}",
        time(a.active_unix_ms).unwrap_or_default()
    )?;
    if let Some(t) = time(a.started_unix_ms) {
        writeln!(out, "  started   {t}")?;
    }
    if let Some(t) = time(a.ended_unix_ms) {
        writeln!(out, "  ended     {t}")?;
    }
    if !a.value.is_empty() {
        writeln!(out, "  value     {}", esc(&a.value))?;
    }
    for (k, v) in &a.annotations {
        writeln!(out, "  {k:<9} {}", esc(v))?;
    }
    Ok(())
}

fn rules(r: &v1::ListAlertRulesResponse, fmt: Format, out: &mut impl Write) -> anyhow::Result<()> {
    if fmt == Format::Json {
        json_line(
            out,
            &json!({
                "file": r.file,
                "loaded": time(r.loaded_unix_ms),
                "rules": r.rules.iter().map(|x| json!({
                    "name": x.name, "kind": x.kind, "severity": x.severity,
                    "condition": x.condition, "selector": x.selector,
                })).collect::<Vec<_>>(),
                "notifiers": r.notifiers.iter().map(|n| json!({
                    "name": n.name, "kind": n.kind, "target": n.target,
                    "queued": n.queued, "failed": n.failed, "last_error": n.last_error,
                })).collect::<Vec<_>>(),
                "warnings": r.warnings,
            }),
        )?;
        return Ok(());
    }
    if r.file.is_empty() {
        writeln!(out, "no alert file (set `alerts` in control.toml)")?;
    } else {
        writeln!(
            out,
            "{} (read {})",
            esc(&r.file),
            time(r.loaded_unix_ms).unwrap_or_default()
        )?;
    }
    writeln!(out)?;
    let mut t = Table::new(
        &mut *out,
        &["RULE", "KIND", "SEVERITY", "CONDITION", "HOSTS"],
    )?;
    for x in &r.rules {
        t.row(&[
            esc(&x.name).into_owned(),
            x.kind.clone(),
            x.severity.clone(),
            esc(&x.condition).into_owned(),
            if x.selector.is_empty() {
                "all".to_string()
            } else {
                esc(&x.selector).into_owned()
            },
        ])?;
    }
    t.finish()?;
    writeln!(out)?;
    let mut t = Table::new(
        &mut *out,
        &[
            "NOTIFIER",
            "KIND",
            "TARGET",
            "QUEUED",
            "FAILED",
            "LAST ERROR",
        ],
    )?;
    for n in &r.notifiers {
        t.row(&[
            esc(&n.name).into_owned(),
            n.kind.clone(),
            esc(&n.target).into_owned(),
            n.queued.to_string(),
            n.failed.to_string(),
            esc(&n.last_error).into_owned(),
        ])?;
    }
    t.finish()?;
    for w in &r.warnings {
        writeln!(out, "warning: {}", esc(w))?;
    }
    Ok(())
}

fn silence_json(s: &v1::Silence) -> Value {
    json!({
        "id": s.id,
        "matchers": s.matchers,
        "ends": time(s.ends_unix_ms),
        "created": time(s.created_unix_ms),
        "created_by": s.created_by,
        "comment": s.comment,
    })
}

pub async fn silence(
    admin: &mut Admin,
    cmd: SilenceCmd,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        SilenceCmd::Create {
            matchers,
            duration,
            comment,
        } => {
            let s = admin
                .create_silence(v1::CreateSilenceRequest {
                    matchers: matchers.into_iter().collect(),
                    duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                    comment,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            match fmt {
                Format::Json => json_line(out, &silence_json(&s))?,
                Format::Table => writeln!(out, "{}", s.id)?,
            }
        }
        SilenceCmd::List => {
            let all = admin
                .list_silences(v1::ListSilencesRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .silences;
            if fmt == Format::Json {
                for s in &all {
                    json_line(out, &silence_json(s))?;
                }
                return Ok(());
            }
            let mut t = Table::new(
                &mut *out,
                &["ID", "MATCHERS", "ENDS", "CREATED BY", "COMMENT"],
            )?;
            for s in &all {
                t.row(&[
                    s.id.clone(),
                    esc(&labels_str(&s.matchers)).into_owned(),
                    time(s.ends_unix_ms).unwrap_or_default(),
                    esc(&s.created_by).into_owned(),
                    esc(&s.comment).into_owned(),
                ])?;
            }
            t.finish()?;
        }
        SilenceCmd::Expire { id } => {
            let s = admin
                .expire_silence(v1::ExpireSilenceRequest { id })
                .await
                .map_err(rpc)?
                .into_inner();
            match fmt {
                Format::Json => json_line(out, &silence_json(&s))?,
                Format::Table => writeln!(out, "{}: expired", s.id)?,
            }
        }
    }
    Ok(())
}
