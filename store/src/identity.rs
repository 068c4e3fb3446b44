//! The shared trees' records: agents, tokens, users and the audit log
//! (in cluster mode in etcd, through the store's `state` backend), and
//! the rules they keep: one use of a token per enrollment, one agent per
//! name, a revoked user never back, an append-only audit.

use picket_model::{Labels, Role};
use serde::{Deserialize, Serialize};

use crate::{AGENTS, AUDIT, Store, StoreError, TOKENS, USERS, backend, decode, encode, metrics};

/// What the control plane knows about one enrolled agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentRecord {
    pub name: String,
    /// The host's labels (SPEC §4): fixed at enrollment (the token's, then
    /// the enrolling command's), changed since only by an admin (`agents
    /// label`). The agent cannot change them.
    pub pinned_labels: Labels,
    /// Labels the agent reported on its last connect (its config): shown,
    /// never matched by a selector.
    #[serde(default)]
    pub reported_labels: Labels,
    pub enrolled_ms: i64,
    /// The newest certificate issued to it (hex serial).
    pub cert_serial: String,
    /// The certificate it renewed with, still accepted until it renews
    /// again (a renewal whose answer never reached its disk).
    #[serde(default)]
    pub prev_cert_serial: Option<String>,
    pub cert_not_after_ms: i64,
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    #[serde(default)]
    pub inventory: Option<Inventory>,
    #[serde(default)]
    pub last_seen_ms: i64,
}

impl AgentRecord {
    /// The labels selectors match, alert routes use and `/metrics` exports:
    /// the assigned ones only. What the host reports is not among them, so
    /// a compromised host cannot move itself into another group.
    pub fn labels(&self) -> Labels {
        self.pinned_labels.clone()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Inventory {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub expires_ms: i64,
    pub uses_left: u32,
    pub labels: Labels,
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    /// Set once by `user revoke`: every call is refused from then on, and
    /// the name cannot be added again.
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    /// Host users whose steps this user may run (`user add --run-as`).
    #[serde(default)]
    pub run_as: Vec<String>,
    /// The hosts this user may see and reach (`user add --hosts`, a
    /// selector); none: every host.
    #[serde(default)]
    pub hosts: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
}

/// Why a token could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token already used")]
    UsedUp,
}

/// Why a token cannot be used now, if it cannot.
fn usable(t: TokenRecord, now_ms: i64) -> Result<TokenRecord, TokenRefusal> {
    if t.expires_ms <= now_ms {
        Err(TokenRefusal::Expired)
    } else if t.uses_left == 0 {
        Err(TokenRefusal::UsedUp)
    } else {
        Ok(t)
    }
}

/// What `forget_agent` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forget {
    Forgotten,
    NotFound,
    /// Still allowed in: it must be revoked first.
    NotRevoked,
}

/// Why an enrollment was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollRefusal {
    Token(TokenRefusal),
    NameTaken,
}

impl Store {
    // -- agents

