//! The Prometheus text exposition's names and label values for what hosts
//! send: escaped values, safe names, host labels that cannot clash with
//! the control plane's own, and the host metrics' help texts
//! (docs/metrics.md).

/// A host's labels as Prometheus labels: (name, escaped value).
pub type Labels = Vec<(String, String)>;

/// A label value as the Prometheus text exposition writes it between
/// quotes: `\\`, `"` and newlines escaped (prometheus-client writes values
/// as given, so one host's label value could otherwise end the quote, add
/// labels and break the scrape for the whole fleet).
pub fn exposition_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text for the host metrics agents send; see docs/metrics.md.
pub fn metric_help(name: &str) -> &'static str {
    match name {
        "cpu_usage_percent" => "CPU busy time over the last interval, percent of all CPUs",
        "load1" => "Load average over 1 minute",
        "load5" => "Load average over 5 minutes",
        "load15" => "Load average over 15 minutes",
        "memory_used_bytes" => "Memory in use",
        "memory_total_bytes" => "Memory installed",
        "swap_used_bytes" => "Swap in use",
        "swap_total_bytes" => "Swap configured",
        "disk_used_bytes" => "Disk space used, per mount",
        "disk_total_bytes" => "Disk space, per mount",
        "network_receive_bytes" => "Bytes received since boot, per interface",
        "network_transmit_bytes" => "Bytes sent since boot, per interface",
        "network_receive_bytes_per_second" => "Receive rate over the last interval, per interface",
        "network_transmit_bytes_per_second" => "Send rate over the last interval, per interface",
        "uptime_seconds" => "Seconds since boot",
        "processes" => "Processes running",
        "agent_buffer_dropped_records" => {
            "Records the agent dropped because its buffer was full, by kind"
        }
        "agent_buffer_bytes" => "Bytes held in the agent's on-disk buffer",
        "agent_buffer_damaged_records" => {
            "Records lost with buffer chunks the agent found damaged on disk"
        }
        _ => "Host metric reported by the agent",
    }
}

/// A Prometheus label or metric name from free text: `[a-zA-Z0-9_]`, not
/// starting with a digit.
pub fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Agent labels as Prometheus labels; keys that would clash with ours or
/// with reserved names get a `label_` prefix, and of two keys that come
/// out the same (`team.name`, `team_name`) the first is kept.
pub fn host_labels(host: &str, labels: &crate::Labels) -> Labels {
    let mut out = vec![("host".to_string(), exposition_value(host))];
    for (k, v) in labels {
        let mut k = sanitize(k);
        if matches!(
            k.as_str(),
            "host" | "mount" | "interface" | "kind" | "job" | "instance"
        ) || k.starts_with("__")
            || k.is_empty()
        {
            k = format!("label_{k}");
        }
        if !out.iter().any(|(x, _)| *x == k) {
            out.push((k, exposition_value(v)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_prometheus_safe() {
        assert_eq!(sanitize("disk.used-bytes"), "disk_used_bytes");
        assert_eq!(sanitize("1x"), "_1x");
        let l = host_labels(
            "vm",
            &[("host".into(), "x".into()), ("team/a".into(), "y".into())].into(),
        );
        assert_eq!(l[0], ("host".into(), "vm".into()));
        assert!(l.contains(&("label_host".into(), "x".into())));
        assert!(l.contains(&("team_a".into(), "y".into())));
        let l = host_labels(
            "vm",
            &[
                ("owner".into(), "x\",host=\"db1\\".into()),
                ("owner_".into(), "a\nb".into()),
                ("team.a".into(), "1".into()),
                ("team_a".into(), "2".into()),
            ]
            .into(),
        );
        assert!(l.contains(&("owner".into(), r#"x\",host=\"db1\\"#.into())));
        assert!(l.contains(&("owner_".into(), r"a\nb".into())));
        assert_eq!(l.iter().filter(|(k, _)| k == "team_a").count(), 1);
    }
}
