//! The enrollment service: a bootstrap token and a CSR in, a short-lived
//! agent certificate out. The one RPC that needs no client certificate.

use std::sync::Arc;

use picket_proto::model::{Labels, validate_label, validate_name};
use picket_proto::v1::{self, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use super::status::{bad_input, internal};
use crate::clock::{now_ms, to_ms};
use crate::pki::{SubjectKind, token};
use crate::state::State;
use crate::store::{AgentRecord, TokenRefusal};

pub struct EnrollService {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let r = req.into_inner();
        let s = &self.state;
        validate_name(&r.name).map_err(bad_input)?;
        for (k, v) in &r.labels {
            validate_label(k, v).map_err(bad_input)?;
        }
        if r.csr_pem.is_empty() {
            return Err(Status::invalid_argument("csr_pem is empty"));
        }
        if s.store.agent(&r.name).map_err(internal)?.is_some() {
            return Err(Status::already_exists(format!(
                "an agent named {} is already enrolled; choose another --name",
                r.name
            )));
        }
        let hash = token::hash(&r.token);
        let tok = match s.store.consume_token(&hash, now_ms()).map_err(internal)? {
            Ok(t) => t,
            Err(refusal) => {
                let id = match refusal {
                    TokenRefusal::Unknown => "unknown".to_string(),
                    _ => token::id_of_hash(&hash),
                };
                s.audit.record(
                    &format!("token:{id}"),
                    "agent.enroll",
                    &r.name,
                    &format!("refused: {refusal}"),
                );
                return Err(Status::unauthenticated(format!(
                    "enrollment refused: {refusal}"
                )));
            }
        };
        let issued =
            s.ca.issue(
                &r.csr_pem,
                &r.name,
                SubjectKind::Agent,
                s.cfg.agent_cert_ttl,
            )
            .map_err(bad_input)?;
        // The token's labels are the admin's word and win over requested ones.
        let mut labels: Labels = r.labels.into_iter().collect();
        labels.extend(tok.labels.clone());
        let rec = AgentRecord {
            name: r.name.clone(),
            pinned_labels: labels.clone(),
            reported_labels: Labels::new(),
            enrolled_ms: now_ms(),
            cert_serial: issued.serial_hex,
            cert_not_after_ms: to_ms(issued.not_after),
            revoked_ms: None,
            inventory: None,
            last_seen_ms: 0,
        };
        if !s.store.insert_agent(&rec).map_err(internal)? {
            return Err(Status::already_exists(format!(
                "an agent named {} is already enrolled",
                r.name
            )));
        }
        s.store.flush().map_err(internal)?;
        s.audit
            .record(&format!("token:{}", tok.id), "agent.enroll", &r.name, "ok");
        Ok(Response::new(v1::EnrollResponse {
            name: r.name,
            labels: labels.into_iter().collect(),
            cert_pem: issued.cert_pem,
            ca_pem: s.ca.cert_pem().to_string(),
            not_after_unix_ms: rec.cert_not_after_ms,
        }))
    }
}
