//! `provisioning/site.yml` for a control plane of two replicas on etcd
//! (docs/cluster.md), run for real on the namespace fleet as
//! tests/e2e/provisioning.rs runs it for one: etcd on vm-security, the
//! replicas on vm-devops (init) and vm-monitor (join), agents on vm-prod
//! and vm-staging given both. The replicas share one CA, the agents come
//! online as both replicas see them, and a second run changes nothing.
//! The records go to PostgreSQL on vm-security (`picket_cluster_postgres`
//! and its password).

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::ansible::{self, changed, host_line, playbook};
use picket_tests::etcd::EtcdCluster;
use picket_tests::netns::Net;
use picket_tests::postgres::Postgres;
use picket_tests::*;

const CONTROLS: [(&str, &str); 2] = [("vm-devops", "10.0.1.50"), ("vm-monitor", "10.0.1.30")];
const AGENTS: [(&str, &str, &str); 2] = [
    ("vm-prod", "10.0.1.10", "prod"),
    ("vm-staging", "10.0.1.20", "staging"),
];

#[test]
fn the_playbook_makes_a_two_replica_control_plane_on_etcd() -> Result<()> {
    let net = Net::up()?;
    let w = World::new()?;
    std::fs::create_dir_all(w.path("home"))?;
    let _etcd = EtcdCluster::start_in_namespace(&w, &net.ns("vm-security"), "10.0.1.40")?;
    let pg = Postgres::start_in_namespace(&net.ns("vm-security"), "10.0.1.40", &["fsync=off"])?;
    let bin_dir = bin("picket-agent")
        .parent()
        .context("binary folder")?
        .to_path_buf();
    let root = |host: &str| ansible::root(&w, host);
    let etcd = format!(
        " picket_cluster_etcd='[\"http://10.0.1.40:2379\"]' picket_cluster_postgres={} \
         picket_cluster_postgres_password={}",
        pg.url(),
        picket_tests::postgres::PASSWORD
    );
    let line = |host: &str, addr: &str, role: &str| {
        host_line(&w, &net, (host, addr, role), &bin_dir, &etcd)
    };
    let mut inv = String::from("[control]\n");
    for (host, addr) in CONTROLS {
        inv.push_str(&line(host, addr, "control")?);
    }
    inv.push_str("\n[agents]\n");
    for (host, addr, role) in AGENTS {
        inv.push_str(&line(host, addr, role)?);
    }
    inv.push_str("\n[fleet:children]\ncontrol\nagents\n");
    let inventory = w.path("inventory.ini");
    std::fs::write(&inventory, &inv)?;

    // The control plane: init on the first, join on the second; here the
    // test starts what was installed.
    playbook(&w, &inventory, &["--tags", "control"])?;
    let data = |host: &str| root(host).join("var/lib/picket");
    assert_eq!(
        std::fs::read(data("vm-devops").join("ca.crt"))?,
        std::fs::read(data("vm-monitor").join("ca.crt"))?,
        "one CA for both replicas"
    );
    let mut cps = Vec::new();
    for (host, addr) in CONTROLS {
        let cfg = root(host).join("etc/picket/control.toml");
        let text = std::fs::read_to_string(&cfg)?;
        assert!(
            text.contains("[cluster]") && text.contains(&format!("node = \"{host}\"")),
            "{text}"
        );
        assert!(
            text.contains(&format!("postgres = \"{}\"", pg.url())),
            "{text}"
        );
        cps.push(Control::start_with(
            data(host),
            &cfg,
            ansible::installed(&w, &net, host, "picket-control"),
            &format!("{addr}:7443"),
            &format!("{addr}:9464"),
        )?);
    }

    // Then the agents, given both replicas.
    playbook(&w, &inventory, &[])?;
    let prod = std::fs::read_to_string(root("vm-prod").join("etc/picket/agent.toml"))?;
    assert!(
        prod.contains("server = \"10.0.1.50:7443,10.0.1.30:7443\""),
        "{prod}"
    );
    let mut agents = Vec::new();
    for (host, _, _) in AGENTS {
        agents.push(ansible::run_installed_agent(&w, &net, host)?);
    }
    // The admin bundle init wrote, on either replica.
    for (i, (host, addr)) in CONTROLS.iter().enumerate() {
        let mut flags = cps[0].admin_flags();
        flags[1] = format!("{addr}:7443");
        let listed = wait_for(
            &format!("both agents online as {host} sees them"),
            Duration::from_secs(60),
            || {
                let a = ctl_json_with(
                    w.cmd_in(&net.ns(host), "picketctl"),
                    &flags,
                    &["agents", "list"],
                )
                .ok()?;
                (a.len() == 2 && a.iter().all(|a| a["status"] == "online")).then_some(a)
            },
        )
        .with_context(|| cps[i].proc.stderr())?;
        for (agent, _, role) in AGENTS {
            let a = listed
                .iter()
                .find(|a| a["name"] == agent)
                .context("listed")?;
            assert_eq!(a["labels"]["role"], role, "{agent}");
        }
    }

    // Their records reach the database (each replica made or found the
    // schema; each agent's first batch set its acked number).
    wait_for(
        "both agents' batches in PostgreSQL",
        Duration::from_secs(60),
        || {
            (pg.psql("SELECT count(*) FROM picket_acked WHERE seq > 0")
                .ok()?
                == "2")
                .then_some(())
        },
    )?;

    // A second run changes nothing.
    let second = playbook(&w, &inventory, &[])?;
    for (host, n) in changed(&second) {
        assert_eq!(
            n,
            0,
            "{host} changed on the second run:\n{}",
            String::from_utf8_lossy(&second.stdout)
        );
    }
    drop(agents);
    Ok(())
}
