use super::*;

fn ev(host: &str, id: u64, t: i64) -> EventRecord {
    EventRecord {
        id,
        host: host.into(),
        source: "sshd".into(),
        path: "/var/log/auth.log".into(),
        seq: id,
        time_ms: t,
        received_ms: t,
        severity: Severity::Low,
        kind: "auth_failure".into(),
        message: format!("m{id}"),
        fields: BTreeMap::new(),
    }
}

fn put(s: &Store, host: &str, events: Vec<EventRecord>) {
    let acked = events.iter().map(|e| e.seq).max().unwrap_or(0);
    s.put_records(host, &Records::of(vec![], &events, &[]), acked)
        .unwrap();
}

fn times(s: &Store, host: Option<&str>, since: i64) -> Vec<i64> {
    s.events_since(since, host)
        .unwrap()
        .map(|e| e.unwrap().time_ms)
        .collect()
}

#[test]
fn blocks_read_in_both_formats_and_garbage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let mut e = ev("h", 1, 1_000);
    e.message = "a \"quoted\" line, é, \u{0}".into();
    e.fields.insert("ip".into(), "192.0.2.1".into());
    put(&s, "h", vec![e.clone()]);
    // A block as stores before postcard wrote it: JSON after the host.
    let old = ev("h", 2, 1_500);
    let mut v = b"h\0".to_vec();
    v.extend_from_slice(&serde_json::to_vec(&[&old]).unwrap());
    s.kv.put(EVENTS, &key(1_500, 2), &v).unwrap();
    let got: Vec<EventRecord> = s
        .events_since(0, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, vec![e, old]);
    // Postcard, inline, as stores before wire blocks wrote it.
    let pc = ev("h", 5, 1_600);
    let mut v = b"h\0\x01".to_vec();
    v.extend_from_slice(&postcard::to_allocvec(&[&pc][..]).unwrap());
    s.kv.put(EVENTS, &key(1_600, 5), &v).unwrap();
    let got: Vec<EventRecord> = s
        .events_since(1_600, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, vec![pc]);
    s.kv.put(EVENTS, &key(1_700, 3), b"h\0\x01garbage").unwrap();
    // Wire blocks: an entry cut short, and a payload that does not decode.
    s.kv.put(EVENTS, &key(1_710, 6), b"h\0\x04\x06\x06\x00\x09ab")
        .unwrap();
    s.kv.put(EVENTS, &key(1_720, 7), b"h\0\x04\x07\x07\x00\x02\x0a\x09")
        .unwrap();
    s.kv.put(EVENTS, &key(1_800, 4), b"h\0?").unwrap();
    let errors: Vec<String> = s
        .events_since(1_600, None)
        .unwrap()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors[1].contains("runs past"), "{errors:?}");
    assert!(errors[3].contains("unknown format"), "{errors:?}");
}

#[test]
fn time_ordered_across_hosts_with_acks_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    // One batch out of order and spread over 20 s: several blocks.
    put(
        &s,
        "h",
        vec![ev("h", 2, 2_000), ev("h", 1, 1_000), ev("h", 3, 20_000)],
    );
    s.put_records(
        "h",
        &Records::of(
            vec![],
            &[],
            &[LogRecord {
                id: 4,
                host: "h".into(),
                source: "raw".into(),
                path: "/x".into(),
                seq: 4,
                time_ms: 1_500,
                line: "l".into(),
                truncated: false,
                invalid_utf8: false,
            }],
        ),
        4,
    )
    .unwrap();
    assert_eq!(s.acked_seq("h").unwrap(), 4);
    // Another host's block overlaps h's in time.
    put(&s, "g", vec![ev("g", 5, 1_500), ev("g", 6, 2_000)]);
    assert_eq!(times(&s, None, 0), vec![1_000, 1_500, 2_000, 2_000, 20_000]);
    let ids: Vec<u64> = s
        .events_since(0, None)
        .unwrap()
        .map(|e| e.unwrap().id)
        .collect();
    assert_eq!(ids, vec![1, 5, 2, 6, 3], "equal times are in id order");
    assert_eq!(
        times(&s, None, 1_600),
        vec![2_000, 2_000, 20_000],
        "--since cuts inside a block"
    );
    assert_eq!(
        times(&s, Some("h"), 1_500),
        vec![2_000, 20_000],
        "the host index skips g"
    );
    assert_eq!(times(&s, Some("g"), 0), vec![1_500, 2_000]);
    assert!(times(&s, Some("nobody"), 0).is_empty());
    assert!(times(&s, Some("h\0"), 0).is_empty());
    assert_eq!(s.logs_since(0, Some("h")).unwrap().count(), 1);

    // Blocks wholly before the cut-off go, with their index entries;
    // a block that may still hold a newer record stays.
    assert!(s.expire_records(5_000, 0).unwrap() >= 2);
    assert_eq!(times(&s, None, 0), vec![20_000]);
    assert_eq!(times(&s, Some("h"), 0), vec![20_000]);
    assert!(times(&s, Some("g"), 0).is_empty());
    assert_eq!(
        s.kv.scan(EVENTS_BY_HOST, b"").unwrap().count(),
        1,
        "index entries expire with their blocks"
    );
    let ids = s.ingest_ids(3).unwrap();
    assert!(ids[0] < ids[1] && ids[1] < ids[2]);
}

