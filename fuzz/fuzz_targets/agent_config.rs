#![no_main]
//! `agent.toml`: any text gives a config or a clear error, never a panic,
//! and an error names the file.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = std::path::Path::new("/etc/picket/agent.toml");
    if let Err(e) = picket_config::agent::AgentConfig::parse(text, path) {
        assert!(e.to_string().contains("/etc/picket/agent.toml"), "{e}");
    }
});
