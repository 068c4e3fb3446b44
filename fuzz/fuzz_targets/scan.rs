#![no_main]
//! The control plane's check of received records (`picket_proto::scan`)
//! never panics, and what it passes decodes with the generated types: it
//! stores records undecoded on the strength of that check.
use libfuzzer_sys::fuzz_target;
use picket_proto::scan::{self, PayloadView};
use picket_proto::v1;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = scan::record(data) {
        let payload_ok = match r.payload {
            PayloadView::Event(p) => scan::event_time(p).is_ok(),
            PayloadView::Log(p) => scan::log_time(p).is_ok(),
            // Ingest decodes metrics with prost itself.
            PayloadView::Metrics(p) => v1::MetricSample::decode(p).is_ok(),
            PayloadView::None => true,
        };
        if payload_ok {
            let decoded = v1::Record::decode(data).expect("a record scan passed decodes");
            assert_eq!(decoded.seq, r.seq);
        }
    }
    if scan::event_time(data).is_ok() {
        v1::Event::decode(data).expect("an event scan passed decodes");
    }
    if scan::log_time(data).is_ok() {
        v1::LogLine::decode(data).expect("a line scan passed decodes");
    }
});
