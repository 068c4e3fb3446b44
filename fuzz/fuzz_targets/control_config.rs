#![no_main]
//! `control.toml`: any text gives a config or a clear error, never a
//! panic, and an error names the file.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = std::path::Path::new("/etc/picket/control.toml");
    if let Err(e) = picket_config::control::ControlConfig::parse(text, path) {
        assert!(e.to_string().contains("/etc/picket/control.toml"), "{e}");
    }
});
