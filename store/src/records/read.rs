//! Reads of stored records: from a time on, from an id on, or newest
//! first; of one host or all; skipping what a `--grep` cannot match.
//!
//! From a time on ([`Start::Since`]) the blocks are walked in key order
//! (earliest record time) from `since`, plus the few that started before
//! it and end after (found through [`super::latest`]), and merged by
//! `(time, id)` (`Merge`).
//!
//! Newest first ([`Start::Newest`]) serves `--tail N` and `--limit N`: the
//! blocks are walked by their latest time, descending ([`super::latest`]),
//! and merged by `(time, id)` descending, so a reader that wants the last
//! N records reads the last few blocks, not the table.
//!
//! [`Needles`] are the literals every match of a `--grep` pattern starts
//! with. A block whose bytes hold none of them is not decoded, and within
//! a block neither is a record whose payload holds none (record texts are
//! protobuf strings, stored verbatim): most of a rare pattern's scan is
//! one multi-literal search over the unpacked bytes. A pattern with no
//! such literals (`.*x`, `\w+`) gets no needles and reads everything.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::iter::Peekable;

use aho_corasick::AhoCorasick;
use regex_syntax::hir::literal::Extractor;

use super::super::backend::KvIter;
use super::{
    EVENTS_TABLES, EventRecord, LOGS_TABLES, LogRecord, SPAN_MS, Tables, Timed, host_key, key,
    latest, time_of,
};
use crate::{Store, StoreError};

/// Where a read starts, and which way it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Records with `time >= since`, oldest first.
    Since(i64),
    /// Records with an id above this, in the order they were stored.
    After(u64),
    /// Every record, newest first by `(time, id)`.
    Newest,
}

/// One read of events or log lines.
#[derive(Clone, Copy)]
pub struct Read<'q> {
    pub start: Start,
    /// Only this host's records.
    pub host: Option<&'q str>,
    /// Records whose bytes hold none of these may be left out.
    pub needles: Option<&'q Needles>,
}

impl<'q> Read<'q> {
    pub fn new(start: Start, host: Option<&'q str>) -> Self {
        Read {
            start,
            host,
            needles: None,
        }
    }
}

/// The literals one of which starts every match of a pattern.
#[derive(Debug)]
pub struct Needles(AhoCorasick);

impl Needles {
    /// The needles of a pattern, parsed as `regex::Regex::new` parses it;
    /// `None` when a match may start with anything (or the pattern does not
    /// parse: then nothing is skipped).
    pub fn of(pattern: &str) -> Option<Needles> {
        let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
        let seq = Extractor::new().extract(&hir);
        let lits = seq.literals()?;
        if lits.is_empty() || lits.iter().any(|l| l.as_bytes().is_empty()) {
            return None;
        }
        let bytes: Vec<&[u8]> = lits.iter().map(|l| l.as_bytes()).collect();
        AhoCorasick::new(bytes).ok().map(Needles)
    }

    /// Whether `bytes` hold one of the needles.
    pub fn in_bytes(&self, bytes: &[u8]) -> bool {
        self.0.is_match(bytes)
    }
}

impl Store {
    /// Events as `r` asks, streamed from disk.
    pub fn events<'a>(
        &'a self,
        r: Read<'a>,
    ) -> Result<Box<dyn Iterator<Item = Result<EventRecord, StoreError>> + 'a>, StoreError> {
        self.read(EVENTS_TABLES, r)
    }

    /// Log lines as `r` asks, streamed from disk.
    pub fn logs<'a>(
        &'a self,
        r: Read<'a>,
    ) -> Result<Box<dyn Iterator<Item = Result<LogRecord, StoreError>> + 'a>, StoreError> {
        self.read(LOGS_TABLES, r)
    }

    fn read<'a, T: Timed + 'a>(
        &'a self,
        t: Tables,
        r: Read<'a>,
    ) -> Result<Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>, StoreError> {
        match r.start {
            Start::Since(since) => self.records_since(t, since, r.host, r.needles),
            Start::After(after) => self.records_after(t, after, r.host, r.needles),
            Start::Newest => {
                let (store, needles) = (self, r.needles);
                let blocks = self.latest_first(t, r.host)?.map(move |kv| {
                    // `latest ‖ block key`.
                    kv.map(|(k, _)| Stored {
                        store,
                        table: t.blocks,
                        time: time_of(&k),
                        key: k.get(8..).unwrap_or_default().to_vec(),
                        value: None,
                        needles,
                    })
                });
                Ok(Box::new(newest_first(blocks)))
            }
        }
    }

    /// Blocks by their latest time, newest first (of `host`, if given):
    /// that time, and the block's key.
    fn latest_first<'a>(
        &'a self,
        t: Tables,
        host: Option<&str>,
    ) -> Result<BlockKeys<'a>, StoreError> {
        let host = host.map(|h| h.as_bytes().to_vec());
        let it = self.kv.scan_back(t.latest, None)?;
        Ok(Box::new(it.filter_map(move |kv| match kv {
            Ok((k, v)) if host.as_ref().is_none_or(|h| *h == v) => Some(Ok((k, None))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })))
    }
}