/// Many batches from several hosts, with times that jump about (as a
/// replay after an outage does), read back with every filter: the
/// merge must equal a plain sort of what went in.
#[test]
fn merged_blocks_equal_a_sort_of_everything() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    // "a" and "a-b": one host's name is a prefix of another's.
    let hosts = ["a", "a-b", "c"];
    let mut all = Vec::new();
    let mut id = 0;
    for batch in 0..60u64 {
        let host = hosts[rnd(3) as usize];
        let base = rnd(100_000) as i64;
        let n = if batch == 7 {
            BLOCK_MAX as u64 * 2 + 5
        } else {
            rnd(80)
        };
        let mut evs = Vec::new();
        for _ in 0..n {
            id += 1;
            // Mostly close together, now and then far off.
            let t = if rnd(10) == 0 {
                rnd(100_000) as i64
            } else {
                base + rnd(3_000) as i64
            };
            evs.push(ev(host, id, t));
        }
        all.extend(evs.clone());
        put(&s, host, evs);
    }
    all.sort_by_key(|e| (e.time_ms, e.id));
    for since in [0, 1, 999, 50_000, 99_999, 200_000] {
        for host in [None, Some("a"), Some("c")] {
            let want: Vec<u64> = all
                .iter()
                .filter(|e| e.time_ms >= since && host.is_none_or(|h| e.host == h))
                .map(|e| e.id)
                .collect();
            let got: Vec<u64> = s
                .events_since(since, host)
                .unwrap()
                .map(|e| e.unwrap().id)
                .collect();
            assert_eq!(got, want, "since {since} host {host:?}");
        }
    }
    // Newest first: the same order, reversed.
    for host in [None, Some("a"), Some("a-b"), Some("c")] {
        let mut want: Vec<u64> = all
            .iter()
            .filter(|e| host.is_none_or(|h| e.host == h))
            .map(|e| e.id)
            .collect();
        want.reverse();
        let got: Vec<u64> = s
            .events(Read::new(Start::Newest, host))
            .unwrap()
            .map(|e| e.unwrap().id)
            .collect();
        assert_eq!(got, want, "newest first, host {host:?}");
    }
}

#[test]
fn needles_are_what_every_match_starts_with() {
    let some = |p: &str| Needles::of(p).is_some();
    for p in [
        "RARE",
        "^Failed password",
        "(?i)rare",
        "error|warn",
        r"\bsshd\[\d+\]",
        "id=[0-9]+",
    ] {
        assert!(some(p), "{p}");
    }
    // A match may start anywhere, or with nothing at all.
    for p in [".*x", r"\w+", "a|", "x*", "[^a]", "(unclosed"] {
        assert!(!some(p), "{p}");
    }
    let n = Needles::of("(?i)rare").unwrap();
    assert!(n.in_bytes(b"..a RaRe one.."));
    assert!(!n.in_bytes(b"..a common one.."));
}

