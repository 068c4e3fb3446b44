//! Backup and restore against real files.

use super::*;

#[test]
fn repoint_moves_data_dir_and_alerts_and_keeps_the_rest() {
    let text = "# comment\ndata_dir = \"/var/lib/picket\"\nalerts = \"rules.toml\"\nlisten = \"0.0.0.0:7443\"\n\n[limits]\nmax_concurrent_streams = 5\n";
    let out = repoint(
        text,
        Path::new("/srv/new"),
        Some(Path::new("/srv/new/alerts.toml")),
    );
    assert_eq!(
        out,
        "# comment\ndata_dir = \"/srv/new\"\nalerts = \"/srv/new/alerts.toml\"\nlisten = \"0.0.0.0:7443\"\n\n[limits]\nmax_concurrent_streams = 5\n"
    );
    let out = repoint(
        "data_dir = \"/a\"\n[limits]\n",
        Path::new("/b"),
        Some(Path::new("/b/alerts.toml")),
    );
    assert_eq!(
        out,
        "data_dir = \"/b\"\nalerts = \"/b/alerts.toml\"\n[limits]\n"
    );
    assert_eq!(
        repoint("data_dir='/a'\n", Path::new("/b"), None),
        "data_dir = \"/b\"\n"
    );
}

/// An archive of `entries` (name, bytes), as `backup` writes them.
fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for (name, data) in entries {
        if name.contains("..") {
            // tar refuses to write such a name: set its bytes as a
            // hostile archive would.
            let mut h = Writer::<Vec<u8>>::header(data.len() as u64);
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            w.tar.append(&h, *data).unwrap();
            w.sums
                .push((name.to_string(), hex::encode(Sha256::digest(data))));
        } else {
            w.bytes(name, data).unwrap();
        }
    }
    w.finish().unwrap()
}

fn header() -> Vec<u8> {
    serde_json::to_vec(&Header {
        format: FORMAT,
        created_unix_ms: 0,
        picket_version: "test".into(),
        data_dir: "/x".into(),
    })
    .unwrap()
}

#[test]
fn bad_archives_are_refused_with_a_reason() {
    let h = header();
    let good = archive(&[(HEADER, &h), ("ca.crt", b"pem")]);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(unpack(good.as_slice(), &dir.path().join("ok")).unwrap(), 2);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"not a tar at all, just text".repeat(40)),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() - 1100].to_vec()),
        ("no header", archive(&[("ca.crt", b"pem")])),
        ("escapes", archive(&[(HEADER, &h), ("a/../../b", b"x")])),
        ("tampered", {
            let mut t = good.clone();
            let at = t.windows(3).position(|w| w == b"pem").unwrap();
            t[at] = b'P';
            t
        }),
    ];
    for (what, bytes) in cases {
        let into = dir.path().join(what);
        std::fs::create_dir_all(&into).unwrap();
        let e = unpack(bytes.as_slice(), &into);
        assert!(e.is_err(), "{what} was accepted");
    }
}

#[test]
fn unsafe_names_are_refused() {
    for bad in ["../x", "/etc/passwd", "a/../../b", "./a"] {
        assert!(safe_path(bad).is_err(), "{bad}");
    }
    assert!(safe_path("blocks/events/0000000000000001.seg").is_ok());
}

#[test]
fn a_snapshot_named_outside_the_data_folder_is_not_read() {
    let data = tempfile::tempdir().unwrap();
    let snaps = data.path().join(local::SNAPSHOTS);
    std::fs::create_dir_all(snaps.join("s1")).unwrap();
    let none = BTreeMap::new();
    assert!(confined(data.path(), &snaps.join("s1"), &none).is_ok());
    for outside in [PathBuf::from("/etc"), snaps.join("../.."), snaps.clone()] {
        let e = confined(data.path(), &outside, &none).unwrap_err();
        assert!(
            e.to_string().contains("refusing") || e.to_string().contains("outside"),
            "{e}"
        );
    }
    let sneaky = BTreeMap::from([(PathBuf::from("../../../etc/shadow"), 1)]);
    let e = confined(data.path(), &snaps.join("s1"), &sneaky).unwrap_err();
    assert!(e.to_string().contains("segment"), "{e}");
}
