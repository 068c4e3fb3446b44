//! Mapping internal errors to gRPC statuses: details are logged, not sent.

use tonic::Status;

pub fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "internal error");
    Status::internal("internal error (see the control plane's log)")
}

pub fn bad_input(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A store error as the caller should see it: UNAVAILABLE with the reason
/// when the disk refuses writes (full, failing, being reopened: it passes,
/// retry later), else an internal error.
pub fn store_error(e: picket_store::StoreError) -> Status {
    use picket_store::StoreError as E;
    match &e {
        E::Full(_) | E::Unwritable(_) | E::Reopening | E::Write(_) | E::Engine(_) => {
            tracing::debug!(error = %e, "store refused a write");
            Status::unavailable(format!(
                "the control plane cannot write to its store now ({e}); retry once it can"
            ))
        }
        E::Shared(_) | E::Database(_) => {
            tracing::debug!(error = %e, "cluster state or records refused a call");
            let what = match e {
                E::Database(_) => "its records database",
                _ => "the cluster's state",
            };
            Status::unavailable(format!(
                "the control plane cannot reach {what} now ({e}); retry once it can"
            ))
        }
        _ => internal(e),
    }
}
