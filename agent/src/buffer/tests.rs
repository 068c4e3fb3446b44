use super::*;
use chunk::encode_records;
use picket_proto::v1::{self, LogLine, MetricSample};
use prost::Message;

/// `Buffer::after`, decoded.
fn read(
    b: &Buffer,
    after: u64,
    max: usize,
    max_bytes: usize,
) -> Result<Vec<v1::Record>, BufferError> {
    Ok(b.after(after, max, max_bytes)?.decode().unwrap())
}

/// Text that does not compress: chunks are packed, and these tests fill
/// the buffer's byte cap and its segments.
fn noise(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

fn metric(t: i64) -> Payload {
    Payload::Metrics(MetricSample {
        time_unix_ms: t,
        gauges: (0..10)
            .map(|_| v1::Gauge {
                name: noise(16),
                labels: Default::default(),
                value: 1.0,
            })
            .collect(),
    })
}

fn log(line: &str) -> Payload {
    Payload::Log(LogLine {
        line: line.into(),
        ..Default::default()
    })
}

#[test]
fn sequence_numbers_survive_reopen_and_ack_trims() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.push(&[metric(1), metric(2)], None).unwrap(), 1..3);
        assert_eq!(b.push(&[log("x")], Some(("src", b"42"))).unwrap(), 3..4);
        b.flush().unwrap();
    }
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(b.next_seq(), 4);
    assert_eq!(b.position("src").unwrap().as_deref(), Some(&b"42"[..]));
    assert_eq!(seqs(&read(&b, 0, 100, usize::MAX).unwrap()), vec![1, 2, 3]);
    b.ack(2).unwrap();
    assert_eq!(seqs(&read(&b, 0, 100, usize::MAX).unwrap()), vec![3]);
    assert_eq!(read(&b, 3, 100, usize::MAX).unwrap().len(), 0);
    assert_eq!(b.push(&[metric(3)], None).unwrap(), 4..5);
}

#[test]
fn full_buffer_drops_oldest_metrics_then_logs_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), 8000).unwrap();
    for i in 0..30 {
        b.push(&[metric(i)], None).unwrap();
    }
    for _ in 0..20 {
        b.push(&[log(&noise(200))], None).unwrap();
    }
    // Logs alone fit: room was made by dropping metrics only.
    let [m, l, e] = b.dropped();
    assert!(m > 0 && l == 0 && e == 0, "{m} {l} {e}");
    for _ in 0..40 {
        b.push(&[log(&noise(200))], None).unwrap();
    }
    let [m, l, e] = b.dropped();
    assert_eq!(m, 30, "every metric went before any log line");
    assert!(l > 0 && e == 0);
    assert!(b.held_bytes() <= 8000);
    let recs = read(&b, 0, 1000, usize::MAX).unwrap();
    assert!(
        recs.iter()
            .all(|r| matches!(&r.payload, Some(Payload::Log(_))))
    );
    // The newest line is kept; the oldest went.
    assert_eq!(recs.last().unwrap().seq, 90);
    assert!(recs.first().unwrap().seq > 31);
    // Counts survive a restart.
    drop(recs);
    b.flush().unwrap();
    drop(b);
    let b = Buffer::open(dir.path(), 8000).unwrap();
    assert_eq!(b.dropped(), [m, l, 0]);
}

#[test]
fn a_push_is_durable_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(b.durable_seq(), 0);
    assert!(!b.behind());
    b.push(&[metric(1), metric(2)], None).unwrap();
    assert_eq!(b.durable_seq(), 2, "fsynced with its commit record");
    assert!(b.behind(), "the checkpoint is behind");
    b.flush().unwrap();
    assert!(!b.behind());
    drop(b);
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(b.durable_seq(), 2, "what a restart finds was on disk");
}

fn ev(msg: &str) -> Payload {
    Payload::Event(v1::Event {
        message: msg.into(),
        ..Default::default()
    })
}

fn seqs(recs: &[v1::Record]) -> Vec<u64> {
    recs.iter().map(|r| r.seq).collect()
}

