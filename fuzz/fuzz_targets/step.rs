#![no_main]
//! What an agent does with a dispatched step before it runs anything:
//! decode the message, check the step on its own. Never panics; a step
//! that checks, written out in full again (as the control plane sends
//! it), checks to the same step.
use libfuzzer_sys::fuzz_target;
use picket_model::rollout::RawStep;
use picket_proto::v1;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = v1::ControlMessage::decode(data) else {
        return;
    };
    let Some(v1::control_message::Body::Dispatch(d)) = msg.body else {
        return;
    };
    let Some(step) = d.step else { return };
    if let Ok(checked) = RawStep::from(step).check_one() {
        let again = RawStep::from(v1::Step::from(&checked))
            .check_one()
            .expect("a checked step written out checks again");
        assert_eq!(again, checked);
    }
});
