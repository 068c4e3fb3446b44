//! The store's own records: agents, tokens, users, audit.
use super::*;
use crate::Backend;
use std::sync::Arc;

fn agent(name: &str) -> AgentRecord {
    AgentRecord {
        name: name.into(),
        pinned_labels: Labels::from([("role".into(), "prod".into())]),
        reported_labels: Labels::from([("role".into(), "dev".into()), ("dc".into(), "x".into())]),
        enrolled_ms: 1,
        cert_serial: "aa".into(),
        prev_cert_serial: None,
        cert_not_after_ms: 2,
        revoked_ms: None,
        inventory: None,
        last_seen_ms: 0,
    }
}

#[test]
fn agents_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
        assert!(s.insert_agent(&agent("a")).unwrap());
        assert!(!s.insert_agent(&agent("a")).unwrap(), "name taken");
        s.update_agent("a", |r| r.last_seen_ms = 7).unwrap();
        assert!(s.update_agent("nope", |_| {}).unwrap().is_none());
        s.flush().unwrap();
    }
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let a = s.agent("a").unwrap().unwrap();
    assert_eq!(a.last_seen_ms, 7);
    assert_eq!(
        a.labels().get("role").map(String::as_str),
        Some("prod"),
        "the assigned label, not the one the host reports"
    );
    assert_eq!(
        a.labels().get("dc"),
        None,
        "reported labels are never matched"
    );
    assert_eq!(s.agents().unwrap().len(), 1);
}

#[test]
fn tokens_are_used_once_each_with_the_agent_recorded_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let t = TokenRecord {
        id: "i".into(),
        expires_ms: 100,
        uses_left: 2,
        labels: Labels::new(),
        created_by: "user:admin".into(),
    };
    s.put_token("h", &t).unwrap();
    assert_eq!(s.check_token("h", 50).unwrap().unwrap().uses_left, 2);
    let got = s.enroll_agent("h", 50, &agent("a")).unwrap().unwrap();
    assert_eq!(got.uses_left, 1);
    assert!(s.agent("a").unwrap().is_some(), "recorded with the use");
    // A taken name spends nothing.
    assert_eq!(
        s.enroll_agent("h", 50, &agent("a")).unwrap(),
        Err(EnrollRefusal::NameTaken)
    );
    assert_eq!(s.check_token("h", 50).unwrap().unwrap().uses_left, 1);
    assert_eq!(
        s.enroll_agent("h", 50, &agent("b"))
            .unwrap()
            .unwrap()
            .uses_left,
        0
    );
    assert_eq!(s.check_token("h", 50).unwrap(), Err(TokenRefusal::UsedUp));
    // A refused token records nothing.
    assert_eq!(
        s.enroll_agent("h", 50, &agent("c")).unwrap(),
        Err(EnrollRefusal::Token(TokenRefusal::UsedUp))
    );
    assert!(s.agent("c").unwrap().is_none());
    assert_eq!(
        s.enroll_agent("zz", 50, &agent("c")).unwrap(),
        Err(EnrollRefusal::Token(TokenRefusal::Unknown))
    );
    s.put_token("h2", &t).unwrap();
    assert_eq!(
        s.check_token("h2", 100).unwrap(),
        Err(TokenRefusal::Expired)
    );
    assert_eq!(
        s.enroll_agent("h2", 100, &agent("c")).unwrap(),
        Err(EnrollRefusal::Token(TokenRefusal::Expired))
    );
    assert!(s.agent("c").unwrap().is_none());
}

/// Racing enrollments: a single-use token is won by exactly one.
#[test]
fn a_single_use_token_is_won_once_under_races() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let t = TokenRecord {
        id: "i".into(),
        expires_ms: i64::MAX,
        uses_left: 1,
        labels: Labels::new(),
        created_by: "user:admin".into(),
    };
    s.put_token("h", &t).unwrap();
    let wins: usize = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                sc.spawn(move || {
                    s.enroll_agent("h", 1, &agent(&format!("n{i}")))
                        .unwrap()
                        .is_ok()
                })
            })
            .collect();
        hs.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
    });
    assert_eq!(wins, 1);
    assert_eq!(s.agents().unwrap().len(), 1);
}

