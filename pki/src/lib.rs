//! The Picket CA: creating it (`init`), issuing agent, user and server
//! certificates from CSRs, and bootstrap tokens. No gRPC here.

mod ca;
pub mod server;
pub mod token;

pub use ca::{Ca, InitReport, Issued, PkiError, SubjectKind, init, join};