#[test]
fn reads_and_acks_split_chunks_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    let lines: Vec<Payload> = (0..10).map(|i| log(&format!("l{i}"))).collect();
    assert_eq!(b.push(&lines, None).unwrap(), 1..11);
    assert_eq!(b.push(&lines[..5], None).unwrap(), 11..16);
    // A read may start and end inside a chunk, and cross into the next.
    assert_eq!(seqs(&read(&b, 3, 4, usize::MAX).unwrap()), vec![4, 5, 6, 7]);
    assert_eq!(
        seqs(&read(&b, 8, 4, usize::MAX).unwrap()),
        vec![9, 10, 11, 12]
    );
    let held = b.held_bytes();
    // Acking part of a chunk keeps it (its rest is still owed)...
    b.ack(7).unwrap();
    assert_eq!(b.held_bytes(), held);
    assert_eq!(
        seqs(&read(&b, 7, 100, usize::MAX).unwrap()),
        (8..16).collect::<Vec<_>>()
    );
    // ...and acking its last record frees it.
    b.ack(10).unwrap();
    assert!(b.held_bytes() < held);
    assert_eq!(
        seqs(&read(&b, 0, 100, usize::MAX).unwrap()),
        (11..16).collect::<Vec<_>>()
    );
    // The byte cap ends a read early, after at least one record.
    assert_eq!(read(&b, 10, 100, 1).unwrap().len(), 1);
}

#[test]
fn dropping_log_lines_keeps_the_events_of_the_same_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), 6000).unwrap();
    // Chunks of 10 lines and one event, as a source batch makes them.
    let mut pushed = 0;
    for i in 0..4 {
        let mut batch: Vec<Payload> = (0..10).map(|_| log(&noise(200))).collect();
        batch.push(ev(&format!("event {i}")));
        b.push(&batch, Some(("src", format!("{i}").as_bytes())))
            .unwrap();
        pushed += 11;
    }
    let [m, l, e] = b.dropped();
    assert!(l > 0, "the cap forced log lines out");
    assert_eq!((m, e), (0, 0));
    let recs = read(&b, 0, 1000, usize::MAX).unwrap();
    let events: Vec<&str> = recs
        .iter()
        .filter_map(|r| match &r.payload {
            Some(Payload::Event(e)) => Some(e.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(events, ["event 0", "event 1", "event 2", "event 3"]);
    assert_eq!(
        recs.len() as u64 + l,
        pushed,
        "every record kept or counted"
    );
    // Sequence numbers stay increasing across the gaps.
    assert!(seqs(&recs).windows(2).all(|w| w[0] < w[1]));
    assert_eq!(b.position("src").unwrap().as_deref(), Some(&b"3"[..]));
}

#[test]
fn records_from_a_one_key_per_record_buffer_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("buffer")).unwrap();
        let tree = db.open_tree("buffer").unwrap();
        for seq in [5u64, 6, 7] {
            let mut v = vec![Kind::Log as u8];
            v1::Record {
                seq,
                payload: Some(log(&format!("old {seq}"))),
            }
            .encode(&mut v)
            .unwrap();
            let mut k = vec![b'r'];
            k.extend_from_slice(&seq.to_be_bytes());
            tree.insert(k, v).unwrap();
        }
        tree.insert(NEXT_SEQ, &8u64.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
    }
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(seqs(&read(&b, 0, 100, usize::MAX).unwrap()), vec![5, 6, 7]);
    assert_eq!(b.push(&[log("new")], None).unwrap(), 8..9);
    assert!(b.held_bytes() > 0);
}