#[test]
fn audit_tail_is_newest_n_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    for i in 0..5 {
        s.append_audit(&AuditRecord {
            time_ms: i,
            actor: "user:a".into(),
            action: "x".into(),
            target: String::new(),
            outcome: "ok".into(),
        })
        .unwrap();
    }
    let t: Vec<i64> = s.audit_tail(3).unwrap().iter().map(|r| r.time_ms).collect();
    assert_eq!(t, vec![2, 3, 4]);
}

#[test]
fn corrupt_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(backend::Sled::open(&dir.path().join("s")).unwrap());
    b.put(AGENTS, b"bad", b"{not json").unwrap();
    let s = Store::with_backend(b);
    assert!(matches!(s.agent("bad"), Err(StoreError::Corrupt { .. })));
}

#[test]
fn only_a_revoked_agent_is_forgotten_and_its_acked_number_goes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    s.insert_agent(&agent("a")).unwrap();
    s.kv.apply(&metrics::acked_op("a", 41, Vec::new())).unwrap();
    assert_eq!(s.forget_agent("a").unwrap(), Forget::NotRevoked);
    assert_eq!(s.forget_agent("nope").unwrap(), Forget::NotFound);
    s.update_agent("a", |r| r.revoked_ms = Some(5)).unwrap();
    assert_eq!(s.forget_agent("a").unwrap(), Forget::Forgotten);
    assert!(s.agent("a").unwrap().is_none());
    assert_eq!(
        s.acked_seq("a").unwrap(),
        0,
        "a new enrollment counts from 1"
    );
    assert!(
        s.insert_agent(&agent("a")).unwrap(),
        "the name is free again"
    );
}

#[test]
fn a_revoked_user_stays_revoked_and_cannot_be_added_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let alice = UserRecord {
        name: "alice".into(),
        role: Role::Operator,
        created_ms: 1,
        revoked_ms: None,
        run_as: vec!["deploy".into()],
        hosts: Some("env=staging".into()),
    };
    assert_eq!(s.add_user(&alice).unwrap(), Ok(()));
    let bumped = UserRecord {
        role: Role::Admin,
        ..alice.clone()
    };
    assert_eq!(
        s.add_user(&bumped).unwrap(),
        Ok(()),
        "a new bundle, a new role"
    );
    assert!(s.revoke_user("nobody", 9).unwrap().is_none());
    assert_eq!(
        s.revoke_user("alice", 9)
            .unwrap()
            .and_then(|u| u.revoked_ms),
        Some(9)
    );
    assert_eq!(
        s.revoke_user("alice", 12)
            .unwrap()
            .and_then(|u| u.revoked_ms),
        Some(9),
        "the first revocation's time stays"
    );
    let refused = s.add_user(&alice).unwrap().unwrap_err();
    assert_eq!(refused.revoked_ms, Some(9));
    assert_eq!(s.user("alice").unwrap().and_then(|u| u.revoked_ms), Some(9));
}

#[test]
fn audit_records_past_retention_go_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    for t in [1, 5, 10] {
        s.append_audit(&AuditRecord {
            time_ms: t,
            actor: "user:admin".into(),
            action: "token.create".into(),
            target: String::new(),
            outcome: "ok".into(),
        })
        .unwrap();
    }
    assert_eq!(s.expire_audit(6).unwrap(), 2);
    let left = s.audit_tail(10).unwrap();
    assert_eq!(left.iter().map(|r| r.time_ms).collect::<Vec<_>>(), [10]);
    assert_eq!(s.expire_audit(6).unwrap(), 0);
}
