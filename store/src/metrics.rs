//! Host metrics on disk: raw samples, one-minute rollups, and each agent's
//! acknowledged sequence number, which is written in the same transaction
//! as the samples it covers.
//!
//! Keys are `host \0 time_ms(u64 BE)`, so one host's points are one ordered
//! range and retention is a range delete.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::backend::Op;
use super::{Store, StoreError, decode, encode};

const ACKED: &str = "acked";
const RAW: &str = "metrics_raw";
const ROLLUP: &str = "metrics_1m";
const ROLLED: &str = "metrics_rolled";

pub const MINUTE_MS: i64 = 60_000;

/// One gauge value of a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "l", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "v")]
    pub value: f64,
}

/// A host's sample: every gauge at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub time_ms: i64,
    pub points: Vec<Point>,
}

/// min/max/avg of one series over one minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "l", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
}

impl Rollup {
    pub fn avg(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

fn key(host: &str, t: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 9);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&(t.max(0) as u64).to_be_bytes());
    k
}

fn prefix(host: &str) -> Vec<u8> {
    let mut k = host.as_bytes().to_vec();
    k.push(0);
    k
}

fn time_of(k: &[u8]) -> i64 {
    k.len()
        .checked_sub(8)
        .and_then(|i| k[i..].try_into().ok())
        .map(|b| u64::from_be_bytes(b) as i64)
        .unwrap_or(0)
}

/// Samples rolled into minutes: min/max/sum/count per series, by minute.
pub fn roll(samples: impl IntoIterator<Item = Sample>) -> BTreeMap<i64, Vec<Rollup>> {
    let mut minutes: BTreeMap<i64, BTreeMap<String, Rollup>> = BTreeMap::new();
    for s in samples {
        let minute = s.time_ms - s.time_ms.rem_euclid(MINUTE_MS);
        let series = minutes.entry(minute).or_default();
        for p in s.points {
            let id = format!("{}{:?}", p.name, p.labels);
            let r = series.entry(id).or_insert_with(|| Rollup {
                name: p.name.clone(),
                labels: p.labels.clone(),
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                sum: 0.0,
                count: 0,
            });
            r.min = r.min.min(p.value);
            r.max = r.max.max(p.value);
            r.sum += p.value;
            r.count += 1;
        }
    }
    minutes
        .into_iter()
        .map(|(m, series)| (m, series.into_values().collect()))
        .collect()
}

/// A sample's points (or a minute's rollups) as stored: JSON.
pub fn encode_values<T: Serialize>(v: &T) -> Vec<u8> {
    encode(v)
}

/// What [`encode_values`] wrote; `what` names it in errors.
pub fn decode_values<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode(what, bytes)
}

/// The writes that store `samples` of `host`.
pub(crate) fn sample_ops(host: &str, samples: &[Sample], ops: &mut Vec<Op>) {
    ops.extend(samples.iter().map(|s| Op {
        tree: RAW,
        key: key(host, s.time_ms),
        value: Some(encode(&s.points)),
    }));
}

/// `ops` plus the write that moves `host`'s acked sequence number.
pub(crate) fn acked_op(host: &str, acked: u64, mut ops: Vec<Op>) -> Vec<Op> {
    ops.push(Op {
        tree: ACKED,
        key: host.as_bytes().to_vec(),
        value: Some(acked.to_be_bytes().to_vec()),
    });
    ops
}

/// The write that forgets `host`'s acked sequence number (a forgotten
/// agent that enrolls again counts from 1).
pub(crate) fn forget_acked_op(host: &str) -> Op {
    Op {
        tree: ACKED,
        key: host.as_bytes().to_vec(),
        value: None,
    }
}

