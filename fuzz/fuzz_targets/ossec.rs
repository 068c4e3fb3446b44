#![no_main]
//! The OSSEC/Wazuh parsers (alerts.json lines and alerts.log blocks) never
//! panic, whatever the lines.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let _ = picket_sources::ossec::parse_json(data);
    let mut blocks = picket_sources::ossec::Blocks::default();
    let mut out = Vec::new();
    for line in data.lines() {
        blocks.feed(line, &mut out);
    }
    let _ = blocks.flush();
});
