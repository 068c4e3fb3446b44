//! `control.toml`: the control plane's configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::ConfigError;
use crate::check::Finding;
use serde::Deserialize;

/// The parsed `control.toml`. Unknown keys are errors, so a typo is caught
/// at start rather than silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Holds the PKI files and the store.
    pub data_dir: PathBuf,
    /// The control plane's own host name on the events it raises (a
    /// finished rollout); the machine's host name by default.
    #[serde(default = "default_name")]
    pub name: String,
    /// gRPC over TLS: agents, admin API, health, reflection.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Plain HTTP: /metrics, /healthz, /readyz.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// Lifetime of agent certificates; agents renew at two thirds of it.
    #[serde(default = "default_agent_cert_ttl", with = "picket_model::duration")]
    pub agent_cert_ttl: Duration,
    /// Lifetime of user certificates issued by `picketctl user add`.
    #[serde(default = "default_user_cert_ttl", with = "picket_model::duration")]
    pub user_cert_ttl: Duration,
    /// How often agents send a heartbeat; a session silent for three
    /// intervals is closed and the agent shown offline.
    #[serde(default = "default_heartbeat", with = "picket_model::duration")]
    pub heartbeat_interval: Duration,
    /// How long raw metric samples are kept.
    #[serde(default = "default_raw_retention", with = "picket_model::duration")]
    pub metrics_raw_retention: Duration,
    /// How long one-minute rollups (min/max/avg) are kept.
    #[serde(default = "default_rollup_retention", with = "picket_model::duration")]
    pub metrics_rollup_retention: Duration,
    /// How long events are kept.
    #[serde(default = "default_events_retention", with = "picket_model::duration")]
    pub events_retention: Duration,
    /// How long raw log lines are kept.
    #[serde(default = "default_logs_retention", with = "picket_model::duration")]
    pub logs_retention: Duration,
    /// How long audit records are kept.
    #[serde(default = "default_audit_retention", with = "picket_model::duration")]
    pub audit_retention: Duration,
    /// Free space (percent of the data folder's file system) under which
    /// new records are refused, before the disk is full; 0: no floor.
    #[serde(default = "default_min_free_percent")]
    pub min_free_percent: f64,
    /// The alert file (SPEC §10), relative to control.toml; none: no
    /// alert rules.
    #[serde(default)]
    pub alerts: Option<PathBuf>,
    /// What one peer may hold of the gRPC port.
    #[serde(default)]
    pub limits: Limits,
    /// Cluster mode (SPEC §12): absent, this control plane is alone.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this replica, and the etcd it shares state through.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This replica's name, unique in the cluster.
    pub node: String,
    /// How agents and peers reach this replica, `HOST:PORT`.
    pub advertise: String,
    /// The etcd members, `http://HOST:PORT` each.
    pub etcd: Vec<String>,
    /// TLS to etcd (then every member is `https://`): the CA that signed
    /// its certificates, and a client certificate and key when etcd checks
    /// them (`--client-cert-auth`). Relative to control.toml.
    #[serde(default)]
    pub etcd_ca: Option<PathBuf>,
    #[serde(default)]
    pub etcd_cert: Option<PathBuf>,
    #[serde(default)]
    pub etcd_key: Option<PathBuf>,
    /// The records' PostgreSQL (SPEC §12, part 2).
    #[serde(default)]
    pub postgres: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl ClusterConfig {
    /// `[cluster]` as `init` and `join` write it into control.toml.
    pub fn toml(&self) -> String {
        let etcd: Vec<String> = self.etcd.iter().map(|e| format!("{e:?}")).collect();
        let mut s = format!(
            "\n# Cluster mode (docs/cluster.md): this replica, and the etcd it\n\
             # shares state and leadership through.\n[cluster]\nnode = {:?}\n\
             advertise = {:?}\netcd = [{}]\n",
            self.node,
            self.advertise,
            etcd.join(", ")
        );
        for (k, v) in [
            ("etcd_ca", &self.etcd_ca),
            ("etcd_cert", &self.etcd_cert),
            ("etcd_key", &self.etcd_key),
        ] {
            if let Some(p) = v {
                s.push_str(&format!("{k} = {:?}\n", p.display().to_string()));
            }
        }
        if let Some(url) = &self.postgres {
            s.push_str(&format!("postgres = {url:?}\n"));
        }
        if let Some(p) = &self.password_file {
            s.push_str(&format!("password_file = {:?}\n", p.display().to_string()));
        }
        s
    }

    fn problems(&self, bad: &mut impl FnMut(&str, &str)) {
        if let Err(e) = picket_model::validate_name(&self.node) {
            bad("cluster.node", &e.to_string());
        }
        if let Err(e) = crate::Servers::parse(&self.advertise) {
            bad("cluster.advertise", &e);
        } else if self.advertise.contains(',') {
            bad("cluster.advertise", "one address, HOST:PORT");
        }
        if self.etcd.is_empty() {
            bad("cluster.etcd", "at least one etcd member, http://HOST:PORT");
        }
        // TLS to etcd with etcd_ca: https:// everywhere; without, http://.
        let (scheme, form) = match self.etcd_ca {
            Some(_) => ("https://", "https://HOST:PORT (etcd_ca is set)"),
            None => ("http://", "http://HOST:PORT (or https:// with etcd_ca)"),
        };
        for e in &self.etcd {
            let host = e.strip_prefix(scheme);
            if host.is_none_or(|h| crate::Servers::parse(h).is_err()) {
                bad("cluster.etcd", &format!("{e:?} is not {form}"));
            }
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            bad("cluster.etcd_cert", "etcd_cert and etcd_key go together");
        }
        if self.etcd_cert.is_some() && self.etcd_ca.is_none() {
            bad(
                "cluster.etcd_ca",
                "a client certificate needs TLS: set etcd_ca too",
            );
        }
        match &self.postgres {
            Some(url)
                if !["postgresql://", "postgres://"]
                    .iter()
                    .any(|p| url.starts_with(p)) =>
            {
                bad(
                    "cluster.postgres",
                    &format!("{url:?} is not postgresql://USER@HOST[:PORT]/DATABASE"),
                );
            }
            None if self.password_file.is_some() => {
                bad(
                    "cluster.password_file",
                    "a password for postgres: set postgres too",
                );
            }
            _ => {}
        }
    }
}

