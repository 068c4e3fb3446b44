//! Authentication at the edge: the verified client certificate becomes a
//! [`Caller`], attached to the request for handlers to read. Handlers never
//! look at certificates or message fields to decide who is calling.

use picket_proto::model::Role;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::audit::Audit;
use crate::store::Store;

/// Who is calling, as proven by the certificate the TLS layer verified
/// against the Picket CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Agent(String),
    User { name: String, role: Role },
}

impl Caller {
    /// How the caller appears in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Caller::Agent(n) => format!("agent:{n}"),
            Caller::User { name, .. } => format!("user:{name}"),
        }
    }
}

/// The interceptor on every service but enrollment.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        Authenticator { store }
    }

    fn identify<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate issued by the Picket CA is required")
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        let Subject {
            unit,
            name,
            not_before_ms,
        } = subject_of(leaf.as_ref())
            .ok_or_else(|| Status::unauthenticated("client certificate has no Picket subject"))?;
        match unit.as_str() {
            "agent" => {
                let rec = self
                    .store
                    .agent(&name)
                    .map_err(super::status::internal)?
                    .ok_or_else(|| {
                        Status::unauthenticated(format!("agent {name} is not enrolled here"))
                    })?;
                if rec.revoked_ms.is_some() {
                    return Err(Status::unauthenticated(format!("agent {name} is revoked")));
                }
                // A certificate from before this enrollment belongs to an
                // earlier host of the same name, forgotten since.
                if not_before_ms < rec.enrolled_ms - ENROLLED_SLACK_MS {
                    return Err(Status::unauthenticated(format!(
                        "this certificate for agent {name} predates its enrollment here"
                    )));
                }
                Ok(Caller::Agent(name))
            }
            "user" => {
                let user = self
                    .store
                    .user(&name)
                    .map_err(super::status::internal)?
                    .ok_or_else(|| Status::unauthenticated(format!("unknown user {name}")))?;
                if user.revoked_ms.is_some() {
                    return Err(Status::unauthenticated(format!("user {name} is revoked")));
                }
                Ok(Caller::User {
                    name,
                    role: user.role,
                })
            }
            _ => Err(Status::unauthenticated(
                "this certificate is not an agent or user certificate",
            )),
        }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.identify(&req)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// How long before its enrollment an agent's first certificate may start:
/// certificates are backdated ([`crate::pki::BACKDATE`]) and their times
/// are whole seconds. A certificate of a forgotten host of the same name,
/// issued more than a second before the new enrollment, starts earlier.
const ENROLLED_SLACK_MS: i64 = crate::pki::BACKDATE.as_millis() as i64 + 1000;

/// What the interceptor reads of a client certificate.
pub struct Subject {
    /// The organisational unit: `agent` or `user`.
    pub unit: String,
    /// The common name.
    pub name: String,
    pub not_before_ms: i64,
}

/// The subject and start of validity of a certificate.
pub fn subject_of(der: &[u8]) -> Option<Subject> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let not_before_ms = cert.validity().not_before.timestamp().saturating_mul(1000);
    let subject = cert.subject();
    let unit = subject
        .iter_organizational_unit()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(Subject {
        unit,
        name: cn,
        not_before_ms,
    })
}

/// The caller the interceptor attached.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The agent calling, or PERMISSION_DENIED for anyone else.
pub fn require_agent<T>(req: &Request<T>) -> Result<String, Status> {
    match caller(req)? {
        Caller::Agent(name) => Ok(name),
        Caller::User { .. } => Err(Status::permission_denied(
            "the agent service takes agent certificates only",
        )),
    }
}

/// The user calling if their role is at least `min`; otherwise
/// PERMISSION_DENIED, recorded in the audit log.
pub fn require<T>(
    req: &Request<T>,
    audit: &Audit,
    min: Role,
    action: &str,
    target: &str,
) -> Result<Caller, Status> {
    let c = caller(req)?;
    let allowed = matches!(&c, Caller::User { role, .. } if *role >= min);
    if allowed {
        return Ok(c);
    }
    audit.record(&c.actor(), action, target, "denied");
    let who = match &c {
        Caller::Agent(n) => format!("agent {n} may not call the admin service"),
        Caller::User { name, role } => format!("user {name} has role {role}; {action} needs {min}"),
    };
    Err(Status::permission_denied(who))
}