/// `--grep`'s needles leave out blocks and records that cannot match, and
/// nothing that can.
#[test]
fn reads_with_needles_keep_every_record_that_can_match() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let mut id = 0;
    for batch in 0..20i64 {
        let evs: Vec<EventRecord> = (0..100)
            .map(|i| {
                id += 1;
                let mut e = ev("h", id, batch * 5_000 + i);
                if id % 97 == 0 {
                    e.message = format!("a RARE one, {id}");
                }
                e
            })
            .collect();
        put(&s, "h", evs);
    }
    let needles = Needles::of("RA(RE|TE)").unwrap();
    for start in [Start::Since(0), Start::After(0), Start::Newest] {
        let r = Read {
            start,
            host: None,
            needles: Some(&needles),
        };
        let mut got: Vec<u64> = s.events(r).unwrap().map(|e| e.unwrap().id).collect();
        got.sort();
        let want: Vec<u64> = (1..=id).filter(|i| i % 97 == 0).collect();
        assert_eq!(got, want, "{start:?}");
    }
}

fn segment_files(dir: &std::path::Path, table: &str) -> usize {
    std::fs::read_dir(dir.join("blocks").join(table))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn block_bytes_live_in_segments_that_retention_deletes() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    // Text LZ4 cannot shrink: blocks are packed.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let big: String = (0..9 << 20)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect();
    {
        let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
        // Two 9 MiB events fill a 16 MiB segment; the third starts another.
        for (id, t) in [(1, 1_000), (2, 5_000), (3, 60_000)] {
            let mut e = ev("h", id, t);
            e.message = format!("{id}{big}");
            put(&s, "h", vec![e]);
        }
        assert_eq!(segment_files(dir.path(), "events"), 2);
        let mut sizes = 0;
        for kv in s.kv.scan(EVENTS, &[]).unwrap() {
            sizes += kv.unwrap().1.len();
        }
        assert!(sizes < 200, "sled holds locations only ({sizes} bytes)");
    }
    // A segment no sled entry knows (a crash before its batch) goes.
    std::fs::write(dir.path().join("blocks/events/00000000000000ff.seg"), b"x").unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    assert_eq!(segment_files(dir.path(), "events"), 2);
    let got: Vec<EventRecord> = s
        .events_since(0, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(got[1].message.starts_with('2') && got[1].message.len() == big.len() + 1);
    // Expiring the first two blocks takes their (closed) segment too.
    assert_eq!(s.expire_records(30_000, 0).unwrap(), 2);
    assert_eq!(segment_files(dir.path(), "events"), 1);
    assert_eq!(times(&s, None, 0), [60_000]);
    // Appends after a restart go to a new segment; the current one stays.
    put(&s, "h", vec![ev("h", 4, 61_000)]);
    assert_eq!(s.expire_records(i64::MAX, 0).unwrap(), 2);
    assert_eq!(
        segment_files(dir.path(), "events"),
        1,
        "the segment appends go to stays"
    );
    assert!(times(&s, None, 0).is_empty());
}

#[test]
fn blocks_are_packed_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let line = r#"{"timestamp":"2026-11-23T09:14:02.118000+0000","event_type":"alert","src_ip":"203.0.113.77","alert":{"signature":"ET POLICY curl User-Agent Outbound"}}"#;
    let evs: Vec<EventRecord> = (1..=2_000)
        .map(|id| {
            let mut e = ev("h", id, 1_000 + id as i64 / 4);
            e.message = line.to_string();
            e
        })
        .collect();
    put(&s, "h", evs.clone());
    let on_disk: u64 = std::fs::read_dir(dir.path().join("blocks/events"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    let text = (line.len() * evs.len()) as u64;
    assert!(
        on_disk * 4 < text,
        "{on_disk} bytes on disk for {text} of text"
    );
    let got: Vec<EventRecord> = s
        .events_since(0, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, evs);
}

/// Events stamped years before they arrived (a replayed capture, a
/// backfill, a host with a wrong clock) stay for the whole window from
/// their arrival; what arrived before the window goes, whatever its own
/// time says.
#[test]
fn retention_counts_from_when_records_were_received() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let day = 86_400_000;
    let now = 2_000 * day;
    // Dated 400 days ago, received just now.
    let mut old_dated = ev("h", 1, now - 400 * day);
    old_dated.received_ms = now;
    // Dated in the future (a clock ahead), received 10 days ago.
    let mut early = ev("h", 2, now + 30 * day);
    early.received_ms = now - 10 * day;
    put(&s, "h", vec![old_dated]);
    put(&s, "h", vec![early]);
    let logs = [LogRecord {
        id: 3,
        host: "h".into(),
        source: "raw".into(),
        path: "/var/log/x".into(),
        seq: 3,
        time_ms: now - 900 * day,
        line: "backfilled".into(),
        truncated: false,
        invalid_utf8: false,
    }];
    let mut batch = Records::of(vec![], &[], &logs);
    batch.logs[0].received_ms = now;
    s.put_records("h", &batch, 3).unwrap();

    // A 7-day window: the event received 10 days ago goes; the ones
    // dated long ago but received now stay.
    let cut = now - 7 * day;
    assert_eq!(s.expire_records(cut, cut).unwrap(), 1);
    assert_eq!(times(&s, None, 0), vec![now - 400 * day]);
    assert_eq!(times(&s, Some("h"), 0), vec![now - 400 * day]);
    assert_eq!(s.logs_since(0, None).unwrap().count(), 1);
    // Reopened, the same holds, and a window past their arrival takes all.
    drop(s);
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    assert_eq!(s.expire_records(cut, cut).unwrap(), 0);
    assert_eq!(times(&s, None, 0), vec![now - 400 * day]);
    assert_eq!(s.expire_records(now + 1, now + 1).unwrap(), 2);
    assert!(times(&s, None, 0).is_empty());
    assert_eq!(s.logs_since(0, None).unwrap().count(), 0);
    for t in [
        EVENTS_RECEIVED,
        EVENTS_BY_HOST,
        EVENTS_LATEST,
        LOGS_RECEIVED,
        LOGS_BY_HOST,
        LOGS_LATEST,
    ] {
        assert_eq!(s.kv.scan(t, b"").unwrap().count(), 0, "{t} emptied");
    }
}

/// A store written before retention went by receive time: its blocks get
/// index entries when it is opened, counted as received then, so an
/// upgrade deletes nothing early.
#[test]
fn blocks_of_older_stores_count_as_received_when_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000;
    {
        let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
        put(&s, "h", vec![ev("h", 1, 1_000)]);
        put(&s, "g", vec![ev("g", 2, 2_000)]);
        // As an older version left it: no receive-time index, the
        // segment's time the block key's.
        for kv in s.kv.scan(EVENTS_RECEIVED, b"").unwrap() {
            s.kv.remove(EVENTS_RECEIVED, &kv.unwrap().0).unwrap();
        }
        s.kv.remove(META, RECEIVED_INDEXED).unwrap();
        s.flush().unwrap();
    }
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let opened = picket_clock::now_ms();
    assert_eq!(s.kv.scan(EVENTS_RECEIVED, b"").unwrap().count(), 2);
    assert_eq!(s.expire_records(opened - day, opened - day).unwrap(), 0);
    assert_eq!(times(&s, None, 0), vec![1_000, 2_000]);
    assert_eq!(s.expire_records(opened + day, opened + day).unwrap(), 2);
    assert!(times(&s, None, 0).is_empty());
}

