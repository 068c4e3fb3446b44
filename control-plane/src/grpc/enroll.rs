//! The enrollment service: a bootstrap token and a CSR in, a short-lived
//! agent certificate out. The one RPC that needs no client certificate.
//!
//! Order matters, since anyone who reaches the port may call it:
//! 1. attempts are rate-limited per source address (token guessing);
//! 2. the token is checked first, and every bad token gets the same
//!    answer, so that without one nothing is learnt (not even which host
//!    names exist);
//! 3. then the request (name, labels, CSR), so that a malformed one
//!    spends nothing;
//! 4. then one use of the token is taken and the agent recorded, in one
//!    atomic step.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picket_model::{Labels, validate_label, validate_name};
use picket_proto::v1::{self, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use super::state::State;
use super::status::{bad_input, store_error};
use crate::audit::Audit;
use crate::counters::Counters;
use picket_clock::{now_ms, to_ms};
use picket_pki::{Ca, SubjectKind, token};
use picket_store::{AgentRecord, EnrollRefusal, Store};

/// The one answer to a token that is unknown, expired or used up.
const REFUSED: &str = "the token is not valid (unknown, expired or used up)";

/// What enrollment touches, and nothing else: the store (tokens, agents),
/// the CA, the audit log and the rate limit's counter.
pub struct EnrollService {
    store: Store,
    ca: Arc<Ca>,
    audit: Audit,
    counters: Arc<Counters>,
    agent_cert_ttl: Duration,
    attempts: Attempts,
}

impl EnrollService {
    pub fn new(state: &State) -> Self {
        EnrollService {
            store: state.store.clone(),
            ca: state.ca.clone(),
            audit: state.audit.clone(),
            counters: state.counters.clone(),
            agent_cert_ttl: state.cfg.agent_cert_ttl,
            attempts: Attempts::new(state.cfg.limits.enroll_per_minute),
        }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let s = self;
        let peer = req.remote_addr();
        if let Some(addr) = peer
            && !self.attempts.allow(addr.ip(), Instant::now())
        {
            let n = s
                .counters
                .enroll_rate_limited
                .fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(peer = %addr, refused = n + 1, "enrollment attempts rate-limited");
            }
            return Err(Status::resource_exhausted(
                "too many enrollment attempts from this address; try again in a minute",
            ));
        }
        let r = req.into_inner();
        // Checked before anything is written: a request without a token
        // leaves nothing of its own text behind (not even in the audit).
        validate_name(&r.name).map_err(bad_input)?;
        for (k, v) in &r.labels {
            validate_label(k, v).map_err(bad_input)?;
        }
        if r.csr_pem.is_empty() {
            return Err(Status::invalid_argument("csr_pem is empty"));
        }
        let who = peer.map_or_else(|| "unknown address".to_string(), |a| a.ip().to_string());
        let hash = token::hash(&r.token);
        let now = now_ms();
        let checked = match s.store.check_token(&hash, now).map_err(store_error)? {
            Ok(t) => t,
            Err(refusal) => {
                refused(s, &hash, &EnrollRefusal::Token(refusal), &r.name, &who);
                return Err(Status::unauthenticated(REFUSED));
            }
        };
        // Issued before the token is spent; it leaves only if the
        // enrollment is recorded.
        let issued =
            s.ca.issue(&r.csr_pem, &r.name, SubjectKind::Agent, s.agent_cert_ttl)
                .map_err(bad_input)?;
        // The token's labels are the admin's word and win over requested
        // ones (a token's labels never change once it is made).
        let mut labels: Labels = r.labels.into_iter().collect();
        labels.extend(checked.labels);
        let rec = AgentRecord {
            name: r.name.clone(),
            pinned_labels: labels.clone(),
            reported_labels: Labels::new(),
            enrolled_ms: now,
            cert_serial: issued.serial_hex,
            prev_cert_serial: None,
            cert_not_after_ms: to_ms(issued.not_after),
            revoked_ms: None,
            inventory: None,
            last_seen_ms: 0,
        };
        let (h, r2) = (hash.clone(), rec.clone());
        let enrolled = s
            .store
            .blocking(move |st| {
                let e = st.enroll_agent(&h, now, &r2)?;
                if e.is_ok() {
                    st.flush()?;
                }
                Ok(e)
            })
            .await
            .map_err(store_error)?;
        let tok = match enrolled {
            Ok(t) => t,
            Err(refusal) => {
                refused(s, &hash, &refusal, &r.name, &who);
                return Err(match refusal {
                    EnrollRefusal::NameTaken => Status::already_exists(format!(
                        "an agent named {} is already enrolled; choose another --name",
                        r.name
                    )),
                    EnrollRefusal::Token(_) => Status::unauthenticated(REFUSED),
                });
            }
        };
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

/// Audits a refused enrollment with its real reason (the caller is told
/// only [`REFUSED`]); the token itself is never written anywhere.
fn refused(s: &EnrollService, hash: &str, why: &EnrollRefusal, name: &str, who: &str) {
    let id = match why {
        EnrollRefusal::Token(picket_store::TokenRefusal::Unknown) => "unknown".to_string(),
        _ => token::id_of_hash(hash),
    };
    let why = match why {
        EnrollRefusal::Token(t) => t.to_string(),
        EnrollRefusal::NameTaken => "name already enrolled".to_string(),
    };
    s.audit.record(
        &format!("token:{id}"),
        "agent.enroll",
        name,
        &format!("refused: {why} (from {who})"),
    );
}

/// Enrollment attempts per source address: a token bucket of
/// `per_minute`, refilled continuously. Memory is bounded: full buckets
/// are forgotten when the table grows large.
struct Attempts {
    per_minute: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// More addresses than this and full buckets are dropped.
const MAX_TRACKED: usize = 4096;

/// Whose bucket an address draws from: an IPv4 address, or an IPv6
/// address's /64 (one host usually holds a whole /64, and would otherwise
/// get a fresh burst from each of its addresses).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Attempts {
    fn new(per_minute: u32) -> Self {
        Attempts {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let cap = self.per_minute;
        let refill = |(tokens, at): (f64, Instant)| -> f64 {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            (tokens + secs * cap / 60.0).min(cap)
        };
        let ip = source(ip);
        if b.len() >= MAX_TRACKED && !b.contains_key(&ip) {
            b.retain(|_, v| refill(*v) < cap);
            // Still full (a flood from thousands of sources): the one
            // heard from longest ago goes, not every bucket at once (a
            // clear would hand each flooding source a new burst).
            if b.len() >= MAX_TRACKED
                && let Some(oldest) = b.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
            {
                b.remove(&oldest);
            }
        }
        let tokens = b.get(&ip).copied().map_or(cap, refill);
        if tokens >= 1.0 {
            b.insert(ip, (tokens - 1.0, now));
            true
        } else {
            b.insert(ip, (tokens, now));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn attempts_are_limited_per_address_and_refill() {
        let a = Attempts::new(3);
        let t0 = Instant::now();
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| a.allow(x, t0)));
        assert!(!a.allow(x, t0), "a fourth attempt in the same minute");
        assert!(a.allow(y, t0), "another address has its own bucket");
        assert!(!a.allow(x, t0 + Duration::from_secs(10)));
        assert!(
            a.allow(x, t0 + Duration::from_secs(21)),
            "one refilled after 20 s"
        );
        assert!(!a.allow(x, t0 + Duration::from_secs(21)));
    }

    #[test]
    fn tracked_addresses_stay_bounded() {
        let a = Attempts::new(10);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 * 2) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            a.allow(ip, t0);
        }
        assert!(a.buckets.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_a_flood_does_not_reset_others() {
        let a = Attempts::new(2);
        let t0 = Instant::now();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_in_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(a.allow(one, t0) && a.allow(other_in_64, t0));
        assert!(
            !a.allow("2001:db8:1:2:abcd::1".parse().unwrap(), t0),
            "same /64"
        );
        assert!(
            a.allow("2001:db8:1:3::1".parse().unwrap(), t0),
            "another /64"
        );
        // A flood from many sources evicts the oldest buckets one at a
        // time, never all: the newest limited source stays limited.
        let late: IpAddr = "2001:db8:9::1".parse().unwrap();
        for i in 0..(MAX_TRACKED as u32 - 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            a.allow(ip, t0 + Duration::from_millis(1));
        }
        let t1 = t0 + Duration::from_millis(2);
        assert!(a.allow(late, t1) && a.allow(late, t1) && !a.allow(late, t1));
        for i in 0..100u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            a.allow(ip, t1 + Duration::from_millis(1));
        }
        assert!(a.buckets.lock().unwrap().len() <= MAX_TRACKED);
        assert!(
            !a.allow(late, t1 + Duration::from_millis(2)),
            "still limited"
        );
    }
}
