//! The tonic edge: one TLS port serving enrollment, the agent and admin
//! services, `grpc.health.v1` and server reflection. No business logic here
//! beyond turning requests into store and PKI calls.

mod admin;
mod agent;
pub mod auth;
mod convert;
mod enroll;
mod status;

use std::sync::Arc;

use picket_proto::v1::{
    admin_service_server::AdminServiceServer, agent_service_server::AgentServiceServer,
    enrollment_server::EnrollmentServer,
};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read TLS material: {0}")]
    Files(#[from] picket_tls::files::FileError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// An internal error as a status (details logged, not sent).
pub fn status_internal(e: impl std::fmt::Display) -> tonic::Status {
    status::internal(e)
}

/// Serves the gRPC API on `listener` until `state.shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<State>) -> Result<(), ServeError> {
    let dir = &state.cfg.data_dir;
    let chain = picket_tls::files::read(&dir.join("server.crt"))?;
    let key = picket_tls::files::read(&dir.join("server.key"))?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(state.ca.cert_pem()))
        // Enrollment comes without a certificate; every other service
        // refuses such callers in the interceptor.
        .client_auth_optional(true);

    let auth = auth::Authenticator::new(state.store.clone());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<AdminServiceServer<admin::AdminSvc>>()
        .await;
    health
        .set_serving::<AgentServiceServer<agent::AgentSvc>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(picket_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let shutdown = state.shutdown.clone();
    Server::builder()
        .tls_config(tls)?
        .add_service(EnrollmentServer::new(enroll::EnrollService {
            state: state.clone(),
        }))
        .add_service(AgentServiceServer::with_interceptor(
            agent::AgentSvc {
                state: state.clone(),
            },
            auth.clone(),
        ))
        .add_service(AdminServiceServer::with_interceptor(
            admin::AdminSvc {
                state: state.clone(),
            },
            auth.clone(),
        ))
        .add_service(InterceptedService::new(health_svc, auth.clone()))
        .add_service(InterceptedService::new(reflection, auth))
        .serve_with_incoming_shutdown(
            // No Nagle: a small frame (an Ack, a flow-control window
            // update) otherwise waits out the peer's delayed ACK, 40 ms,
            // and the agent's stream stalls behind it.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled(),
        )
        .await?;
    Ok(())
}
