#![no_main]
//! The alert file: any text gives checked rules or a list of problems,
//! never a panic; a file that checks builds an engine that takes an event.
use libfuzzer_sys::fuzz_target;
use picket_alert::engine::{Engine, Input};
use picket_alert::rules;

fuzz_target!(|text: &str| {
    match rules::parse(text) {
        Ok(r) => {
            let mut e = Engine::new(r);
            let fields = [("ip".to_string(), "192.0.2.1".to_string())].into();
            let _ = e.handle(
                Input::Event {
                    host: "h".into(),
                    host_labels: Default::default(),
                    source: "fail2ban".into(),
                    kind: "ban".into(),
                    severity: picket_model::Severity::High,
                    fields,
                },
                1_000,
            );
            let _ = e.handle(Input::Tick, 1_000_000);
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
});