#[test]
fn a_buffer_full_of_events_refuses_rather_than_drops() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), 2000).unwrap();
    let ev = || {
        Payload::Event(v1::Event {
            message: noise(300),
            ..Default::default()
        })
    };
    let mut refused = false;
    for _ in 0..20 {
        if let Err(BufferError::Full(_)) = b.push(&[ev()], None) {
            refused = true;
            break;
        }
    }
    assert!(refused);
    assert_eq!(b.dropped(), [0, 0, 0]);
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("buffer.segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn chunks_held_inline_in_sled_move_to_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("buffer")).unwrap();
        let tree = db.open_tree("buffer").unwrap();
        let chunk = encode_records(&[
            v1::Record {
                seq: 3,
                payload: Some(log("inline 3")),
            },
            v1::Record {
                seq: 4,
                payload: Some(ev("inline 4")),
            },
        ]);
        tree.insert(chunk::inline_key(3), chunk).unwrap();
        tree.insert(NEXT_SEQ, &5u64.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
    }
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(seqs(&read(&b, 0, 100, usize::MAX).unwrap()), vec![3, 4]);
    assert_eq!(b.tree.scan_prefix(b"c").count(), 0, "moved, not copied");
    assert_eq!(b.push(&[log("new")], None).unwrap(), 5..6);
    drop(b);
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(seqs(&read(&b, 0, 100, usize::MAX).unwrap()), vec![3, 4, 5]);
}

#[test]
fn segments_go_once_acked_and_orphans_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let big = noise(8 << 20);
    {
        let b = Buffer::open(dir.path(), 1 << 30).unwrap();
        // 8 MiB lines: two fill a segment, so three make two segments.
        for i in 0..3 {
            b.push(&[log(&format!("{i}{big}"))], Some(("src", b"p")))
                .unwrap();
        }
        b.flush().unwrap();
        assert_eq!(segment_files(dir.path()).len(), 2);
        b.ack(2).unwrap();
        assert_eq!(
            segment_files(dir.path()).len(),
            2,
            "kept until the checkpoint forgets its chunks"
        );
        b.flush().unwrap();
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "the first segment is deleted"
        );
        assert_eq!(seqs(&read(&b, 0, 10, usize::MAX).unwrap()), vec![3]);
    }
    // A stray segment (its deletion cut short by a crash) goes at open.
    std::fs::write(
        dir.path().join("buffer.segments/00000000000000ff.seg"),
        b"old",
    )
    .unwrap();
    let b = Buffer::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(seqs(&read(&b, 0, 10, usize::MAX).unwrap()), vec![3]);
    b.push(&[log("after")], None).unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        2,
        "appends after a restart go to a new segment"
    );
    b.ack(4).unwrap();
    b.flush().unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the segment appends go to stays"
    );
    assert_eq!(b.held_bytes(), 0);
}

/// Flips the byte `at` picks in the first segment file; returns its path.
fn damage(dir: &Path, at: impl FnOnce(&[u8]) -> usize) -> PathBuf {
    let seg = dir.join("buffer.segments").join(&segment_files(dir)[0]);
    let mut bytes = std::fs::read(&seg).unwrap();
    let i = at(&bytes);
    bytes[i] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    seg
}

#[test]
fn damaged_segments_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(dir.path(), 1 << 20).unwrap();
        b.push(&[log("one"), log("two")], None).unwrap();
        b.flush().unwrap();
    }
    // Inside the chunk, the first piece (past its frame).
    let seg = damage(dir.path(), |_| 20);
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    let e = b.after(0, 10, usize::MAX).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    drop(b);
    std::fs::remove_file(&seg).unwrap();
    let e = Buffer::open(dir.path(), 1 << 20).err().unwrap().to_string();
    assert!(
        e.contains("are lost") && e.contains("buffer.segments"),
        "{e}"
    );
}

#[test]
fn a_push_that_rolls_the_segment_keeps_its_chunks_in_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), 1 << 30).unwrap();
    // Fill the first segment to just under its size, and ack it all: the
    // segment is empty of held chunks but still the one appends go to.
    // (Packing adds about 1/255 to text that does not compress.)
    b.push(&[log(&noise((16 << 20) - (100 << 10)))], None)
        .unwrap();
    b.ack(1).unwrap();
    // The next push's first chunk lands in that segment and fills it; its
    // next chunk starts a new one. The first must not go with the old.
    let lines: Vec<Payload> = (0..200).map(|_| log(&noise(1000))).collect();
    assert_eq!(b.push(&lines, None).unwrap(), 2..202);
    assert_eq!(segment_files(dir.path()).len(), 2);
    let want: Vec<u64> = (2..202).collect();
    assert_eq!(seqs(&read(&b, 1, 1000, usize::MAX).unwrap()), want);
    drop(b);
    let b = Buffer::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(seqs(&read(&b, 1, 1000, usize::MAX).unwrap()), want);
}