/// `[limits]`: bounds on what a peer can hold of the gRPC port before and
/// after it proves who it is.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A connection that has not finished its TLS handshake by then is
    /// closed.
    #[serde(with = "picket_model::duration")]
    pub handshake_timeout: Duration,
    /// Connections that have not presented a client certificate (still in
    /// the handshake, or enrolling): the most at once, in all and per
    /// source address. Connections over either are closed at accept.
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_address: usize,
    /// A connection without a client certificate (it can only enroll) is
    /// closed this long after its handshake.
    #[serde(with = "picket_model::duration")]
    pub unauthenticated_lifetime: Duration,
    /// Enrollment attempts per source address per minute (a burst of as
    /// many is allowed).
    pub enroll_per_minute: u32,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// The server pings an idle connection this often, and closes it when
    /// a ping is not answered within `keepalive_timeout`.
    #[serde(with = "picket_model::duration")]
    pub keepalive_interval: Duration,
    #[serde(with = "picket_model::duration")]
    pub keepalive_timeout: Duration,
    /// A call must have its answer (a unary reply, or the start of a
    /// stream) within this.
    #[serde(with = "picket_model::duration")]
    pub request_timeout: Duration,
    /// Bytes of live records that may wait for one `logs -f`/`events -f`
    /// follower; one that falls further behind reads what it missed from
    /// the store instead, then goes on live (nothing is lost or repeated).
    pub follower_queue_bytes: usize,
    /// The most labels an agent may report on connect (more: refused).
    pub reported_labels: usize,
    /// The most of a step's output the control plane keeps (the newest).
    pub step_output_bytes: usize,
    /// A metric sample dated further ahead than this is stored at its
    /// receive time.
    #[serde(with = "picket_model::duration")]
    pub sample_ahead: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_unauthenticated: 256,
            max_unauthenticated_per_address: 16,
            unauthenticated_lifetime: Duration::from_secs(30),
            enroll_per_minute: 10,
            max_concurrent_streams: 64,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            follower_queue_bytes: 16 * 1024 * 1024,
            reported_labels: 64,
            step_output_bytes: 64 * 1024,
            sample_ahead: Duration::from_secs(300),
        }
    }
}

fn default_events_retention() -> Duration {
    Duration::from_secs(30 * 86400)
}
fn default_audit_retention() -> Duration {
    Duration::from_secs(400 * 86400)
}
fn default_logs_retention() -> Duration {
    Duration::from_secs(7 * 86400)
}

fn default_min_free_percent() -> f64 {
    1.0
}

fn default_raw_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_rollup_retention() -> Duration {
    Duration::from_secs(30 * 86400)
}

/// This machine's host name, else `picket-control`.
pub fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "picket-control".to_string())
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_agent_cert_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_user_cert_ttl() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}

