//! Store health against real disks: a floor that refuses records while
//! everything else goes on, and a real ENOSPC under sled (a small tmpfs
//! in a mount namespace of the test's own) healed by a reopen.

use super::*;
use crate::records::{LogRecord, Records};
use crate::{AuditRecord, Store};

fn lines(host: &str, from: u64, n: u64, len: usize) -> Records<'static> {
    let logs: Vec<LogRecord> = (from..from + n)
        .map(|seq| LogRecord {
            id: seq,
            host: host.into(),
            source: "raw".into(),
            path: "/x".into(),
            seq,
            time_ms: 1_000 + seq as i64,
            line: format!("{seq:0len$}"),
            truncated: false,
            invalid_utf8: false,
        })
        .collect();
    Records::of(vec![], &[], &logs)
}

fn audit(i: usize) -> AuditRecord {
    AuditRecord {
        time_ms: i as i64,
        actor: "test".into(),
        action: "x".repeat(200),
        target: format!("{i}"),
        outcome: "ok".into(),
    }
}

#[test]
fn under_the_floor_records_are_refused_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    s.put_records("h", &lines("h", 1, 10, 10), 10).unwrap();
    // A floor no disk is above.
    s.health().set_floor(100.0);
    let e = s.put_records("h", &lines("h", 11, 10, 10), 20).unwrap_err();
    assert!(matches!(e, StoreError::Full(_)), "{e}");
    assert!(e.to_string().contains("min_free_percent"), "{e}");
    assert!(!s.health().writable());
    assert!(matches!(
        s.health().why(),
        Some(Unwritable::LowSpace { .. })
    ));
    // Refused until a recovery finds room, even with the floor back.
    s.health().set_floor(0.0);
    let e = s.put_records("h", &lines("h", 11, 10, 10), 20).unwrap_err();
    assert!(matches!(e, StoreError::Unwritable(_)), "{e}");
    // Metadata and reads go on meanwhile.
    s.append_audit(&audit(1)).unwrap();
    assert_eq!(s.acked_seq("h").unwrap(), 10);
    s.recover().unwrap();
    assert!(s.health().writable());
    assert_eq!(s.health().epoch(), 0, "nothing was reopened");
    s.put_records("h", &lines("h", 11, 10, 10), 20).unwrap();
    assert_eq!(s.acked_seq("h").unwrap(), 20);
    assert_eq!(s.health().failures(), 0, "refusals are not failed writes");
}

/// Set in the copy of this test binary that runs inside `unshare -m`.
const IN_NS: &str = "PICKET_STORE_TEST_IN_MOUNT_NS";

/// Runs the test `name` of this binary again inside a mount namespace of
/// its own (`unshare -m`, as root: CI runs so), where it may mount.
fn in_mount_ns(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .arg("-m")
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(IN_NS, "1")
        .output()
        .expect("unshare (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inside unshare -m: {text}");
    assert!(text.contains("1 passed"), "the test ran inside: {text}");
}

#[test]
fn sled_poisoned_by_a_full_disk_is_reopened_once_there_is_room() {
    if std::env::var_os(IN_NS).is_none() {
        return in_mount_ns(
            "health::tests::sled_poisoned_by_a_full_disk_is_reopened_once_there_is_room",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(mount.success());
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    s.put_records("h", &lines("h", 1, 100, 100), 100).unwrap();
    s.flush().unwrap();
    // Another writer takes every byte left.
    let filler = dir.path().join("filler");
    let dd = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .arg("bs=64k")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!dd.success(), "dd stops at a full disk");
    // The engine's own writes fail, and go on failing: sled refuses
    // writes after an I/O error.
    let mut failed = None;
    for i in 0..100_000 {
        if let Err(e) = s.append_audit(&audit(i)).and_then(|()| s.flush()) {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.expect("writes fail on a full disk");
    assert!(matches!(failed, StoreError::Engine(_)), "{failed}");
    assert!(!s.health().writable());
    assert!(s.health().failures() >= 1);
    assert!(s.kv.poisoned(), "sled refuses writes from now on");
    // Reads go on; a recovery without room does not reopen.
    assert_eq!(s.acked_seq("h").unwrap(), 100);
    assert!(s.recover().is_err());
    assert_eq!(s.health().epoch(), 0);
    // Room again: reopened, writable, and what was flushed is there.
    std::fs::remove_file(&filler).unwrap();
    s.recover().unwrap();
    assert!(s.health().writable());
    assert_eq!(s.health().epoch(), 1);
    assert_eq!(s.acked_seq("h").unwrap(), 100);
    s.put_records("h", &lines("h", 101, 100, 100), 200).unwrap();
    s.flush().unwrap();
    assert_eq!(s.acked_seq("h").unwrap(), 200);
    let n = s.logs_since(0, None).unwrap().count();
    assert_eq!(n, 200);
    drop(s);
    let umount = std::process::Command::new("umount")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(umount.success());
}
