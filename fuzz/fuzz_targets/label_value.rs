#![no_main]
//! Label values (`picket_model::validate_label`, `exposition_value`): any
//! `key=value` text is accepted or refused without a panic, and a value's
//! exposition form never ends its quote or its line, and reads back, by the
//! Prometheus text format's rules, as the value itself: no host's label can
//! break a scrape (issue #20).
use libfuzzer_sys::fuzz_target;

/// The text format's reading of a quoted label value; `None` when it would
/// end the quote early or hold a bare newline.
fn read_back(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                _ => return None,
            },
            '"' | '\n' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fuzz_target!(|text: &str| {
    if let Ok((_, v)) = picket_model::parse_label(text) {
        let shown = picket_model::exposition_value(&v);
        assert_eq!(read_back(&shown).as_deref(), Some(v.as_str()), "{shown}");
    }
    // Any value at all, valid as a label or not (metric point labels come
    // from hosts too).
    let shown = picket_model::exposition_value(text);
    assert_eq!(read_back(&shown).as_deref(), Some(text), "{shown}");
});
