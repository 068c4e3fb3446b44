use super::*;

/// SPEC §10's example, whole.
pub(crate) const SPEC: &str = r#"
[defaults]
group_by = ["alertname", "host"]
group_wait = "10s"
group_interval = "1m"
repeat_interval = "4h"

[[rule]]
name = "HostDown"
kind = "host_silent"
after = "30s"
severity = "critical"
summary = "{{ host }} has sent nothing for {{ value }}"

[[rule]]
name = "HighCpu"
kind = "threshold"
metric = "cpu_usage_percent"
op = ">"
value = 90
for = "5m"
selector = "role=prod"
severity = "high"

[[rule]]
name = "SshBruteForce"
kind = "event_count"
match = { source = "fail2ban", kind = "ban" }
count = 5
window = "1m"
severity = "high"

[[rule]]
name = "IdsAlert"
kind = "event"
match = { source = "suricata", kind = "alert", severity = "high" }
severity = "critical"
labels = { team = "security" }
summary = "{{ fields.signature }} from {{ fields.src_ip }} on {{ host }}"

[[rule]]
name = "RolloutFailed"
kind = "rollout_failed"
severity = "high"

[[inhibit]]
source = { severity = "critical" }
target = { severity = "info|low|medium|high" }
equal = ["host"]

[[notifier]]
name = "ops"
kind = "slack"
url = "https://hooks.slack.com/services/…"

[[notifier]]
name = "oncall"
kind = "pagerduty"
routing_key = "…"

[[notifier]]
name = "am"
kind = "alertmanager"
url = "http://10.0.1.30:9093"

[[notifier]]
name = "mail"
kind = "email"
smtp = "smtp.example.com:587"
starttls = true
from = "picket@example.com"
to = ["ops@example.com"]

[[route]]
match = { severity = "critical" }
notifiers = ["oncall", "ops"]
continue = true

[[route]]
notifiers = ["ops", "am"]
"#;

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

