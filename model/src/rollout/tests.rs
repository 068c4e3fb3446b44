use super::*;

/// SPEC §9's example, as an operator writes it.
const EXAMPLE: &str = r#"
name = "react-frontend v2.1.7"
selector = "role in (staging,prod)"
max_parallel = 1
max_failures = 0
auto_rollback = true
pause_between_waves = "approval"
min_healthy_time = "10s"
host_timeout = "2m"

[[wave]]
name = "staging"
selector = "role=staging"

[[wave]]
name = "prod"
selector = "role=prod"

[[step]]
name = "deploy"
exec = ["/opt/app/deploy.sh", "v2.1.7"]
timeout = "2m"

[[health]]
http = "http://127.0.0.1:8000/health"
retries = 5

[[rollback]]
exec = ["/opt/app/deploy.sh", "v2.1.6"]
"#;

fn raw(text: &str) -> RawSpec {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The problems of `text`, as `field: message` lines.
fn problems(text: &str) -> Vec<String> {
    match raw(text).check() {
        Ok(_) => Vec::new(),
        Err(SpecError(p)) => p.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str = "name = \"x\"\nselector = \"role=prod\"\n[[step]]\nshell = \"true\"\n";

#[test]
fn the_example_reads_with_every_key() {
    let s = raw(EXAMPLE).check().unwrap();
    assert_eq!(s.name, "react-frontend v2.1.7");
    assert_eq!(s.selector.to_string(), "role in (prod,staging)");
    assert_eq!(
        (s.max_parallel, s.max_failures),
        (Amount::Count(1), Amount::Count(0))
    );
    assert!(s.auto_rollback);
    assert_eq!(s.pause_between_waves, Pause::Approval);
    assert_eq!(s.min_healthy_time, Duration::from_secs(10));
    assert_eq!(s.host_timeout, Duration::from_secs(120));
    let waves: Vec<_> = s.waves.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(waves, ["staging", "prod"]);
    assert_eq!(s.steps[0].timeout, Duration::from_secs(120));
    assert!(matches!(&s.steps[0].action, Action::Exec { argv, .. } if argv[1] == "v2.1.7"));
    let Action::Http {
        expect_status,
        probe,
        ..
    } = &s.health[0].action
    else {
        panic!("{:?}", s.health[0]);
    };
    assert_eq!(
        (*expect_status, probe.retries, probe.interval),
        (200, 5, Duration::from_secs(2))
    );
    assert_eq!(
        s.health[0].timeout,
        Duration::from_secs(5),
        "a check's default"
    );
    assert_eq!(
        s.rollback[0].timeout,
        Duration::from_secs(300),
        "a process's default"
    );
}

#[test]
fn defaults_where_the_contract_gives_none() {
    let s = raw(MINIMAL).check().unwrap();
    assert_eq!(
        (s.max_parallel, s.max_failures),
        (Amount::Count(1), Amount::Count(0))
    );
    assert!(!s.auto_rollback);
    assert_eq!(s.pause_between_waves, Pause::Wait(Duration::ZERO));
    assert_eq!(s.host_timeout, Duration::from_secs(120));
    assert_eq!(s.waves.len(), 1, "one wave of every selected host");
    assert!(s.waves[0].selector.is_none());
}

#[test]
fn every_problem_is_named_by_its_field_at_once() {
    let text = r#"
name = ""
selector = "role in (a"
max_parallel = 0
max_failures = "150%"
pause_between_waves = "soon"
auto_rollback = true

[[wave]]
name = "a"
selector = "role=a"

[[wave]]
name = "a"
selector = "Role=b"

[[step]]
exec = ["x"]
shell = "y"

[[step]]
tcp = "nohost"
expect_status = 200

[[health]]
http = "ftp://x"
expect_status = 999
env = { A = "b" }
"#;
    let got = problems(text);
    let want = [
        "name: required",
        "selector: ',' or ')' at character 11",
        "max_parallel: 0: a count of at least 1",
        "max_failures: \"150%\": a count of at least 0",
        "pause_between_waves: \"soon\" is not a duration",
        "wave[1].name: \"a\" is the name of an earlier wave",
        "wave[1].selector: a label key",
        "step[0]: exactly one of exec, shell, http, tcp (found exec and shell)",
        "step[1].expect_status: only for http steps",
        "step[1].tcp: \"nohost\" is not HOST:PORT",
        "health[0].env: only for exec and shell steps",
        "health[0].http: \"ftp://x\" is not an http:// or https:// URL",
        "health[0].expect_status: an HTTP status from 100 to 599",
        "auto_rollback: true, but there is no [[rollback]] step",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

#[test]
fn unknown_keys_and_missing_tables_are_refused() {
    let e = toml::from_str::<RawSpec>("name = \"x\"\nmax_paralel = 1\n").unwrap_err();
    assert!(e.to_string().contains("max_paralel"), "{e}");
    let e = toml::from_str::<RawSpec>("[[step]]\nexec = [\"x\"]\ntimout = \"1s\"\n").unwrap_err();
    assert!(e.to_string().contains("timout"), "{e}");
    let got = problems("name = \"x\"\n");
    assert!(
        got.iter().any(|g| g.starts_with("selector: required")),
        "{got:?}"
    );
    assert!(
        got.iter().any(|g| g.starts_with("step: at least one")),
        "{got:?}"
    );
    assert!(
        problems("name = \"x\"\nselector = \"a\"\n[[step]]\n")
            .iter()
            .any(|g| g.starts_with("step[0]: exactly one of exec, shell, http, tcp (found none)"))
    );
}

#[test]
fn amounts_take_counts_and_percentages() {
    let read = |k: &str, v: &str| raw(&format!("{k} = {v}\n{MINIMAL}")).check();
    assert_eq!(
        read("max_parallel", "\"25%\"").unwrap().max_parallel,
        Amount::Percent(25)
    );
    assert_eq!(
        read("max_failures", "\"0%\"").unwrap().max_failures,
        Amount::Percent(0)
    );
    assert_eq!(
        read("max_failures", "3").unwrap().max_failures,
        Amount::Count(3)
    );
    assert!(read("max_parallel", "\"0%\"").is_err());
    assert!(read("max_parallel", "-1").is_err());
    assert!(read("max_parallel", "\"x%\"").is_err());
    assert_eq!(Amount::Percent(25).of(10), 2);
    assert_eq!(Amount::Percent(25).at_least_one(3), 1);
    assert_eq!(Amount::Percent(100).of(5), 5);
    assert_eq!(Amount::Count(2).of(100), 2);
}

#[test]
fn durations_read_as_humantime_writes_them() {
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    for bad in ["", "5", "s", "5 parsecs", "-1s", "99999999999999999999d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

/// One syntax for every file and flag: what control.toml takes, a rollout
/// file and the alert file take too (`1w` among them).
#[test]
fn one_duration_syntax_everywhere() {
    assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(7 * 86400)));
    assert_eq!(parse_duration("2days"), Ok(Duration::from_secs(2 * 86400)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    // Milliseconds are the unit of every record and timer: no finer.
    assert!(parse_duration("3us0s").is_err());
    assert!(parse_duration("1500ns").is_err());
    assert_eq!(parse_duration("1s 5ms"), Ok(Duration::from_millis(1005)));
    let spec = raw(&EXAMPLE.replace("host_timeout = \"2m\"", "host_timeout = \"1w\""))
        .check()
        .unwrap();
    assert_eq!(spec.host_timeout, Duration::from_secs(7 * 86400));
    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct T {
        #[serde(with = "crate::duration")]
        d: Duration,
    }
    let t: T = toml::from_str("d = \"1w 2h\"").unwrap();
    assert_eq!(t.d, Duration::from_secs(7 * 86400 + 7200));
    let again: T = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
    assert_eq!(again, t);
    let e = toml::from_str::<T>("d = \"soon\"").unwrap_err().to_string();
    assert!(e.contains("\"soon\" is not a duration"), "{e}");
}

#[test]
fn the_plan_puts_each_host_in_its_first_wave() {
    let s = raw(EXAMPLE).check().unwrap();
    let l = |role: &str| Labels::from([("role".to_string(), role.to_string())]);
    let (prod, staging, db) = (l("prod"), l("staging"), l("db"));
    let fleet = [
        ("vm-prod", &prod),
        ("vm-staging", &staging),
        ("vm-db", &db),
        ("vm-prod2", &prod),
    ];
    let plan = s.plan(fleet).unwrap();
    assert_eq!(plan, [vec!["vm-staging"], vec!["vm-prod", "vm-prod2"]]);
    // A wave that matches none of the selected hosts, and a selector that
    // matches no host at all, are refused before anything starts.
    let e = s.plan([("vm-prod", &prod)]).unwrap_err().to_string();
    assert!(e.starts_with("wave[0].selector: matches none"), "{e}");
    let e = s.plan([("vm-db", &db)]).unwrap_err().to_string();
    assert!(
        e.starts_with("selector: role in (prod,staging) matches no host"),
        "{e}"
    );
}
