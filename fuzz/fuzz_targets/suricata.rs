#![no_main]
//! The Suricata eve.json parser never panics, whatever the line.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    let _ = picket_sources::suricata::parse(line);
});
