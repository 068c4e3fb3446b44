//! Suricata's eve.json: one JSON object a line; the kind is its
//! `event_type`, with the flow's addresses and, for alerts, every alert
//! field.

use std::borrow::Cow;

use picket_model::Severity;

use super::json::{Object, text, text_or_json};
use super::{Parsed, time};

/// The flow's members, kept as fields when present.
const FLOW: [&str; 8] = [
    "src_ip",
    "src_port",
    "dest_ip",
    "dest_port",
    "proto",
    "flow_id",
    "app_proto",
    "in_iface",
];

pub fn parse(line: &str) -> Parsed<'_> {
    let Some(eve) = Object::parse(line) else {
        return Parsed::unparsed("other", line, None);
    };
    let Some(kind) = eve.string("event_type") else {
        return Parsed::unparsed("other", line, None);
    };
    let t = eve.string("timestamp").and_then(|s| time::rfc3339ish(&s));
    // The severity is known once the alert's members have been read.
    let mut p = Parsed::new(kind, Severity::Info, line).at(t);
    for name in FLOW {
        if let Some(s) = eve.get(name).and_then(text) {
            p = p.field(name, s);
        }
    }
    let mut alert_severity = None;
    for (k, val) in eve.object("alert").iter().flat_map(Object::iter) {
        let name = match k.as_ref() {
            "severity" => {
                alert_severity = val.get().parse::<u64>().ok();
                Cow::Borrowed("alert_severity")
            }
            _ => k.clone(),
        };
        // Every alert field, empty ones too: "in full".
        p.fields.insert(name, text_or_json(val));
    }
    p.severity = match p.kind.as_ref() {
        "alert" => match alert_severity {
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
    use crate::corpus;
    use serde_json::Value;

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
                kinds.insert(p.kind.to_string());
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
        assert_eq!((p.kind.as_ref(), p.severity), ("anomaly", Severity::Low));
        assert_eq!(p.time_ms, Some(1_734_372_015_123));
        let p = parse(
            r#"{"event_type":"alert","src_ip":{"odd":1},"src_port":null,"flow_id":12,"alert":{"signature":"a \"q\" \u00e9","metadata":{"x": [1, 2]},"rev":1.50,"severity":1}}"#,
        );
        assert_eq!(p.severity, Severity::High);
        assert_eq!(p.fields["signature"], "a \"q\" é", "strings are unescaped");
        assert_eq!(
            p.fields["metadata"], r#"{"x":[1,2]}"#,
            "nested values as compact JSON"
        );
        assert_eq!(p.fields["rev"], "1.50", "numbers as written");
        assert_eq!(p.fields["flow_id"], "12");
        assert!(!p.fields.contains_key("src_ip") && !p.fields.contains_key("src_port"));
        let p = parse(r#"{"event_type":"dns","timestamp":5,"alert":"x"}"#);
        assert!(
            p.parsed && p.time_ms.is_none(),
            "odd types are skipped, not fatal"
        );
        let p = parse(r#"{"event_type":"drop"}"#);
        assert_eq!(p.severity, Severity::Low);
        for bad in ["{not json", "[]", r#"{"no_type":1}"#, ""] {
            let p = parse(bad);
            assert_eq!((p.kind.as_ref(), p.parsed), ("other", false), "{bad}");
        }
    }
}
