//! Where blocking work runs: [`picket_store::blocking`] states the rule.

pub use picket_store::blocking::in_place;
