#![no_main]
//! The fail2ban parser never panics, whatever the line and read time.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (&str, i64)| {
    let (line, read_ms) = data;
    let _ = picket_sources::fail2ban::parse(line, read_ms);
});
