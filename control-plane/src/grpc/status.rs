//! Mapping internal errors to gRPC statuses: details are logged, not sent.

use tonic::Status;

pub fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "internal error");
    Status::internal("internal error (see the control plane's log)")
}

pub fn bad_input(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}
