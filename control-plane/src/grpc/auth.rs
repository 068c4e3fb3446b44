//! Authentication at the edge: the verified client certificate becomes a
//! [`Caller`], attached to the request for handlers to read. Handlers never
//! look at certificates or message fields to decide who is calling.

use picket_model::Role;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::audit::Audit;
use picket_store::Store;

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

    fn identify<T>(&self, req: &Request<T>) -> Result<(Caller, Option<AgentSerial>), Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate issued by the Picket CA is required")
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        let Subject {
            unit,
            name,
            serial_hex,
        } = subject_of(leaf.as_ref())
            .ok_or_else(|| Status::unauthenticated("client certificate has no Picket subject"))?;
        match unit.as_str() {
            "agent" => {
                let rec = crate::blocking::in_place(|| self.store.agent(&name))
                    .map_err(super::status::internal)?
                    .ok_or_else(|| {
                        Status::unauthenticated(format!("agent {name} is not enrolled here"))
                    })?;
                if rec.revoked_ms.is_some() {
                    return Err(Status::unauthenticated(format!("agent {name} is revoked")));
                }
                // Only the agent's newest certificate, or the one it
                // renewed with (its renewal may not have reached its disk):
                // a forgotten host of the same name holds neither.
                let known = std::iter::once(&rec.cert_serial).chain(&rec.prev_cert_serial);
                if !known.into_iter().any(|s| same_serial(s, &serial_hex)) {
                    return Err(Status::unauthenticated(format!(
                        "this certificate is not agent {name}'s: it predates its enrollment here"
                    )));
                }
                Ok((Caller::Agent(name), Some(AgentSerial(serial_hex))))
            }
            "user" => {
                let user = crate::blocking::in_place(|| self.store.user(&name))
                    .map_err(super::status::internal)?
                    .ok_or_else(|| Status::unauthenticated(format!("unknown user {name}")))?;
                if user.revoked_ms.is_some() {
                    return Err(Status::unauthenticated(format!("user {name} is revoked")));
                }
                Ok((
                    Caller::User {
                        name,
                        role: user.role,
                    },
                    None,
                ))
            }
            _ => Err(Status::unauthenticated(
                "this certificate is not an agent or user certificate",
            )),
        }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let (caller, serial) = self.identify(&req)?;
        req.extensions_mut().insert(caller);
        if let Some(s) = serial {
            req.extensions_mut().insert(s);
        }
        Ok(req)
    }
}

/// The serial (hex) of the certificate an agent called with, for `Renew`.
#[derive(Debug, Clone)]
pub struct AgentSerial(pub String);

/// Two serials in hex, the same number: DER drops a leading zero byte
/// that the issued serial's hex keeps.
fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches("00")
        .eq_ignore_ascii_case(b.trim_start_matches("00"))
}

/// What the interceptor reads of a client certificate.
pub struct Subject {
    /// The organisational unit: `agent` or `user`.
    pub unit: String,
    /// The common name.
    pub name: String,
    /// The serial number, hex.
    pub serial_hex: String,
}

/// The subject and serial of a certificate.
pub fn subject_of(der: &[u8]) -> Option<Subject> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let serial_hex = hex::encode(cert.raw_serial());
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
        serial_hex,
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

#[cfg(test)]
mod tests {
    use super::same_serial;

    #[test]
    fn serials_compare_as_numbers() {
        assert!(same_serial("00ab12", "ab12"));
        assert!(same_serial("AB12", "ab12"));
        assert!(!same_serial("0ab1", "ab10"));
        assert!(!same_serial("ab12", "ab13"));
    }
}
