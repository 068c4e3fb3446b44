//! Host metrics from sysinfo. One `Collector` keeps sysinfo's structures
//! between samples and refreshes only what a sample needs (CPU usage,
//! memory, disks' space, network counters), so a sample costs little.
//! No sending here: samples go to the buffer.

use std::collections::BTreeMap;
use std::time::Instant;

use picket_proto::v1::{Gauge, MetricSample};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, System};

pub struct Collector {
    sys: System,
    disks: Disks,
    networks: Networks,
    /// When the network counters were last read, for per-second rates.
    last_net: Option<Instant>,
}

fn gauge(name: &str, value: f64) -> Gauge {
    Gauge {
        name: name.to_string(),
        labels: BTreeMap::new(),
        value,
    }
}

fn labelled(name: &str, key: &str, val: &str, value: f64) -> Gauge {
    Gauge {
        name: name.to_string(),
        labels: BTreeMap::from([(key.to_string(), val.to_string())]),
        value,
    }
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    pub fn new() -> Self {
        let mut sys = System::new();
        // CPU usage is a difference between two reads: prime the first one.
        sys.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        Collector {
            sys,
            disks: Disks::new_with_refreshed_list_specifics(
                DiskRefreshKind::nothing().with_storage(),
            ),
            networks: Networks::new_with_refreshed_list(),
            last_net: Some(Instant::now()),
        }
    }

    /// One sample of every host metric, stamped `time_unix_ms`.
    pub fn sample(&mut self, time_unix_ms: i64) -> MetricSample {
        let s = &mut self.sys;
        s.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        s.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        let load = System::load_average();
        let mut g = vec![
            gauge("cpu_usage_percent", f64::from(s.global_cpu_usage())),
            gauge("load1", load.one),
            gauge("load5", load.five),
            gauge("load15", load.fifteen),
            gauge("memory_used_bytes", s.used_memory() as f64),
            gauge("memory_total_bytes", s.total_memory() as f64),
            gauge("swap_used_bytes", s.used_swap() as f64),
            gauge("swap_total_bytes", s.total_swap() as f64),
            gauge("uptime_seconds", System::uptime() as f64),
            gauge("processes", count_processes() as f64),
        ];

        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let mut seen = std::collections::HashSet::new();
        for d in self.disks.list() {
            let mount = d.mount_point().to_string_lossy().into_owned();
            if !seen.insert(mount.clone()) {
                continue; // the same mount listed twice (bind mounts)
            }
            let total = d.total_space();
            let used = total.saturating_sub(d.available_space());
            g.push(labelled("disk_used_bytes", "mount", &mount, used as f64));
            g.push(labelled("disk_total_bytes", "mount", &mount, total as f64));
        }

        self.networks.refresh(true);
        let now = Instant::now();
        let secs = self
            .last_net
            .map(|t| now.duration_since(t).as_secs_f64())
            .filter(|s| *s > 0.0);
        self.last_net = Some(now);
        for (name, n) in self.networks.iter() {
            if name == "lo" {
                continue;
            }
            g.push(labelled(
                "network_receive_bytes",
                "interface",
                name,
                n.total_received() as f64,
            ));
            g.push(labelled(
                "network_transmit_bytes",
                "interface",
                name,
                n.total_transmitted() as f64,
            ));
            if let Some(secs) = secs {
                g.push(labelled(
                    "network_receive_bytes_per_second",
                    "interface",
                    name,
                    n.received() as f64 / secs,
                ));
                g.push(labelled(
                    "network_transmit_bytes_per_second",
                    "interface",
                    name,
                    n.transmitted() as f64 / secs,
                ));
            }
        }
        MetricSample {
            time_unix_ms,
            gauges: g,
        }
    }
}

/// Processes, counted as the numeric entries of /proc: a directory read,
/// far cheaper than sysinfo's full process refresh.
fn count_processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_has_every_host_metric_with_sane_values() {
        let mut c = Collector::new();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = c.sample(1);
        let get = |n: &str| s.gauges.iter().find(|g| g.name == n).map(|g| g.value);
        let cpu = get("cpu_usage_percent").unwrap();
        assert!((0.0..=100.0).contains(&cpu), "{cpu}");
        assert!(get("memory_total_bytes").unwrap() > 0.0);
        assert!(get("memory_used_bytes").unwrap() <= get("memory_total_bytes").unwrap());
        assert!(get("uptime_seconds").unwrap() > 0.0);
        assert!(get("processes").unwrap() >= 1.0);
        assert!(get("load1").is_some() && get("load15").is_some());
        assert!(
            s.gauges
                .iter()
                .any(|g| g.name == "disk_total_bytes" && g.labels.contains_key("mount"))
        );
        // Rates appear from the second sample on.
        let s2 = c.sample(2);
        assert!(s2.gauges.iter().all(|g| g.value.is_finite()));
        // Alert rules are checked against this list.
        for g in s.gauges.iter().chain(&s2.gauges) {
            assert!(
                picket_model::HOST_SERIES.contains(&g.name.as_str()),
                "{} is missing from HOST_SERIES",
                g.name
            );
        }
    }
}
