//! Picket's wire types and the domain types shared by every crate.
//!
//! The gRPC API (package `picket.v1`) is defined once, in
//! `proto/picket/v1/picket.proto`, and compiled at build time with protox, so
//! no system `protoc` is needed. Generated code stays private in `generated`
//! and is re-exported as [`v1`]. [`model`] holds the domain types that engines
//! and stores use; [`convert`] is the one place where the two meet.
//!
//! This crate does no I/O.

mod generated {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("picket.v1");
}

pub mod convert;
pub mod frame;
pub mod model;
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