fn newest(s: &Store, host: Option<&str>) -> Vec<u64> {
    s.events(Read::new(Start::Newest, host))
        .unwrap()
        .map(|e| e.unwrap().id)
        .collect()
}

/// A store written before the latest-time index: its blocks get entries
/// (at their earliest time plus the span) when it is opened, newest-first
/// reads see them in order beside new blocks, and retention deletes both
/// kinds of entry.
#[test]
fn blocks_of_older_stores_are_read_newest_first_when_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
        // One block spanning 1.0-1.9 s, one inside it at 1.5 s.
        put(
            &s,
            "h",
            (1..=10).map(|i| ev("h", i, 900 + i as i64 * 100)).collect(),
        );
        put(&s, "g", vec![ev("g", 11, 1_500)]);
        // As an older version left it: no latest-time entries, receive
        // entries without the time.
        for kv in s.kv.scan(EVENTS_LATEST, b"").unwrap() {
            s.kv.remove(EVENTS_LATEST, &kv.unwrap().0).unwrap();
        }
        for kv in s.kv.scan(EVENTS_RECEIVED, b"").unwrap() {
            let (k, v) = kv.unwrap();
            s.kv.put(EVENTS_RECEIVED, &k, &v[..v.len() - 8]).unwrap();
        }
        s.kv.remove(META, b"records.latest_index").unwrap();
        s.flush().unwrap();
    }
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    assert_eq!(s.kv.scan(EVENTS_LATEST, b"").unwrap().count(), 2);
    put(&s, "g", vec![ev("g", 12, 1_550), ev("g", 13, 3_000)]);
    // By (time, id), newest first: 3000, 1900 … 1600, 1550, 1500 (h's 6
    // at 1500 and g's 11: 11 first), 1400 …
    assert_eq!(
        newest(&s, None),
        [13, 10, 9, 8, 7, 12, 11, 6, 5, 4, 3, 2, 1]
    );
    assert_eq!(newest(&s, Some("g")), [13, 12, 11]);
    assert_eq!(s.expire_records(i64::MAX, i64::MAX).unwrap(), 4);
    assert_eq!(s.kv.scan(EVENTS_LATEST, b"").unwrap().count(), 0);
    assert!(newest(&s, None).is_empty());
}

