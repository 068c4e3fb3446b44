//! Reads, as the embedded store's ([`picket_store::records::Read`]): from
//! a time on, newest first, or from an id on; of one host or all; blocks
//! whose bytes hold none of a `--grep`'s literals are not decoded.
//!
//! Blocks come in pages by keyset (the last row's index key is where the
//! next page starts), so a read holds two pages and the blocks the merge
//! needs, never the range. Pages grow from [`FIRST_PAGE`] rows to
//! [`PAGE`] (a `--tail 10` reads a few blocks, a scan few queries), and
//! the next page is asked for as soon as one arrives, so the database
//! answers while the blocks before it are unpacked and decoded.
//! - From `since`: by `(earliest, first_id)` from `since - SPAN_MS` (a
//!   block spans at most that), those ending at or after `since`, merged
//!   by [`forward`].
//! - Newest first: by `(latest, first_id)` descending, merged by
//!   [`newest_first`].
//! - From an id on: by highest id, block after block (the order records
//!   were stored), records at or below the id left out.

use std::collections::VecDeque;

use picket_store::StoreError;
use picket_store::records::{
    EventRecord, Kind, LogRecord, Needles, Pending, Read, SPAN_MS, Start, Timed, decode_entries,
    forward, newest_first,
};
use tokio_postgres::types::ToSql;

use crate::ingest::{EVENTS, LOGS};
use crate::{PgError, PgRecords};
use picket_store::blocking::Started;

/// Blocks fetched by a read's first query, and at most by one query.
const FIRST_PAGE: i64 = 16;
const PAGE: i64 = 256;

type Records<'a, T> = Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>;

fn kind_of(k: Kind) -> (i16, &'static str) {
    match k {
        Kind::Events => (EVENTS, "events"),
        Kind::Logs => (LOGS, "logs"),
    }
}

impl PgRecords {
    /// Events as `r` asks, streamed from the database.
    pub fn events<'a>(&'a self, r: Read<'a>) -> Result<Records<'a, EventRecord>, StoreError> {
        Ok(self.read(Kind::Events, r))
    }

    /// Log lines as `r` asks, streamed from the database.
    pub fn logs<'a>(&'a self, r: Read<'a>) -> Result<Records<'a, LogRecord>, StoreError> {
        Ok(self.read(Kind::Logs, r))
    }