/// A block a merge has not read yet: a time that orders it (its earliest
/// record's for [`forward`], its latest record's for [`newest_first`]),
/// and its records, read when the merge gets to it. The embedded store's
/// blocks and a records database's rows merge alike.
pub trait Pending<T> {
    fn time(&self) -> i64;
    fn load(self) -> Result<Vec<T>, StoreError>;
}

/// A block of this store, by key (and value, when the scan had it).
struct Stored<'a> {
    store: &'a Store,
    table: &'static str,
    time: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    needles: Option<&'a Needles>,
}

impl<T: Timed> Pending<T> for Stored<'_> {
    fn time(&self) -> i64 {
        self.time
    }
    fn load(self) -> Result<Vec<T>, StoreError> {
        self.store
            .block_records(self.table, &self.key, self.value, self.needles)
    }
}

/// Merges blocks given latest first (by their latest time) into one
/// stream, newest `(time, id)` first. A record with time `t` is given out
/// only once the next unread block's latest time is below `t`: every
/// block after it is no later.
pub fn newest_first<T: Timed, P: Pending<T>>(
    blocks: impl Iterator<Item = Result<P, StoreError>>,
) -> impl Iterator<Item = Result<T, StoreError>> {
    Newest {
        blocks: blocks.peekable(),
        heap: BinaryHeap::new(),
    }
}

struct Newest<T, I: Iterator> {
    blocks: Peekable<I>,
    heap: BinaryHeap<Entry<T>>,
}

impl<T: Timed, P: Pending<T>, I: Iterator<Item = Result<P, StoreError>>> Newest<T, I> {
    fn load_next(&mut self) -> Result<(), StoreError> {
        let Some(next) = self.blocks.next() else {
            return Ok(());
        };
        self.heap.extend(next?.load()?.into_iter().map(Entry));
        Ok(())
    }

    /// The latest time a record of the next unread block can have.
    fn next_block_latest(&mut self) -> Option<i64> {
        match self.blocks.peek()? {
            Ok(b) => Some(b.time()),
            // Surface the error through `load_next`.
            Err(_) => Some(i64::MAX),
        }
    }
}

impl<T: Timed, P: Pending<T>, I: Iterator<Item = Result<P, StoreError>>> Iterator for Newest<T, I> {
    type Item = Result<T, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let top = self.heap.peek().map(|e| e.0.time_ms());
            let must_load = match (top, self.next_block_latest()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(t), Some(latest)) => latest >= t,
            };
            if !must_load {
                return self.heap.pop().map(|e| Ok(e.0));
            }
            if let Err(e) = self.load_next() {
                return Some(Err(e));
            }
        }
    }
}

/// A record in the merge heap, ordered by `(time, id)`.
struct Entry<T>(T);

impl<T: Timed> Ord for Entry<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0.time_ms(), self.0.id()).cmp(&(o.0.time_ms(), o.0.id()))
    }
}
impl<T: Timed> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T: Timed> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl<T: Timed> Eq for Entry<T> {}

/// Block keys in key order, with the value when the scan had it.
type BlockKeys<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>), StoreError>> + 'a>;

/// Merges blocks given in order of their earliest time into one stream
/// ordered by `(time, id)`, from `since` on. Before a record with time
/// `t` is given out, every block whose earliest time is at or before `t`
/// has been read, so nothing earlier can still turn up.
pub fn forward<T: Timed, P: Pending<T>>(
    blocks: impl Iterator<Item = Result<P, StoreError>>,
    since: i64,
) -> impl Iterator<Item = Result<T, StoreError>> {
    Merge {
        blocks: blocks.peekable(),
        heap: BinaryHeap::new(),
        since,
    }
}

