//! Picket's wire types, and the one place they meet the domain types.
//!
//! The gRPC API (package `picket.v1`) is defined once, in
//! `proto/picket/v1/picket.proto`, and compiled at build time with protox, so
//! no system `protoc` is needed. Generated code stays private in `generated`
//! and is re-exported as [`v1`]. The domain types that engines and stores use
//! are `picket_model`'s; [`convert`] is the one place where the two meet.
//!
//! This crate does no I/O.

mod generated {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("picket.v1");
}

pub mod capability;
pub mod convert;
pub mod frame;
pub mod scan;

/// The `picket.v1` messages, clients and servers.
pub mod v1 {
    pub use crate::generated::*;
}

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/picket_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_the_services() {
        let fds = prost_types_like::decode(super::FILE_DESCRIPTOR_SET);
        assert!(fds.contains("picket.v1"));
        assert!(fds.contains("AgentService"));
        assert!(fds.contains("AdminService"));
        assert!(fds.contains("Enrollment"));
    }

    /// Decodes just enough of a `FileDescriptorSet` to check it is well formed,
    /// without pulling in `prost-types` for one test.
    mod prost_types_like {
        use prost::Message;

        #[derive(Clone, PartialEq, Message)]
        struct Fds {
            #[prost(bytes = "vec", repeated, tag = "1")]
            file: Vec<Vec<u8>>,
        }

        pub fn decode(bytes: &[u8]) -> String {
            let fds = Fds::decode(bytes).expect("descriptor set decodes");
            assert!(!fds.file.is_empty());
            fds.file
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect()
        }
    }

    /// The field numbers `frame` and `scan` write and read as bytes are
    /// the ones the `.proto` files give: a renumbering there must fail
    /// here, not corrupt buffers and blocks already on disk.
    #[test]
    fn byte_level_field_numbers_match_the_descriptor_set() {
        use crate::frame::field::{agent_message, batch, entry, event, log, record};
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let message = |name: &str| {
            fds.file
                .iter()
                .filter(|f| f.package() == "picket.v1")
                .flat_map(|f| f.message_type.iter())
                .find(|m| m.name() == name)
                .unwrap_or_else(|| panic!("no message {name}"))
                .clone()
        };
        let number = |m: &prost_types::DescriptorProto, field: &str| {
            m.field
                .iter()
                .find(|f| f.name() == field)
                .unwrap_or_else(|| panic!("no field {}.{field}", m.name()))
                .number() as u32
        };
        let checks: &[(&str, &[(&str, u32)])] = &[
            ("RecordBatch", &[("records", batch::RECORDS)]),
            ("AgentMessage", &[("records", agent_message::RECORDS)]),
            (
                "Record",
                &[
                    ("seq", record::SEQ),
                    ("metrics", record::METRICS),
                    ("event", record::EVENT),
                    ("log", record::LOG),
                ],
            ),
            (
                "Event",
                &[
                    ("source", event::SOURCE),
                    ("path", event::PATH),
                    ("kind", event::KIND),
                    ("severity", event::SEVERITY),
                    ("message", event::MESSAGE),
                    ("fields", event::FIELDS),
                    ("time_unix_ms", event::TIME),
                ],
            ),
            (
                "LogLine",
                &[
                    ("source", log::SOURCE),
                    ("path", log::PATH),
                    ("line", log::LINE),
                    ("read_unix_ms", log::READ),
                    ("truncated", log::TRUNCATED),
                    ("invalid_utf8", log::INVALID_UTF8),
                ],
            ),
        ];
        for (name, fields) in checks {
            let m = message(name);
            if matches!(*name, "Event" | "LogLine") {
                // Written and checked whole from bytes: a new field must
                // be added to frame and scan too.
                assert_eq!(
                    m.field.len(),
                    fields.len(),
                    "{name} has fields frame/scan do not know"
                );
            }
            for (field, n) in *fields {
                assert_eq!(number(&m, field), *n, "{name}.{field}");
            }
        }
        // Map entries: key 1, value 2, as protobuf defines them.
        let ev = message("Event");
        let e = ev
            .nested_type
            .iter()
            .find(|n| n.name() == "FieldsEntry")
            .expect("Event.fields is a map");
        assert_eq!(
            (number(e, "key"), number(e, "value")),
            (entry::KEY, entry::VALUE)
        );
    }

    #[test]
    fn envelope_round_trips() {
        use crate::v1::{AgentMessage, Heartbeat, agent_message::Body};
        let m = AgentMessage {
            body: Some(Body::Heartbeat(Heartbeat { sent_unix_ms: 42 })),
        };
        let back = AgentMessage::decode(m.encode_to_vec().as_slice()).unwrap();
        assert_eq!(m, back);
    }
}