#[test]
fn chunks_are_packed_and_unpacked_chunks_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(dir.path(), 1 << 30).unwrap();
    let lines: Vec<Payload> = (0..2_000)
        .map(|i| {
            log(&format!(
                "Nov 23 09:12:44 vm-prod app[4188]: GET /api/v1/items?page={i} 200"
            ))
        })
        .collect();
    let text: usize = 2_000 * 60;
    b.push(&lines, Some(("src", b"p"))).unwrap();
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|f| {
            std::fs::metadata(dir.path().join("buffer.segments").join(f))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        (on_disk as usize) * 4 < text,
        "{on_disk} bytes on disk for {text} of text"
    );
    assert!(
        b.held_bytes() < on_disk + 4096,
        "the cap counts bytes on disk"
    );
    let got = read(&b, 0, 10_000, usize::MAX).unwrap();
    assert_eq!(got.len(), 2_000);
    assert_eq!(got[1999].payload, lines.last().cloned());

    // A chunk as buffers before packing wrote it: its entries as they are.
    let mut old = vec![1 << Kind::Log as u8];
    old.extend_from_slice(&7u64.to_be_bytes());
    frame::put_record(7, &log("before packing"), &mut old);
    let entries = chunk::chunk_records(&old).unwrap();
    let (seq, _) = frame::records(&entries).next().unwrap().unwrap();
    assert_eq!(seq, 7);
    assert!(matches!(entries, std::borrow::Cow::Borrowed(_)));
    assert!(chunk::chunk_records(&[0x80, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2]).is_err());
}

#[test]
fn a_damaged_chunk_is_discarded_and_counted_and_the_rest_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(dir.path(), 1 << 20).unwrap();
        b.push(&[log("one"), log("two")], None).unwrap();
        b.push(&[log("three")], None).unwrap();
        b.flush().unwrap();
    }
    // Damage the first chunk: LZ4 keeps text this short as it is.
    damage(dir.path(), |bytes| {
        bytes
            .windows(3)
            .position(|w| w == b"one")
            .expect("the first chunk's text")
    });
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    let Err(BufferError::Corrupt { seq, detail }) = b.after(0, 10, usize::MAX) else {
        panic!("the damage should show");
    };
    assert_eq!(seq, 1);
    assert_eq!(b.discard(seq, &detail).unwrap(), 2);
    assert_eq!(b.discard(seq, &detail).unwrap(), 0, "once");
    assert_eq!(seqs(&read(&b, 0, 10, usize::MAX).unwrap()), vec![3]);
    assert_eq!(b.damaged(), 2);
    drop(b);
    let b = Buffer::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(b.damaged(), 2, "the count survives a restart");
    assert_eq!(seqs(&read(&b, 0, 10, usize::MAX).unwrap()), vec![3]);
}

#[test]
fn making_room_lets_a_damaged_chunk_go() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(dir.path(), 6000).unwrap();
        b.push(&[log(&noise(1000))], None).unwrap();
        b.flush().unwrap();
    }
    damage(dir.path(), |bytes| bytes.len() / 2);
    let b = Buffer::open(dir.path(), 6000).unwrap();
    // Filling the buffer drops the oldest log lines: the damaged chunk goes
    // as damaged, not as an error that stops every push.
    for _ in 0..8 {
        b.push(&[log(&noise(1000))], None).unwrap();
    }
    assert_eq!(b.damaged(), 1);
    assert!(b.dropped()[Kind::Log as usize] > 0);
}