struct Merge<T, I: Iterator> {
    blocks: Peekable<I>,
    heap: BinaryHeap<Reverse<Entry<T>>>,
    since: i64,
}

impl<T: Timed, P: Pending<T>, I: Iterator<Item = Result<P, StoreError>>> Merge<T, I> {
    fn load_next(&mut self) -> Result<(), StoreError> {
        let Some(next) = self.blocks.next() else {
            return Ok(());
        };
        let since = self.since;
        self.heap.extend(
            next?
                .load()?
                .into_iter()
                .filter(|r| r.time_ms() >= since)
                .map(|r| Reverse(Entry(r))),
        );
        Ok(())
    }

    fn next_block_time(&mut self) -> Option<i64> {
        match self.blocks.peek()? {
            Ok(b) => Some(b.time()),
            // Surface the error through `load_next`.
            Err(_) => Some(i64::MIN),
        }
    }
}

impl<T: Timed, P: Pending<T>, I: Iterator<Item = Result<P, StoreError>>> Iterator for Merge<T, I> {
    type Item = Result<T, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let top = self.heap.peek().map(|Reverse(e)| e.0.time_ms());
            match (top, self.next_block_time()) {
                (None, None) => return None,
                (Some(_), None) => {}
                (None, Some(_)) => {
                    if let Err(e) = self.load_next() {
                        return Some(Err(e));
                    }
                    continue;
                }
                (Some(t), Some(b)) if b <= t => {
                    if let Err(e) = self.load_next() {
                        return Some(Err(e));
                    }
                    continue;
                }
                (Some(_), Some(_)) => {}
            }
            return self.heap.pop().map(|Reverse(e)| Ok(e.0));
        }
    }
}

impl Store {
    /// The keys of the blocks (of `host`, if given) that start before
    /// `since` and end at or after it, in key order: found through the
    /// latest-time index among blocks ending within [`SPAN_MS`] of it, so
    /// that a read from `since` on starts at `since`, not a span before
    /// (in a burst, a second's blocks).
    fn straddling(
        &self,
        t: Tables,
        since: i64,
        host: Option<&str>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        if since <= 0 {
            return Ok(Vec::new());
        }
        let end = since.saturating_add(SPAN_MS);
        let mut keys = Vec::new();
        for kv in self
            .kv
            .scan_from(t.latest, &latest::latest_key(since, &[]))?
        {
            let (k, v) = kv?;
            if time_of(&k) > end {
                break;
            }
            let block = k.get(8..).unwrap_or_default();
            if time_of(block) < since && host.is_none_or(|h| h.as_bytes() == v) {
                keys.push(block.to_vec());
            }
        }
        keys.sort();
        Ok(keys)
    }

    pub(super) fn records_since<'a, T: Timed + 'a>(
        &'a self,
        t: Tables,
        since: i64,
        host: Option<&str>,
        needles: Option<&'a Needles>,
    ) -> Result<Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>, StoreError> {
        let (table, index) = (t.blocks, t.by_host);
        let start = key(since, 0);
        let straddling = self.straddling(t, since, host)?;
        let blocks: BlockKeys<'a> = match host {
            None => Box::new(
                self.kv
                    .scan_from(table, &start)?
                    .map(|kv| kv.map(|(k, v)| (k, Some(v)))),
            ),
            Some(host) => {
                let prefix = host_key(host, &[]);
                let n = prefix.len();
                let it: KvIter<'a> = self.kv.scan_from(index, &host_key(host, &start))?;
                Box::new(
                    it.take_while(move |kv| {
                        kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                    })
                    .map(move |kv| {
                        kv.map(|(k, _)| (k.get(n..).unwrap_or_default().to_vec(), None))
                    }),
                )
            }
        };
        // Every block that starts before `since` sorts before every block
        // that starts at or after it.
        let blocks = straddling.into_iter().map(|k| Ok((k, None))).chain(blocks);
        let blocks = blocks.map(move |kv: Result<_, StoreError>| {
            kv.map(|(key, value)| Stored {
                store: self,
                table,
                time: time_of(&key),
                key,
                value,
                needles,
            })
        });
        Ok(Box::new(forward(blocks, since)))
    }
}