fn u64_be(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

impl Store {
    /// The highest record sequence number stored for `agent`.
    pub fn acked_seq(&self, agent: &str) -> Result<u64, StoreError> {
        Ok(u64_be(self.kv.get(ACKED, agent.as_bytes())?))
    }

    /// Values of `host` in `tree` with `from <= time < to`, oldest first;
    /// the scan starts at `from` rather than at the host's first entry.
    fn host_range<T: serde::de::DeserializeOwned>(
        &self,
        tree: &'static str,
        host: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, T)>, StoreError> {
        let p = prefix(host);
        let mut out = Vec::new();
        for kv in self.kv.scan_from(tree, &key(host, from))? {
            let (k, v) = kv?;
            let t = time_of(&k);
            if !k.starts_with(&p) || t >= to {
                break;
            }
            out.push((t, decode(tree, &v)?));
        }
        Ok(out)
    }

    /// Raw samples of `host` with `from <= time < to`, oldest first.
    pub fn samples(&self, host: &str, from: i64, to: i64) -> Result<Vec<Sample>, StoreError> {
        Ok(self
            .host_range(RAW, host, from, to)?
            .into_iter()
            .map(|(time_ms, points)| Sample { time_ms, points })
            .collect())
    }

    /// The newest raw sample of `host`.
    pub fn latest_sample(&self, host: &str) -> Result<Option<Sample>, StoreError> {
        let mut last = None;
        for kv in self.kv.scan(RAW, &prefix(host))? {
            last = Some(kv?);
        }
        last.map(|(k, v)| {
            Ok(Sample {
                time_ms: time_of(&k),
                points: decode(RAW, &v)?,
            })
        })
        .transpose()
    }

    /// One-minute rollups of `host` with `from <= minute < to`.
    pub fn rollups(
        &self,
        host: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Vec<Rollup>)>, StoreError> {
        self.host_range(ROLLUP, host, from, to)
    }

    /// Rolls every whole minute of `host` before `until` that is not rolled
    /// up yet into min/max/avg per series. Returns minutes written.
    pub fn roll_up(&self, host: &str, until: i64) -> Result<usize, StoreError> {
        let until = until - until.rem_euclid(MINUTE_MS);
        let done = u64_be(self.kv.get(ROLLED, host.as_bytes())?) as i64;
        if done >= until {
            return Ok(0);
        }
        let minutes = roll(self.samples(host, done, until)?);
        let n = minutes.len();
        let mut ops: Vec<Op> = minutes
            .into_iter()
            .map(|(m, series)| Op {
                tree: ROLLUP,
                key: key(host, m),
                value: Some(encode(&series)),
            })
            .collect();
        ops.push(Op {
            tree: ROLLED,
            key: host.as_bytes().to_vec(),
            value: Some((until as u64).to_be_bytes().to_vec()),
        });
        self.kv.apply(&ops)?;
        Ok(n)
    }

    /// Deletes raw samples older than `raw_before` and rollups older than
    /// `rollup_before`. Returns how many records went.
    pub fn expire_metrics(
        &self,
        host: &str,
        raw_before: i64,
        rollup_before: i64,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for (tree, before) in [(RAW, raw_before), (ROLLUP, rollup_before)] {
            let old: Vec<Vec<u8>> = self
                .kv
                .scan(tree, &prefix(host))?
                .map(|kv| kv.map(|(k, _)| k))
                .take_while(|k| k.as_ref().map_or(true, |k| time_of(k) < before))
                .collect::<Result<_, _>>()?;
            n += old.len();
            for chunk in old.chunks(1000) {
                let ops: Vec<Op> = chunk
                    .iter()
                    .map(|k| Op {
                        tree,
                        key: k.clone(),
                        value: None,
                    })
                    .collect();
                self.kv.apply(&ops)?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Records;

    fn sample(t: i64, cpu: f64) -> Sample {
        Sample {
            time_ms: t,
            points: vec![Point {
                name: "cpu_usage_percent".into(),
                labels: BTreeMap::new(),
                value: cpu,
            }],
        }
    }

    #[test]
    fn samples_and_ack_commit_together_and_roll_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
        s.put_records(
            "h",
            &Records {
                samples: vec![
                    sample(1_000, 10.0),
                    sample(31_000, 30.0),
                    sample(61_000, 50.0),
                ],
                ..Default::default()
            },
            3,
        )
        .unwrap();
        s.put_records(
            "other",
            &Records {
                samples: vec![sample(1_000, 99.0)],
                ..Default::default()
            },
            1,
        )
        .unwrap();
        assert_eq!(s.acked_seq("h").unwrap(), 3);
        assert_eq!(s.acked_seq("nobody").unwrap(), 0);
        assert_eq!(s.samples("h", 0, i64::MAX).unwrap().len(), 3);
        assert_eq!(s.samples("h", 30_000, 61_000).unwrap().len(), 1);
        assert_eq!(s.latest_sample("h").unwrap().unwrap().time_ms, 61_000);

        // Only whole minutes before `until` roll up, once.
        assert_eq!(s.roll_up("h", 90_000).unwrap(), 1);
        assert_eq!(s.roll_up("h", 90_000).unwrap(), 0);
        let r = s.rollups("h", 0, i64::MAX).unwrap();
        assert_eq!(r.len(), 1);
        let cpu = &r[0].1[0];
        assert_eq!(
            (cpu.min, cpu.max, cpu.avg(), cpu.count),
            (10.0, 30.0, 20.0, 2)
        );
        assert_eq!(s.roll_up("h", 120_000).unwrap(), 1);

        // Retention: raw before 60 s goes, rollups stay.
        assert_eq!(s.expire_metrics("h", 60_000, 0).unwrap(), 2);
        assert_eq!(s.samples("h", 0, i64::MAX).unwrap().len(), 1);
        assert_eq!(s.rollups("h", 0, i64::MAX).unwrap().len(), 2);
        assert_eq!(
            s.samples("other", 0, i64::MAX).unwrap().len(),
            1,
            "other hosts untouched"
        );
    }
}