    fn read<'a, T: Timed + 'a>(&'a self, kind: Kind, r: Read<'a>) -> Records<'a, T> {
        let (kind, table) = kind_of(kind);
        let walk = match r.start {
            Start::Since(since) => Walk::Since {
                since,
                from: (since.saturating_sub(SPAN_MS), i64::MIN),
            },
            Start::Newest => Walk::Newest {
                before: (i64::MAX, i64::MAX),
            },
            Start::After(after) => Walk::After {
                from: after.min(i64::MAX as u64) as i64,
            },
        };
        let pages = Pages {
            pg: self,
            kind,
            host: r.host.map(str::to_string),
            walk,
            rows: VecDeque::new(),
            page: FIRST_PAGE,
            next: None,
            done: false,
        };
        let needles = r.needles;
        let blocks = pages.map(move |row| {
            row.map(|row| Block {
                table,
                row,
                needles,
            })
        });
        match r.start {
            Start::Since(since) => Box::new(forward(blocks, since)),
            Start::Newest => Box::new(newest_first(blocks)),
            Start::After(after) => Box::new(
                blocks
                    .flat_map(|b| match b.and_then(Pending::<T>::load) {
                        Ok(recs) => recs.into_iter().map(Ok).collect::<Vec<_>>(),
                        Err(e) => vec![Err(e)],
                    })
                    .filter(move |r| r.as_ref().map_or(true, |r| r.id() > after)),
            ),
        }
    }

    /// The highest id retention has deleted of `kind` (0: none).
    pub fn expired_through(&self, kind: Kind) -> Result<u64, StoreError> {
        let (kind, _) = kind_of(kind);
        self.with(move |c| async move {
            let row = c
                .query_opt(
                    "SELECT through FROM picket_expired WHERE kind = $1",
                    &[&kind],
                )
                .await?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
    }

    /// Deletes the blocks of `kind` received before `before_ms`, and
    /// raises the watermark to the highest id among them, in one
    /// transaction. Returns how many blocks went.
    pub fn expire(&self, kind: Kind, before_ms: i64) -> Result<u64, StoreError> {
        let (kind, _) = kind_of(kind);
        self.with(move |mut c| async move {
            let tx = c.transaction().await?;
            let row = tx
                .query_one(
                    "WITH gone AS (DELETE FROM picket_blocks WHERE kind = $1 AND received_ms < $2 \
                     RETURNING max_id) SELECT count(*), coalesce(max(max_id), 0) FROM gone",
                    &[&kind, &before_ms],
                )
                .await?;
            let (n, through): (i64, i64) = (row.get(0), row.get(1));
            if n > 0 {
                tx.execute(
                    "INSERT INTO picket_expired (kind, through) VALUES ($1, $2) \
                     ON CONFLICT (kind) DO UPDATE SET through = \
                     greatest(picket_expired.through, excluded.through)",
                    &[&kind, &through],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(n as u64)
        })
    }
}

/// Which blocks a read walks, and where its next page starts.
enum Walk {
    /// `(earliest, first_id)` above `from`, ending at or after `since`.
    Since { since: i64, from: (i64, i64) },
    /// `(latest, first_id)` below `before`, descending.
    Newest { before: (i64, i64) },
    /// Highest id above `from`.
    After { from: i64 },
}

/// A block's row.
struct Row {
    /// Its earliest record's time (walking forward), else its latest's.
    time: i64,
    host: String,
    packed: Vec<u8>,
}

/// A page of block rows, each with its index key (where the next page
/// starts after the last).
type Page = Vec<(Row, (i64, i64))>;

/// The blocks of a read, a page at a time.
struct Pages<'a> {
    pg: &'a PgRecords,
    kind: i16,
    host: Option<String>,
    walk: Walk,
    rows: VecDeque<Row>,
    /// The size of the next page asked for.
    page: i64,
    /// The next page, asked for already.
    next: Option<Started<Result<Page, PgError>>>,
    done: bool,
}

impl Pages<'_> {
    /// The next page's query: its text, its parameters.
    fn query(&self) -> (String, Vec<Box<dyn ToSql + Send + Sync>>) {
        let mut params: Vec<Box<dyn ToSql + Send + Sync>> = vec![Box::new(self.kind)];
        let (cols, cond, order) = match self.walk {
            Walk::Since { since, from } => {
                params.extend([
                    Box::new(from.0) as Box<dyn ToSql + Send + Sync>,
                    Box::new(from.1),
                    Box::new(since),
                ]);
                (
                    "earliest, first_id",
                    "(earliest, first_id) > ($2, $3) AND latest >= $4",
                    "earliest, first_id",
                )
            }
            Walk::Newest { before } => {
                params.extend([
                    Box::new(before.0) as Box<dyn ToSql + Send + Sync>,
                    Box::new(before.1),
                ]);
                (
                    "latest, first_id",
                    "(latest, first_id) < ($2, $3)",
                    "latest DESC, first_id DESC",
                )
            }
            Walk::After { from } => {
                params.push(Box::new(from));
                ("max_id, max_id", "max_id > $2", "max_id")
            }
        };
        let mut sql =
            format!("SELECT {cols}, host, packed FROM picket_blocks WHERE kind = $1 AND {cond}");
        if let Some(host) = &self.host {
            params.push(Box::new(host.clone()));
            sql.push_str(&format!(" AND host = ${}", params.len()));
        }
        sql.push_str(&format!(" ORDER BY {order} LIMIT {}", self.page));
        (sql, params)
    }

    /// Asks for the page after the last row asked for.
    fn ask(&mut self) -> Result<(), StoreError> {
        let (sql, params) = self.query();
        self.next = Some(self.pg.start(move |c| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = c.query(&sql, &refs).await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let key: (i64, i64) = (r.get(0), r.get(1));
                    let row = Row {
                        time: key.0,
                        host: r.get(2),
                        packed: r.get(3),
                    };
                    (row, key)
                })
                .collect())
        })?);
        Ok(())
    }

    /// Takes the page asked for (asking for it first if it was not), and
    /// asks for the one after it.
    fn fetch(&mut self) -> Result<(), StoreError> {
        if self.next.is_none() {
            self.ask()?;
        }
        let Some(next) = self.next.take() else {
            return Ok(());
        };
        let asked = self.page;
        let rows = self.pg.finish(next)?;
        self.done = (rows.len() as i64) < asked;
        if let Some((_, key)) = rows.last() {
            match &mut self.walk {
                Walk::Since { from, .. } => *from = *key,
                Walk::Newest { before } => *before = *key,
                Walk::After { from } => *from = key.0,
            }
        }
        self.rows.extend(rows.into_iter().map(|(row, _)| row));
        if !self.done {
            self.page = (self.page * 2).min(PAGE);
            self.ask()?;
        }
        Ok(())
    }
}

impl Iterator for Pages<'_> {
    type Item = Result<Row, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rows.is_empty()
            && !self.done
            && let Err(e) = self.fetch()
        {
            self.done = true;
            return Some(Err(e));
        }
        self.rows.pop_front().map(Ok)
    }
}

/// A block row, decoded when the merge gets to it.
struct Block<'a> {
    table: &'static str,
    row: Row,
    needles: Option<&'a Needles>,
}

impl<T: Timed> Pending<T> for Block<'_> {
    fn time(&self) -> i64 {
        self.row.time
    }

    fn load(self) -> Result<Vec<T>, StoreError> {
        let bytes =
            picket_segment::pack::unpack(&self.row.packed).map_err(|e| StoreError::Corrupt {
                tree: self.table,
                detail: e.to_string(),
            })?;
        decode_entries(self.table, &self.row.host, &bytes, self.needles)
    }
}