impl ControlConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&crate::read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: ControlConfig = crate::from_toml(text, path)?;
        let cfg = cfg.resolved(path);
        crate::check::all_problems(path, cfg.problems())?;
        Ok(cfg)
    }

    /// Every finding in `text` (the file `path`, named `file` in them),
    /// with the config when it reads: what `picket-control check` prints.
    pub fn check(file: &str, text: &str, path: &Path) -> (Option<Self>, Vec<Finding>) {
        crate::check::config(
            file,
            text,
            |c: Self| c.resolved(path),
            ControlConfig::problems,
        )
    }

    /// Relative paths made relative to the file, as a user editing it
    /// would expect.
    fn resolved(mut self, path: &Path) -> Self {
        if self.data_dir.is_relative()
            && let Some(parent) = path.parent()
        {
            self.data_dir = parent.join(&self.data_dir);
        }
        if let (Some(a), Some(parent)) = (&self.alerts, path.parent())
            && a.is_relative()
        {
            self.alerts = Some(parent.join(a));
        }
        if let (Some(c), Some(parent)) = (self.cluster.as_mut(), path.parent()) {
            for f in [
                &mut c.etcd_ca,
                &mut c.etcd_cert,
                &mut c.etcd_key,
                &mut c.password_file,
            ]
            .into_iter()
            .flatten()
            {
                if f.is_relative() {
                    *f = parent.join(&*f);
                }
            }
        }
        self
    }

    /// What is wrong with the values, each with its field.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |field: &str, msg: &str| p.push((field.to_string(), msg.to_string()));
        if self.agent_cert_ttl < Duration::from_secs(10) {
            bad("agent_cert_ttl", "must be at least 10s");
        }
        if let Some(c) = &self.cluster {
            c.problems(&mut bad);
        }
        let l = &self.limits;
        let one = "must be at least 1";
        if l.max_unauthenticated == 0 {
            bad(
                "limits.max_unauthenticated",
                "must be at least 1 (enrollment needs a connection without a certificate)",
            );
        }
        if l.max_unauthenticated_per_address == 0 {
            bad(
                "limits.max_unauthenticated_per_address",
                "must be at least 1 (enrollment needs a connection without a certificate)",
            );
        }
        if l.enroll_per_minute == 0 {
            bad("limits.enroll_per_minute", one);
        }
        if l.max_concurrent_streams == 0 {
            bad("limits.max_concurrent_streams", one);
        }
        for (name, d) in [
            ("handshake_timeout", l.handshake_timeout),
            ("unauthenticated_lifetime", l.unauthenticated_lifetime),
            ("keepalive_interval", l.keepalive_interval),
            ("keepalive_timeout", l.keepalive_timeout),
            ("request_timeout", l.request_timeout),
        ] {
            if d < Duration::from_millis(100) {
                bad(&format!("limits.{name}"), "must be at least 100ms");
            }
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            bad("heartbeat_interval", "must be at least 100ms");
        }
        if !(0.0..=50.0).contains(&self.min_free_percent) {
            bad("min_free_percent", "must be from 0 to 50");
        }
        if l.step_output_bytes < 1024 {
            bad("limits.step_output_bytes", "must be at least 1024");
        }
        if l.follower_queue_bytes < 4096 {
            bad("limits.follower_queue_bytes", "must be at least 4096");
        }
        p
    }

    /// The complete, commented file that `picket-control init` writes.
    pub fn template(data_dir: &Path) -> String {
        format!(
            r#"# Picket control plane configuration (written by `picket-control init`).
# Every key is shown with its default. Durations: "30s", "10m", "24h", "90d".

# Holds ca.crt/ca.key, server.crt/server.key and the store (sled).
data_dir = "{data_dir}"

# The alert file: rules, notifiers and routes (docs/alerting.md), relative
# to this file. Read at start, on SIGHUP and on `picketctl alerts reload`.
# alerts = "alerts.toml"

# The host name on events the control plane raises itself (a finished
# rollout, source "picket"). Default: this machine's host name.
# name = "picket-control"

# gRPC over TLS (agents, admin API, grpc.health.v1, reflection).
listen = "127.0.0.1:7443"

# Plain HTTP: /metrics (Prometheus), /healthz, /readyz.
http_listen = "127.0.0.1:9464"

# Agent certificates are short-lived; agents renew them at two thirds of this.
agent_cert_ttl = "24h"

# Lifetime of user certificates issued by `picketctl user add`.
user_cert_ttl = "90d"

# Agents send a heartbeat this often; three missed ones mark a host offline.
heartbeat_interval = "5s"

# Raw host metric samples are kept this long; one-minute rollups
# (min/max/avg per series) for longer. Enforced in the background.
metrics_raw_retention = "24h"
metrics_rollup_retention = "30d"

# Events and raw log lines are kept this long.
events_retention = "30d"
logs_retention = "7d"

# Audit records (who changed what) are kept this long.
audit_retention = "400d"

# Under this much free space (percent of the data folder's file system) new
# records are refused, before the disk is full: agents keep them and send
# them once space is freed. 0 turns the floor off.
min_free_percent = 1.0

# What one peer may hold of the gRPC port.
[limits]
# A connection that has not finished TLS by then is closed.
handshake_timeout = "10s"
# Connections without a client certificate (in the handshake, or
# enrolling): at most this many at once, and this many per source address.
# Connections over either are closed at accept and counted on /metrics.
max_unauthenticated = 256
max_unauthenticated_per_address = 16
# A connection without a client certificate can only enroll; it is closed
# this long after its handshake.
unauthenticated_lifetime = "30s"
# Enrollment attempts per source address per minute.
enroll_per_minute = 10
# HTTP/2 streams open at once on one connection.
max_concurrent_streams = 64
# Idle connections are pinged this often; one that does not answer within
# keepalive_timeout is closed.
keepalive_interval = "30s"
keepalive_timeout = "10s"
# A call must be answered (a reply, or the start of a stream) within this.
request_timeout = "60s"
# What one agent may make the control plane keep: labels it reports on
# connect (more: refused), the newest bytes of a step's output, and how far
# ahead a metric sample may be dated (later ones are stored at their
# receive time). Each cut is counted on /metrics.
reported_labels = 64
step_output_bytes = 65536
sample_ahead = "5m"
"#,
            data_dir = data_dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_to_defaults() {
        let p = Path::new("/etc/picket/control.toml");
        let cfg = ControlConfig::parse(&ControlConfig::template(Path::new("/var/lib/picket")), p)
            .unwrap();
        assert_eq!(cfg.listen, default_listen());
        assert_eq!(cfg.http_listen, default_http_listen());
        assert_eq!(cfg.agent_cert_ttl, Duration::from_secs(86400));
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/picket"));
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(cfg.events_retention, default_events_retention());
    }

    #[test]
    fn limits_are_checked() {
        let p = Path::new("/x/control.toml");
        let e = ControlConfig::parse("data_dir = \"d\"\n[limits]\nmax_unauthenticated = 0\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_unauthenticated"), "{e}");
        let e = ControlConfig::parse(
            "data_dir = \"d\"\n[limits]\nhandshake_timeout = \"1ms\"\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.handshake_timeout"), "{e}");
        let e = ControlConfig::parse("data_dir = \"d\"\n[limits]\nhandshake = \"1s\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("handshake"), "{e}");
    }

    #[test]
    fn errors_name_file_and_field() {
        let p = Path::new("/x/control.toml");
        let e = ControlConfig::parse("data_dir = \"d\"\nlisten = 5\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/x/control.toml") && e.contains("listen"), "{e}");
        let e = ControlConfig::parse("data_dir = \"d\"\nlisen = \"x\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = ControlConfig::parse("listen = \"127.0.0.1:1\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_dir"), "{e}");
        let cfg = ControlConfig::parse("data_dir = \"d\"\n", p).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/x/d"));
    }

    #[test]
    fn the_cluster_section_as_spec_12_writes_it() {
        let p = Path::new("/x/control.toml");
        let good = "data_dir = \"d\"\n[cluster]\nnode = \"cp-1\"\nadvertise = \"10.0.1.50:7443\"\n\
                    etcd = [\"http://10.0.1.50:2379\", \"http://10.0.1.51:2379\"]\n";
        let c = ControlConfig::parse(good, p).unwrap().cluster.unwrap();
        assert_eq!((c.node.as_str(), c.etcd.len()), ("cp-1", 2));
        assert!(
            ControlConfig::parse("data_dir = \"d\"\n", p)
                .unwrap()
                .cluster
                .is_none()
        );
        for (change, field) in [
            (("cp-1", "a b"), "cluster.node"),
            (("10.0.1.50:7443", "nohost"), "cluster.advertise"),
            (("http://10.0.1.51:2379", "10.0.1.51:2379"), "cluster.etcd"),
            (
                ("http://10.0.1.51:2379", "https://10.0.1.51:2379"),
                "or https:// with etcd_ca",
            ),
        ] {
            let e = ControlConfig::parse(&good.replace(change.0, change.1), p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{change:?}: {e}");
        }
        let tls = good.replace("http://", "https://") + "etcd_ca = \"etcd-ca.crt\"\n";
        let c = ControlConfig::parse(&tls, p).unwrap().cluster.unwrap();
        assert_eq!(c.etcd_ca, Some(PathBuf::from("/x/etcd-ca.crt")));
        let e = ControlConfig::parse(&format!("{tls}etcd_cert = \"c.crt\"\n"), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("etcd_cert and etcd_key go together"), "{e}");
        let pg = format!("{good}postgres = \"postgresql://picket@db/picket\"\n");
        let c = ControlConfig::parse(&format!("{pg}password_file = \"pw\"\n"), p)
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.password_file, Some(PathBuf::from("/x/pw")));
        for (bad, field) in [
            ("postgres = \"db:5432\"\n", "cluster.postgres"),
            ("password_file = \"pw\"\n", "cluster.password_file"),
        ] {
            let e = ControlConfig::parse(&format!("{good}{bad}"), p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
