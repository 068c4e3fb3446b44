//! A real etcd cluster for a test: N members of Debian's `etcd-server`
//! on loopback ports of their own, data in the test's folder. Members can
//! be killed and started again, as a test of cluster mode needs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use crate::{Proc, World, free_port, http_get, tool, wait_for};

pub struct EtcdCluster {
    members: Vec<Member>,
}

struct Member {
    name: String,
    client: String,
    args: Vec<String>,
    /// The network namespace it runs in (the namespace fleet), if any.
    netns: Option<String>,
    proc: Option<Proc>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(w: &World, n: usize) -> Result<EtcdCluster> {
        let c = EtcdCluster::start_with(w, n, None)?;
        c.wait_healthy(0)?;
        Ok(c)
    }

    /// `n` members serving clients over TLS only, with client certificates
    /// required (`--client-cert-auth`), from a CA made here: its files in
    /// `etcd-tls/` (`ca.crt`, and `client.crt`/`client.key` for Picket).
    /// Not waited for: the caller's first calls wait.
    pub fn start_tls(w: &World, n: usize) -> Result<EtcdCluster> {
        let dir = w.path("etcd-tls");
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "etcd test CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let write = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(sans)?;
            p.extended_key_usages = vec![usage];
            p.distinguished_name.push(DnType::CommonName, name);
            let cert = p.signed_by(&key, &issuer)?;
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
            anyhow::Ok(())
        };
        write(
            "server",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        write("client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
        std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
        let f = |n: &str| dir.join(n).display().to_string();
        let tls = vec![
            "--cert-file".into(),
            f("server.crt"),
            "--key-file".into(),
            f("server.key"),
            "--trusted-ca-file".into(),
            f("ca.crt"),
            "--client-cert-auth".into(),
        ];
        let c = EtcdCluster::start_with(w, n, Some(tls))?;
        // Ready once a read through the client certificate succeeds (the
        // members have a leader).
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        let tls = picket_cluster::EtcdTls {
            ca_pem: read("ca.crt")?,
            identity: Some((read("client.crt")?, read("client.key")?)),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let etcd =
            rt.block_on(async { picket_cluster::Etcd::connect_with(&c.endpoints(), Some(&tls)) })?;
        wait_for("etcd over TLS answering", Duration::from_secs(60), || {
            rt.block_on(etcd.get("/")).ok().map(drop)
        })
        .with_context(|| c.stderr())?;
        Ok(c)
    }

    fn start_with(w: &World, n: usize, tls: Option<Vec<String>>) -> Result<EtcdCluster> {
        let bin = tool("etcd", "etcd-server")?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let data: PathBuf = w.path(&format!("etcd/{name}"));
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args = vec![
                bin.display().to_string(),
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--advertise-client-urls".into(),
                client_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url,
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                "picket-test".into(),
                "--log-level".into(),
                "warn".into(),
                "--logger".into(),
                "zap".into(),
            ];
            let mut args = args;
            args.extend(tls.iter().flatten().cloned());
            members.push(Member {
                name,
                client: client_url,
                args,
                netns: None,
                proc: None,
            });
        }
        let mut c = EtcdCluster { members };
        for i in 0..n {
            c.start_member(i)?;
        }
        Ok(c)
    }

    /// What the members wrote to stderr, for a failure's message.
    pub fn stderr(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| Some(format!("{}: {}", m.name, m.proc.as_ref()?.stderr())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `http://127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill9();
        }
    }

    /// One member in network namespace `ns` of the namespace fleet, on
    /// `ip` (ports 2379 and 2380), waited for from inside it.
    pub fn start_in_namespace(w: &World, ns: &str, ip: &str) -> Result<EtcdCluster> {
        let bin = tool("etcd", "etcd-server")?;
        let client = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let args = [
            bin.display().to_string(),
            "--name".into(),
            "m0".into(),
            "--data-dir".into(),
            w.path("etcd/m0").display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("m0={peer}"),
            "--log-level".into(),
            "warn".into(),
            "--logger".into(),
            "zap".into(),
        ];
        let mut c = EtcdCluster {
            members: vec![Member {
                name: "m0".into(),
                client: client.clone(),
                args: args.to_vec(),
                netns: Some(ns.to_string()),
                proc: None,
            }],
        };
        c.start_member(0)?;
        let probe = format!(
            "import sys, urllib.request\n\
             sys.exit(0 if b'true' in urllib.request.urlopen('{client}/health', timeout=1).read() else 1)"
        );
        wait_for(
            "etcd healthy in its namespace",
            Duration::from_secs(30),
            || {
                Command::new("ip")
                    .args(["netns", "exec", ns, "python3", "-c", &probe])
                    .output()
                    .ok()?
                    .status
                    .success()
                    .then_some(())
            },
        )
        .with_context(|| {
            c.members[0]
                .proc
                .as_ref()
                .map(|p| p.stderr())
                .unwrap_or_default()
        })?;
        Ok(c)
    }

    /// Starts member `i` again on its data.
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let mut c = match &m.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&m.args[0]);
                c
            }
            None => Command::new(&m.args[0]),
        };
        c.args(&m.args[1..]);
        m.proc = Some(Proc::spawn(c).with_context(|| format!("starting etcd {}", m.name))?);
        Ok(())
    }

    /// Waits until member `i` says it is healthy (it has a leader).
    pub fn wait_healthy(&self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let addr = m.client.trim_start_matches("http://").to_string();
        wait_for(
            &format!("etcd {} healthy", m.name),
            Duration::from_secs(30),
            || {
                let (code, body) = http_get(&addr, "/health").ok()?;
                (code == 200 && body.contains("true")).then_some(())
            },
        )
        .with_context(|| m.proc.as_ref().map(|p| p.stderr()).unwrap_or_default())
    }
}