    pub fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.get(AGENTS, name)
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.all(AGENTS)
    }

    pub fn put_agent(&self, a: &AgentRecord) -> Result<(), StoreError> {
        self.state.put(AGENTS, a.name.as_bytes(), &encode(a))
    }

    /// Inserts a new agent unless the name is taken; returns false if taken.
    pub fn insert_agent(&self, a: &AgentRecord) -> Result<bool, StoreError> {
        let mut inserted = false;
        let new = encode(a);
        self.state.update(AGENTS, a.name.as_bytes(), &mut |old| {
            inserted = old.is_none();
            Some(old.map(<[u8]>::to_vec).unwrap_or_else(|| new.clone()))
        })?;
        Ok(inserted)
    }

    /// Applies `f` to an agent's record atomically; returns the new record,
    /// or None if there is no such agent.
    pub fn update_agent(
        &self,
        name: &str,
        f: impl FnMut(&mut AgentRecord),
    ) -> Result<Option<AgentRecord>, StoreError> {
        self.update(AGENTS, name, f)
    }

    /// Deletes a revoked agent's record and its acked sequence number, so
    /// that the name can enroll again (and counts its records from 1).
    /// Its stored records stay. The acked number goes first (it is this
    /// replica's, the record may be the cluster's): a crash between the
    /// two leaves a revoked agent to forget again, never a new agent whose
    /// first records would count as already stored. In cluster mode the
    /// other replicas forget their acked numbers when they see the record
    /// go ([`forgotten`]).
    pub fn forget_agent(&self, name: &str) -> Result<Forget, StoreError> {
        match self.agent(name)? {
            None => return Ok(Forget::NotFound),
            Some(rec) if rec.revoked_ms.is_none() => return Ok(Forget::NotRevoked),
            Some(_) => {}
        }
        self.kv.apply(&[metrics::forget_acked_op(name)])?;
        let mut outcome = Ok(Forget::NotFound);
        let keys: [(&str, &[u8]); 1] = [(AGENTS, name.as_bytes())];
        self.state.transact(&keys, &mut |vals| {
            let Some(bytes) = vals.first().cloned().flatten() else {
                outcome = Ok(Forget::NotFound);
                return None;
            };
            match decode::<AgentRecord>(AGENTS, &bytes) {
                Ok(rec) if rec.revoked_ms.is_none() => {
                    outcome = Ok(Forget::NotRevoked);
                    None
                }
                Ok(_) => {
                    outcome = Ok(Forget::Forgotten);
                    Some(vec![backend::Op {
                        tree: AGENTS,
                        key: name.as_bytes().to_vec(),
                        value: None,
                    }])
                }
                Err(e) => {
                    outcome = Err(e);
                    None
                }
            }
        })?;
        outcome
    }

    // -- tokens

    pub fn put_token(&self, hash: &str, t: &TokenRecord) -> Result<(), StoreError> {
        self.state.put(TOKENS, hash.as_bytes(), &encode(t))
    }

    /// Whether the token with this hash could be used now, without taking
    /// a use of it.
    pub fn check_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
        match self.state.get(TOKENS, hash.as_bytes())? {
            None => Ok(Err(TokenRefusal::Unknown)),
            Some(b) => Ok(usable(decode(TOKENS, &b)?, now_ms)),
        }
    }

    /// Takes one use of the token and records the new agent, in one atomic
    /// step: a token is never spent on an enrollment that is not recorded,
    /// and two agents cannot both take one name or one single-use token.
    pub fn enroll_agent(
        &self,
        hash: &str,
        now_ms: i64,
        agent: &AgentRecord,
    ) -> Result<Result<TokenRecord, EnrollRefusal>, StoreError> {
        let mut outcome = Ok(Err(EnrollRefusal::Token(TokenRefusal::Unknown)));
        let keys: [(&str, &[u8]); 2] = [(TOKENS, hash.as_bytes()), (AGENTS, agent.name.as_bytes())];
        self.state.transact(&keys, &mut |vals| {
            let refused = |why| Ok(Err(EnrollRefusal::Token(why)));
            if vals.get(1).is_some_and(Option::is_some) {
                outcome = Ok(Err(EnrollRefusal::NameTaken));
                return None;
            }
            let Some(bytes) = vals.first().cloned().flatten() else {
                outcome = refused(TokenRefusal::Unknown);
                return None;
            };
            let mut token = match decode::<TokenRecord>(TOKENS, &bytes).map(|t| usable(t, now_ms)) {
                Ok(Ok(t)) => t,
                Ok(Err(why)) => {
                    outcome = refused(why);
                    return None;
                }
                Err(e) => {
                    outcome = Err(e);
                    return None;
                }
            };
            token.uses_left -= 1;
            let ops = vec![
                backend::Op {
                    tree: TOKENS,
                    key: hash.as_bytes().to_vec(),
                    value: Some(encode(&token)),
                },
                backend::Op {
                    tree: AGENTS,
                    key: agent.name.as_bytes().to_vec(),
                    value: Some(encode(agent)),
                },
            ];
            outcome = Ok(Ok(token));
            Some(ops)
        })?;
        outcome
    }

    // -- users

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.get(USERS, name)
    }

    pub fn put_user(&self, u: &UserRecord) -> Result<(), StoreError> {
        self.state.put(USERS, u.name.as_bytes(), &encode(u))
    }

    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.all(USERS)
    }

    /// Adds a user or changes an existing one's role (a new certificate);
    /// a revoked name is never let back in: returns the revoked record.
    pub fn add_user(&self, u: &UserRecord) -> Result<Result<(), UserRecord>, StoreError> {
        let mut outcome = Ok(Ok(()));
        let new = encode(u);
        self.state
            .update(USERS, u.name.as_bytes(), &mut |old| match old
                .map(|b| decode::<UserRecord>(USERS, b))
            {
                Some(Ok(rec)) if rec.revoked_ms.is_some() => {
                    outcome = Ok(Err(rec));
                    old.map(<[u8]>::to_vec)
                }
                Some(Err(e)) => {
                    outcome = Err(e);
                    old.map(<[u8]>::to_vec)
                }
                _ => {
                    outcome = Ok(Ok(()));
                    Some(new.clone())
                }
            })?;
        outcome
    }

    /// Marks a user revoked (once: a second revoke keeps the first time);
    /// None if there is no such user.
    pub fn revoke_user(&self, name: &str, now_ms: i64) -> Result<Option<UserRecord>, StoreError> {
        self.update(USERS, name, |u: &mut UserRecord| {
            u.revoked_ms.get_or_insert(now_ms);
        })
    }

    // -- audit (append-only: there is no update or delete)

    pub fn append_audit(&self, r: &AuditRecord) -> Result<(), StoreError> {
        let id = self.state.next_id()?;
        self.state.put(AUDIT, &id.to_be_bytes(), &encode(r))
    }

    /// The newest `n` audit records, oldest first.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.state
            .last_n(AUDIT, n)?
            .into_iter()
            .map(|(_, v)| decode(AUDIT, &v))
            .collect()
    }

    /// Deletes audit records older than `before_ms` (keyed by an id that
    /// grows with time, so the old ones come first); returns how many.
    pub fn expire_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for kv in self.state.scan(AUDIT, &[])? {
            let (k, v) = kv?;
            let r: AuditRecord = decode(AUDIT, &v)?;
            if r.time_ms >= before_ms {
                break;
            }
            old.push(k);
            if old.len() >= 10_000 {
                break;
            }
        }
        let ops: Vec<backend::Op> = old
            .iter()
            .map(|k| backend::Op {
                tree: AUDIT,
                key: k.clone(),
                value: None,
            })
            .collect();
        self.state.apply(&ops)?;
        Ok(ops.len())
    }
}

#[cfg(test)]
mod tests;