fn ids_after(s: &Store, after: u64, host: Option<&str>) -> Vec<u64> {
    let mut ids: Vec<u64> = s
        .events_after(after, host)
        .unwrap()
        .map(|e| e.unwrap().id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Reading from an id on goes by the by-id index: exactly the records
/// above it, whatever their times, and retention's watermark says what
/// a reader resuming below it may have lost.
#[test]
fn records_after_an_id_come_from_the_by_id_index_and_retention_marks_what_went() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let mut all = Vec::new();
    for (round, received) in [(0, 1_000), (1, 50_000), (2, 90_000)] {
        for host in ["h", "g"] {
            // Times spread over 30 s and out of order: several blocks a
            // batch, whose ids interleave.
            let ids = s.ingest_ids(6).unwrap();
            let events: Vec<EventRecord> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let mut e = ev(host, *id, 100_000 - (i as i64 % 3) * 15_000 - round);
                    e.received_ms = received;
                    e
                })
                .collect();
            all.extend(events.iter().map(|e| (e.id, e.host.clone())));
            put(&s, host, events);
        }
    }
    let every: Vec<u64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids_after(&s, 0, None), every);
    for cut in [every[0], every[3], every[10], every[20], every[35]] {
        let want: Vec<u64> = every.iter().copied().filter(|i| *i > cut).collect();
        assert_eq!(ids_after(&s, cut, None), want, "after {cut}");
        let want: Vec<u64> = all
            .iter()
            .filter(|(i, h)| *i > cut && h == "g")
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(ids_after(&s, cut, Some("g")), want, "g after {cut}");
    }
    assert!(ids_after(&s, every[35], None).is_empty());
    assert_eq!(s.expired_through(Kind::Events).unwrap(), 0);

    // The first round goes: the watermark is its highest id, and the
    // by-id entries go with the blocks.
    let before = s.kv.scan(EVENTS_BY_ID, b"").unwrap().count();
    let gone = s.expire_records(10_000, 10_000).unwrap();
    assert!(gone >= 4, "{gone} blocks");
    assert_eq!(s.expired_through(Kind::Events).unwrap(), every[11]);
    assert_eq!(s.expired_through(Kind::Logs).unwrap(), 0);
    assert_eq!(s.kv.scan(EVENTS_BY_ID, b"").unwrap().count(), before - gone);
    assert_eq!(ids_after(&s, 0, None), every[12..].to_vec());
    // The watermark only rises.
    s.expire_records(10_000, 10_000).unwrap();
    assert_eq!(s.expired_through(Kind::Events).unwrap(), every[11]);

    // A store whose index starts later (upgraded from a version without
    // it) reads what predates the index by the time scan.
    s.kv.put(META, b"records.by_id_from", &every[30].to_be_bytes())
        .unwrap();
    for kv in s.kv.scan(EVENTS_BY_ID, b"").unwrap() {
        let (k, _) = kv.unwrap();
        if u64::from_be_bytes(k[..8].try_into().unwrap()) < every[30] {
            s.kv.remove(EVENTS_BY_ID, &k).unwrap();
        }
    }
    assert_eq!(ids_after(&s, every[14], None), every[15..].to_vec());
    assert_eq!(ids_after(&s, every[14], Some("h")).len(), 9);
}
