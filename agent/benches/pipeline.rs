//! The agent's share of the event pipeline, stage by stage, without the
//! network: parse lines into records, push them into the on-disk buffer
//! (encode, write, fsync), read them back for the wire and ack them.
//! Prints microseconds per line for each parser (see docs/benchmarks.md):
//! wall time, and in brackets this thread's CPU time (the rest is waiting
//! for the disk).
//!
//!     cargo bench -p picket-agent --bench pipeline [-- LINES]

use std::time::Instant;

use picket_agent::buffer::Buffer;
use picket_agent::collect::{BATCH_LINES, records};
use picket_agent::tail::Line;
use picket_model::SourceKind;
use picket_sources::Parser;

/// The lines scripts/bench-events.py appends, one per parser, and an
/// auth.log line that is not sshd's (most of auth.log).
const LINES: [(SourceKind, &str); 6] = [
    (
        SourceKind::Raw,
        "Nov 23 09:12:44 vm-prod app[4188]: GET /api/v1/items?page=2 200 0.012s",
    ),
    (
        SourceKind::Sshd,
        "Nov 23 09:12:45 vm-prod sshd[4188]: Failed password for invalid user oracle from 203.0.113.77 port 40112 ssh2",
    ),
    (
        SourceKind::Sshd,
        "Nov 23 09:12:45 vm-prod CRON[4190]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
    ),
    (
        SourceKind::Fail2ban,
        "2026-11-23 09:14:02,118 fail2ban.actions        [6447]: NOTICE  [sshd] Ban 203.0.113.77",
    ),
    (
        SourceKind::Suricata,
        r#"{"timestamp":"2026-11-23T09:14:02.118000+0000","flow_id":1042210044,"event_type":"alert","src_ip":"203.0.113.77","src_port":40522,"dest_ip":"10.0.1.10","dest_port":80,"proto":"TCP","alert":{"action":"allowed","gid":1,"signature_id":2013028,"rev":7,"signature":"ET POLICY curl User-Agent Outbound","category":"Attempted Information Leak","severity":2}}"#,
    ),
    (
        SourceKind::Ossec,
        r#"{"timestamp":"2026-11-23T09:14:02.118+0000","rule":{"level":10,"description":"sshd: brute force","id":"5712","groups":["syslog","sshd"]},"agent":{"id":"000","name":"vm-prod"},"data":{"srcip":"203.0.113.77","srcuser":"oracle"},"location":"/var/log/auth.log"}"#,
    ),
];

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    println!("{n} lines per parser; microseconds per line\n");
    println!(
        "| parser | parse, encode → records | push (write) | flush | read for the wire | ack |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (kind, line) in LINES {
        let dir = tempfile::tempdir()?;
        let buffer = Buffer::open(dir.path(), 4 << 30)?;
        let mut parser = Parser::for_kind(kind);
        let per_line = |(t, cpu): (Instant, f64)| {
            let us = |s: f64| s * 1e6 / n as f64;
            format!(
                "{:.2} ({:.2})",
                us(t.elapsed().as_secs_f64()),
                us(cpu_s() - cpu)
            )
        };
        let now = || (Instant::now(), cpu_s());

        let t = now();
        let batches: Vec<_> = (0..n / BATCH_LINES)
            .map(|_| {
                let lines: Vec<Line> = (0..BATCH_LINES)
                    .map(|_| Line {
                        text: line.to_string(),
                        truncated: false,
                        invalid_utf8: false,
                    })
                    .collect();
                records(kind.as_str(), "/var/log/x", &mut parser, &lines, 0, false)
            })
            .collect();
        let parse = per_line(t);

        let t = now();
        for b in &batches {
            buffer.push_encoded(&[b], &[("/var/log/x", b"position")])?;
        }
        let push = per_line(t);
        drop(batches);

        let t = now();
        buffer.flush()?;
        let flush = per_line(t);

        let t = now();
        let (mut cursor, mut acks) = (0, Vec::new());
        loop {
            // What the uplink asks for at a time.
            let b = buffer.after(cursor, 8192, 2 << 20)?;
            if b.count == 0 {
                break;
            }
            cursor = b.last_seq;
            acks.push(cursor);
        }
        let read = per_line(t);

        let t = now();
        for seq in acks {
            buffer.ack(seq)?;
        }
        let ack = per_line(t);
        println!(
            "| {}{} | {parse} | {push} | {flush} | {read} | {ack} |",
            kind.as_str(),
            if line.contains("sshd[") || kind != SourceKind::Sshd {
                ""
            } else {
                " (not sshd's)"
            }
        );
    }
    Ok(())
}

/// This thread's CPU time, in seconds.
fn cpu_s() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}
