//! The tonic edge: one TLS port serving enrollment, the agent and admin
//! services, `grpc.health.v1` and server reflection. No business logic here
//! beyond turning requests into store and PKI calls.

pub mod accept;
mod admin;
mod agent;
mod agents;
mod alerts;
pub mod auth;
pub mod cut;
mod enroll;
mod grants;
mod rollouts;
mod scope;
pub mod state;
mod status;

use std::sync::Arc;

use picket_proto::v1::{
    admin_service_server::AdminServiceServer, agent_service_server::AgentServiceServer,
    enrollment_server::EnrollmentServer,
};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use state::State;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read TLS material: {0}")]
    Files(#[from] picket_tls::files::FileError),
    #[error("TLS: {0}")]
    Tls(#[from] picket_tls::server::ServerError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The most a message may take once decoded, per service: an agent's
/// record batch is at most about 2 MiB (`uplink`), a CSR a few hundred
/// bytes.
const MAX_AGENT_MESSAGE: usize = 16 * 1024 * 1024;
const MAX_ADMIN_MESSAGE: usize = 4 * 1024 * 1024;
const MAX_ENROLL_MESSAGE: usize = 64 * 1024;

/// Serves the gRPC API on `listener` until `state.shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<State>) -> Result<(), ServeError> {
    let dir = &state.cfg.data_dir;
    let ca = picket_tls::files::parse_certs(state.ca.cert_pem(), &dir.join("ca.crt"))?;
    let tls = Arc::new(picket_tls::server::config(&ca, state.identity.clone())?);

    let auth = auth::Authenticator::new(state.store.clone());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<AdminServiceServer<admin::AdminSvc>>()
        .await;
    health
        .set_serving::<AgentServiceServer<agent::AgentSvc>>()
        .await;
    // Both reflection protocols: many clients (grpcurl before 1.9,
    // grpcio-reflection, Postman) still speak v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(picket_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let limits = state.cfg.limits.clone();
    let shutdown = state.shutdown.clone();
    let incoming = accept::incoming(
        listener,
        tls,
        limits.clone(),
        state.gate.clone(),
        shutdown.clone(),
    );
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .timeout(limits.request_timeout)
        .add_service(
            EnrollmentServer::new(enroll::EnrollService::new(&state))
                .max_decoding_message_size(MAX_ENROLL_MESSAGE),
        )
        .add_service(InterceptedService::new(
            AgentServiceServer::new(agent::AgentSvc {
                state: state.clone(),
                renewed: Default::default(),
            })
            .max_decoding_message_size(MAX_AGENT_MESSAGE),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            AdminServiceServer::new(admin::AdminSvc {
                state: state.clone(),
            })
            .max_decoding_message_size(MAX_ADMIN_MESSAGE),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(health_svc, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await?;
    Ok(())
}