#[test]
fn the_spec_example_reads_whole() {
    let r = parse(SPEC).unwrap();
    assert_eq!(r.rules.len(), 5);
    assert_eq!(r.grouping.group_wait, Duration::from_secs(10));
    assert_eq!(
        r.rules[1].kind,
        Kind::Threshold {
            metric: "cpu_usage_percent".into(),
            op: Op::Gt,
            value: 90.0,
            hold: Duration::from_secs(300)
        }
    );
    match &r.rules[3].kind {
        Kind::Event {
            matcher,
            resolve_after,
        } => {
            assert_eq!(matcher.severity, Some(Severity::High));
            assert_eq!(*resolve_after, Duration::from_secs(300));
        }
        k => panic!("{k:?}"),
    }
    assert!(
        r.inhibits[0]
            .target
            .matches(&[("severity".into(), "low".into())].into())
    );
    assert!(
        !r.inhibits[0]
            .target
            .matches(&[("severity".into(), "critical".into())].into())
    );
    assert_eq!(
        r.notifiers[1].kind,
        NotifierKind::PagerDuty {
            url: PAGERDUTY_URL.into(),
            routing_key: "…".into()
        }
    );
    assert!(r.routes[0].continue_ && r.routes[1].matches.requirements().is_empty());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn every_problem_names_its_rule_or_notifier_and_field() {
    let text = SPEC
        .replace("kind = \"host_silent\"", "kind = \"host_down\"")
        .replace("for = \"5m\"", "for = \"five minutes\"")
        .replace(
            "notifiers = [\"ops\", \"am\"]",
            "notifiers = [\"ops\", \"pager\"]",
        )
        .replace("{{ fields.signature }}", "{{ fields.signature")
        .replace(
            "url = \"http://10.0.1.30:9093\"",
            "url = \"ftp://10.0.1.30\"",
        );
    let p = problems(&text);
    let want = [
        "rule \"HostDown\".kind: unknown kind \"host_down\"",
        "rule \"HighCpu\".for: \"five minutes\" is not a duration",
        "rule \"IdsAlert\".summary: template does not parse",
        "notifier \"am\".url: \"ftp://10.0.1.30\" is not an http:// or https:// URL",
        "route[1].notifiers: no notifier named \"pager\"",
    ];
    assert_eq!(p.len(), want.len(), "{p:#?}");
    for (got, want) in p.iter().zip(want) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
}

#[test]
fn keys_of_another_kind_and_unknown_keys_are_refused() {
    let p = problems("[[rule]]\nname = \"x\"\nkind = \"host_silent\"\nafter = \"1m\"\ncount = 3\n");
    assert_eq!(p, ["rule \"x\".count: not a key of a host_silent rule"]);
    let p = problems("[[rule]]\nname = \"x\"\nkind = \"host_silent\"\nafer = \"1m\"\n");
    assert!(p[0].contains("unknown field `afer`"), "{p:?}");
    let p = problems("[[rule]]\nname = \"x\"\nkind = \"event\"\nmatch = { sauce = \"a\" }\n");
    assert_eq!(
        p,
        ["rule \"x\".match.sauce: unknown key (source, kind, severity or fields.NAME)"]
    );
}

#[test]
fn a_metric_nobody_reports_is_a_warning_not_an_error() {
    let r = parse("[[rule]]\nname = \"t\"\nkind = \"threshold\"\nmetric = \"gpu_temp\"\nop = \">\"\nvalue = 1\n")
        .unwrap();
    assert_eq!(r.warnings.len(), 1);
    assert!(r.warnings[0].contains("gpu_temp"));
}

#[test]
fn event_matchers_take_fields_and_a_minimum_severity() {
    let r = parse(
        "[[rule]]\nname = \"o\"\nkind = \"event\"\nmatch = { source = \"ossec\", severity = \"high\", \"fields.rule_id\" = \"5712\" }\n",
    )
    .unwrap();
    let Kind::Event { matcher, .. } = &r.rules[0].kind else {
        panic!()
    };
    let fields = [("rule_id".to_string(), "5712".to_string())].into();
    assert!(matcher.matches("ossec", "alert", Severity::Critical, &fields));
    assert!(!matcher.matches("ossec", "alert", Severity::Medium, &fields));
    assert!(!matcher.matches("ossec", "alert", Severity::High, &BTreeMap::new()));
}

#[test]
fn the_documented_seed_file_parses() {
    let text = include_str!("../../../docs/alerts.toml");
    let rules = parse(text).unwrap_or_else(|e| panic!("docs/alerts.toml: {e}"));
    assert_eq!(rules.rules.len(), 7);
    assert_eq!(rules.notifiers.len(), 5);
    assert!(rules.warnings.is_empty(), "{:?}", rules.warnings);
}

#[test]
fn a_mail_password_is_never_sent_in_clear_to_a_remote_server() {
    let mail = |smtp: &str, starttls: bool| {
        format!(
            "[[notifier]]\nname = \"mail\"\nkind = \"email\"\nsmtp = \"{smtp}\"\nstarttls = {starttls}\n\
             from = \"p@example.com\"\nto = [\"o@example.com\"]\nusername = \"u\"\npassword_file = \"/etc/picket/pw\"\n"
        )
    };
    let p = problems(&mail("smtp.example.com:25", false));
    assert!(
        p.len() == 1 && p[0].starts_with("notifier \"mail\".starttls: false with a password_file"),
        "{p:?}"
    );
    assert!(problems(&mail("smtp.example.com:587", true)).is_empty());
    assert!(
        problems(&mail("127.0.0.1:25", false)).is_empty(),
        "a local relay"
    );
}

#[test]
fn a_secret_under_a_wrong_key_is_not_quoted_in_the_error() {
    let text =
        "[[notifier]]\nname = \"pd\"\nkind = \"pagerduty\"\nrouting_ky = \"S3CRET-ROUTING-KEY\"\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("line 4, column 1:") && p[0].contains("routing_ky"),
        "{p:?}"
    );
    assert!(!p[0].contains("S3CRET"), "{p:?}");
}
