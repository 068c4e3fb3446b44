#![no_main]
//! The offline checks (`picketctl rollout check`, `alerts check`,
//! `picket-control check`, `picket-agent check`): any text, as a file and
//! as a field path to locate in it, gives findings, never a panic; every
//! finding names the file and, when it has a line, a line in the file.
use libfuzzer_sys::fuzz_target;
use picket_config::check::{self, Doc, Level};

fuzz_target!(|data: (&str, &str)| {
    let (text, field) = data;
    let lines = text.lines().count().max(1) + 1;
    let mut all = check::rollout("f.toml", text);
    all.extend(picket_alert::rules::check_file("f.toml", text).1);
    all.extend(picket_config::agent::AgentConfig::check("f.toml", text).1);
    all.extend(
        picket_config::control::ControlConfig::check("f.toml", text, std::path::Path::new("f.toml")).1,
    );
    let doc = Doc::new("f.toml", text);
    all.push(doc.problem_text(field, Level::Warning));
    all.push(doc.problem(field, "m", Level::Error));
    for f in &all {
        assert_eq!(f.file, "f.toml");
        if let Some(l) = f.line {
            assert!(l >= 1 && l <= lines, "line {l} of {lines}");
            assert!(f.column.is_some_and(|c| c >= 1));
        }
        assert!(f.to_string().starts_with("f.toml"));
    }
});
