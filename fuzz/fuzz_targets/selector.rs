#![no_main]
//! Label selectors (`picket_model::Selector`): any text parses or
//! gives an error inside the input, and what parses prints back to a form
//! that parses to the same selector.
use libfuzzer_sys::fuzz_target;
use picket_model::Selector;

fuzz_target!(|text: &str| {
    match text.parse::<Selector>() {
        Ok(s) => {
            let again: Selector = s.to_string().parse().expect("the canonical form parses");
            assert_eq!(again, s);
        }
        Err(e) => assert!(e.at <= text.chars().count(), "{e}"),
    }
});