/// A copy of the sled checkpoint (the `buffer` folder) as it is now.
fn checkpoint_copy(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.join("buffer"), copy.path());
    copy
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// What a crash leaves: sled as it was at the checkpoint `copy`, the
/// segments as they are.
fn crash_back_to(dir: &Path, copy: &Path) {
    std::fs::remove_dir_all(dir.join("buffer")).unwrap();
    copy_dir(copy, &dir.join("buffer"));
}

/// A buffer holding one pushed line (seq 1, "src" read to "after a"),
/// checkpointed, and a copy of that checkpoint.
fn checkpointed(dir: &Path) -> (Buffer, tempfile::TempDir) {
    let b = Buffer::open(dir, 1 << 30).unwrap();
    b.push(&[log("a1")], Some(("src", b"after a"))).unwrap();
    b.flush().unwrap();
    let copy = checkpoint_copy(dir);
    (b, copy)
}

/// The last segment file's path.
fn last_segment(dir: &Path) -> PathBuf {
    let names = segment_files(dir);
    dir.join("buffer.segments").join(names.last().unwrap())
}

#[test]
fn pushes_after_the_checkpoint_come_back_after_a_crash_with_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let copy = {
        let (b, copy) = checkpointed(dir.path());
        // Two sources in one push, a push of metrics, and a push big
        // enough for several chunks, after the checkpoint.
        let one = Encoded::new(&[log("b1"), log("b2")]);
        let two = Encoded::new(&[log("c1")]);
        b.push_encoded(&[&one, &two], &[("src", b"after b"), ("other", b"after c")])
            .unwrap();
        b.push(&[metric(1)], None).unwrap();
        let lines: Vec<Payload> = (0..40).map(|_| log(&noise(4000))).collect();
        assert_eq!(b.push(&lines, Some(("src", b"after big"))).unwrap(), 6..46);
        copy
    };
    crash_back_to(dir.path(), copy.path());
    let b = Buffer::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(
        seqs(&read(&b, 0, 100, usize::MAX).unwrap()),
        (1..46).collect::<Vec<_>>()
    );
    assert_eq!(b.durable_seq(), 45);
    assert_eq!(b.position("src").unwrap().unwrap(), b"after big");
    assert_eq!(b.position("other").unwrap().unwrap(), b"after c");
    assert_eq!(
        b.push(&[log("next")], None).unwrap(),
        46..47,
        "no seq reused"
    );
    // What was recovered is held like any push: acks trim it.
    b.ack(45).unwrap();
    assert_eq!(seqs(&read(&b, 0, 100, usize::MAX).unwrap()), vec![46]);
}

#[test]
fn a_push_a_crash_tore_is_undone_with_its_read_position() {
    for tear in ["cut", "chunk damaged"] {
        let dir = tempfile::tempdir().unwrap();
        let copy = {
            let (b, copy) = checkpointed(dir.path());
            b.push(&[log("b1")], Some(("src", b"after b"))).unwrap();
            b.push(&[log(&noise(500))], Some(("src", b"after c")))
                .unwrap();
            copy
        };
        crash_back_to(dir.path(), copy.path());
        let seg = last_segment(dir.path());
        let bytes = std::fs::read(&seg).unwrap();
        match tear {
            // The last commit record cut short.
            "cut" => std::fs::write(&seg, &bytes[..bytes.len() - 3]).unwrap(),
            // Its chunk's bytes not on disk, its commit record whole.
            _ => {
                let mut bytes = bytes;
                let at = bytes.len() - 300;
                bytes[at] ^= 0xff;
                std::fs::write(&seg, &bytes).unwrap();
            }
        }
        let b = Buffer::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            seqs(&read(&b, 0, 100, usize::MAX).unwrap()),
            vec![1, 2],
            "{tear}"
        );
        assert_eq!(b.position("src").unwrap().unwrap(), b"after b", "{tear}");
        assert_eq!(
            b.push(&[log("c again")], Some(("src", b"after c")))
                .unwrap(),
            3..4,
            "{tear}: the lines read again get the seq the torn push had"
        );
    }
}
