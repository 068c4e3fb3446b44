//! TLS to etcd (SPEC §12): a replica made with `--etcd-ca`, and a client
//! certificate when etcd checks them (`--client-cert-auth`), leads; one
//! without the certificate is refused, saying so.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::etcd::EtcdCluster;
use picket_tests::{Control, World, ctl_json, free_port, stderr};

use crate::leadership::{gauges, leading};

#[test]
fn a_replica_reaches_etcd_over_tls_with_its_client_certificate() -> Result<()> {
    let w = World::new()?;
    let etcd = EtcdCluster::start_tls(&w, 1)?;
    let endpoint = etcd.endpoints()[0].clone();
    let tls = |f: &str| w.path(&format!("etcd-tls/{f}")).display().to_string();
    let listen = format!("127.0.0.1:{}", free_port()?);
    let init = |dir: &str, cert: bool| {
        let mut args = vec![
            "init".to_string(),
            "--data-dir".into(),
            dir.into(),
            "--node".into(),
            "cp-0".into(),
            "--advertise".into(),
            listen.clone(),
            "--cluster-etcd".into(),
            endpoint.clone(),
            "--etcd-ca".into(),
            tls("ca.crt"),
        ];
        if cert {
            args.extend([
                "--etcd-cert".into(),
                tls("client.crt"),
                "--etcd-key".into(),
                tls("client.key"),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        w.run("picket-control", &args)
    };
    // etcd checks client certificates: without one, a clear refusal.
    let out = init("nocert", false)?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("etcd unavailable"),
        "{}",
        stderr(&out)
    );
    let out = init("cp0", true)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(w.path("cp0/control.toml"))?;
    assert!(
        text.contains("etcd_cert = ") && text.contains("https://"),
        "{text}"
    );
    let cps = vec![Some(Control::start_on(&w, "cp0", &listen)?)];
    leading(&cps, Duration::from_secs(30))?;
    let c = cps[0].as_ref().context("the replica")?;
    assert_eq!(gauges(c), Some((1, Some(1))));
    let s = ctl_json(&w, &c.admin_flags(), &["status"])?
        .pop()
        .context("a status line")?;
    assert_eq!(s["leader"], "cp-0", "{s}");
    Ok(())
}
