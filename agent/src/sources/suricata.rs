//! Suricata's eve.json: one JSON object a line; the kind is its
//! `event_type`, with the flow's addresses and, for alerts, every alert
//! field.

use picket_proto::model::Severity;
use serde_json::Value;

use super::{Parsed, time};

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn parse(line: &str) -> Parsed {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Parsed::unparsed("other", line, None);
    };
    let Some(kind) = v.get("event_type").and_then(Value::as_str) else {
        return Parsed::unparsed("other", line, None);
    };
    let t = v
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(time::rfc3339ish);
    let mut p = Parsed::new(kind, Severity::Info, line).at(t);
    for (key, name) in [
        ("src_ip", "src_ip"),
        ("src_port", "src_port"),
        ("dest_ip", "dest_ip"),
        ("dest_port", "dest_port"),
        ("proto", "proto"),
        ("flow_id", "flow_id"),
        ("app_proto", "app_proto"),
        ("in_iface", "in_iface"),
    ] {
        if let Some(s) = v.get(key).and_then(text) {
            p = p.field(name, s);
        }
    }
    if let Some(alert) = v.get("alert").and_then(Value::as_object) {
        for (k, val) in alert {
            let name = match k.as_str() {
                "severity" => "alert_severity".to_string(),
                other => other.to_string(),
            };
            // Every alert field, empty ones too: "in full".
            let s = match val {
                Value::Object(_) | Value::Array(_) => val.to_string(),
                other => text(other).unwrap_or_default(),
            };
            p.fields.insert(name, s);
        }
    }
    p.severity = match kind {
        "alert" => match v.pointer("/alert/severity").and_then(Value::as_u64) {
            Some(1) => Severity::High,
            Some(2) => Severity::Medium,
            _ => Severity::Low,
        },
        "anomaly" | "drop" => Severity::Low,
        _ => Severity::Info,
    };
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::corpus;

    #[test]
    fn every_corpus_line_parses_with_its_event_type() {
        let mut kinds = std::collections::BTreeSet::new();
        for f in [
            "alert-testmyids-not-established",
            "alert-testmyids",
            "dnp3-dnp3_data-alert",
            "dns-tcp-www-google-com",
            "engine-state-detect-engine-state-03",
            "eve-dns",
            "output-eve-fileinfo",
            "tls-fingerprint-alert",
            "tls-json-output-ids",
        ] {
            for line in corpus::read(&format!("suricata/{f}.eve.json"))
                .lines()
                .filter(|l| !l.is_empty())
            {
                let p = parse(line);
                assert!(p.parsed, "{f}: {line}");
                let want: Value = serde_json::from_str(line).unwrap();
                assert_eq!(p.kind, want["event_type"].as_str().unwrap());
                assert!(p.time_ms.is_some(), "{line}");
                kinds.insert(p.kind.clone());
                if p.kind == "alert" {
                    for k in [
                        "signature_id",
                        "signature",
                        "category",
                        "alert_severity",
                        "src_ip",
                        "dest_ip",
                        "proto",
                    ] {
                        assert!(p.fields.contains_key(k), "{k} missing in {line}");
                    }
                    let sev = want["alert"]["severity"].as_u64().unwrap();
                    let expect = match sev {
                        1 => Severity::High,
                        2 => Severity::Medium,
                        _ => Severity::Low,
                    };
                    assert_eq!(p.severity, expect);
                    assert_eq!(
                        p.fields["signature_id"],
                        want["alert"]["signature_id"].to_string()
                    );
                }
            }
        }
        for k in ["alert", "dns", "tls", "flow", "fileinfo"] {
            assert!(kinds.contains(k), "{k} not seen in {kinds:?}");
        }
    }

    #[test]
    fn anomaly_drop_and_garbage() {
        let p = parse(
            r#"{"timestamp":"2024-12-16T18:00:15.123456+0000","event_type":"anomaly","src_ip":"192.0.2.1"}"#,
        );
        assert_eq!((p.kind.as_str(), p.severity), ("anomaly", Severity::Low));
        assert_eq!(p.time_ms, Some(1_734_372_015_123));
        let p = parse(r#"{"event_type":"drop"}"#);
        assert_eq!(p.severity, Severity::Low);
        for bad in ["{not json", "[]", r#"{"no_type":1}"#, ""] {
            let p = parse(bad);
            assert_eq!((p.kind.as_str(), p.parsed), ("other", false), "{bad}");
        }
    }
}
