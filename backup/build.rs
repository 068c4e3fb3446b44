//! Sets PICKET_VERSION (release and commit): build-support/version.rs.
include!("../build-support/version.rs");
