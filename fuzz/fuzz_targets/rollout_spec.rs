#![no_main]
//! Rollout files (`picketctl rollout create -f`): any text is refused by
//! the TOML reader or checked whole, never a panic; a spec that checks
//! plans over a small fleet without one either.
use libfuzzer_sys::fuzz_target;
use picket_model::Labels;
use picket_model::rollout::RawSpec;

fuzz_target!(|text: &str| {
    let Ok(raw) = toml::from_str::<RawSpec>(text) else {
        return;
    };
    match raw.check() {
        Ok(spec) => {
            let prod = Labels::from([("role".to_string(), "prod".to_string())]);
            let none = Labels::new();
            let _ = spec.plan([("vm-prod", &prod), ("vm-bare", &none)]);
        }
        Err(e) => assert!(!e.0.is_empty(), "an error names at least one problem"),
    }
});
