//! `provisioning/site.yml` run for real by ansible-playbook on the
//! namespace fleet: each host is a network namespace
//! (`tests/fleet/fleet.sh`) with a staging root of its own
//! (`picket_root`), reached by a local connection whose Python runs in
//! the host's namespace. The playbook installs, creates the CA, makes one
//! token per host, enrolls each agent with the fingerprint pinned; the
//! agents it configured come online with their roles; a second run
//! changes nothing. No systemd here (`picket_manage_services=false`): the
//! test starts the daemons from what the playbook installed.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_tests::ansible::{self, changed, host_line, playbook, repo};
use picket_tests::netns::{CONTROL, HOSTS, Net};
use picket_tests::*;

#[test]
fn the_playbook_installs_enrolls_and_is_idempotent_on_the_namespace_fleet() -> Result<()> {
    let net = Net::up()?;
    let w = World::new()?;
    std::fs::create_dir_all(w.path("home"))?;
    let bin_dir = bin("picket-agent")
        .parent()
        .context("binary folder")?
        .to_path_buf();
    let root = |host: &str| ansible::root(&w, host);

    // One line per host: host variables outrank the playbook's group_vars,
    // and hold in every group the host is in (vm-devops is in both).
    let mut inv = String::from("[control]\nvm-devops\n\n[agents]\n");
    for (host, addr, role) in HOSTS {
        // vm-security runs Suricata in the seeds.
        let extra = if host == "vm-security" {
            " picket_agent_extra_sources='[{\"kind\": \"suricata\", \"path\": \"/var/log/suricata/eve.json\"}]'"
        } else {
            ""
        };
        inv.push_str(&host_line(&w, &net, (host, addr, role), &bin_dir, extra)?);
    }
    inv.push_str("\n[fleet:children]\ncontrol\nagents\n");
    let inventory = w.path("inventory.ini");
    std::fs::write(&inventory, &inv)?;

    // The control plane first; here the test starts what was installed.
    playbook(&w, &inventory, &["--tags", "control"])?;
    let cp_root = root("vm-devops");
    let cp_cmd = ansible::installed(&w, &net, "vm-devops", "picket-control");
    let cp = Control::start_with(
        cp_root.join("var/lib/picket"),
        &cp_root.join("etc/picket/control.toml"),
        cp_cmd,
        &format!("{CONTROL}:7443"),
        &format!("{CONTROL}:9464"),
    )?;

    // Then everything: tokens, enrollment.
    let first = playbook(&w, &inventory, &[])?;
    assert!(
        changed(&first).iter().any(|(_, n)| *n > 0),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let security = std::fs::read_to_string(root("vm-security").join("etc/picket/agent.toml"))?;
    assert!(
        security.contains("kind = \"suricata\"") && security.contains("kind = \"sshd\""),
        "{security}"
    );
    let prod = std::fs::read_to_string(root("vm-prod").join("etc/picket/agent.toml"))?;
    assert!(
        !prod.contains("suricata") && prod.contains("kind = \"fail2ban\""),
        "{prod}"
    );
    assert!(
        prod.contains(&format!("server = \"{CONTROL}:7443\"")),
        "{prod}"
    );

    let mut agents = Vec::new();
    for (host, _, _) in HOSTS {
        agents.push(ansible::run_installed_agent(&w, &net, host)?);
    }
    let flags = cp.admin_flags();
    let ctl = || {
        ctl_json_with(
            w.cmd_in(&net.ns("vm-devops"), "picketctl"),
            &flags,
            &["agents", "list"],
        )
    };
    let listed = wait_for(
        "five provisioned agents online",
        Duration::from_secs(60),
        || {
            let a = ctl().ok()?;
            (a.len() == 5 && a.iter().all(|a| a["status"] == "online")).then_some(a)
        },
    )?;
    for (host, _, role) in HOSTS {
        let a = listed
            .iter()
            .find(|a| a["name"] == host)
            .context("listed")?;
        assert_eq!(a["labels"]["role"], role, "{host}");
    }

    // A second run changes nothing.
    let second = playbook(&w, &inventory, &[])?;
    let recap = changed(&second);
    assert_eq!(
        recap.len(),
        5,
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    for (host, n) in recap {
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

fn install_sh(args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg(repo().join("provisioning/install.sh"))
        .args(args)
        .env_remove("PICKET_TOKEN")
        .output()
        .context("running provisioning/install.sh")?;
    ensure!(
        out.status.success(),
        "install.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn install_sh_sets_up_a_control_plane_and_an_agent_and_runs_again_harmlessly() -> Result<()> {
    let w = World::new()?;
    let bin_dir = bin("picket-agent")
        .parent()
        .context("binary folder")?
        .display()
        .to_string();
    let (rc, ra) = (w.path("control-root"), w.path("agent-root"));
    let (rc_s, ra_s) = (rc.display().to_string(), ra.display().to_string());
    let said = install_sh(&["control", "--root", &rc_s, "--bin", &bin_dir])?;
    let fp = said
        .split_whitespace()
        .find(|s| s.starts_with("sha256:"))
        .context("no fingerprint printed")?
        .to_string();
    // picketctl comes with its completions and manual pages.
    let bash = std::fs::read_to_string(rc.join("usr/share/bash-completion/completions/picketctl"))?;
    assert!(bash.contains("_picketctl()"), "{bash}");
    for f in [
        "usr/share/zsh/vendor-completions/_picketctl",
        "usr/share/fish/vendor_completions.d/picketctl.fish",
        "usr/local/share/man/man1/picketctl.1",
        "usr/local/share/man/man1/picketctl-rollout-create.1",
    ] {
        assert!(rc.join(f).is_file(), "install.sh wrote no {f}");
    }
    let c = Command::new(rc.join("usr/local/bin/picket-control"));
    let cp = Control::start_with(
        rc.join("var/lib/picket"),
        &rc.join("etc/picket/control.toml"),
        c,
        "127.0.0.1:0",
        "127.0.0.1:0",
    )?;
    let admin = cp.admin_flags();
    let tok = token(&w, &cp, &["--label", "role=prod"])?;
    let args = [
        "agent",
        "--root",
        &ra_s,
        "--bin",
        &bin_dir,
        "--server",
        &cp.grpc,
        "--ca-fingerprint",
        &fp,
        "--name",
        "host-1",
        "--role",
        "prod",
        "--source",
        "raw:/var/log/app.log",
    ];
    let mut with_token = args.to_vec();
    with_token.extend(["--token", &tok]);
    install_sh(&with_token)?;
    let cfg = std::fs::read_to_string(ra.join("etc/picket/agent.toml"))?;
    assert!(
        cfg.contains("kind = \"raw\"") && cfg.contains("role = \"prod\""),
        "{cfg}"
    );
    let mut c = Command::new(ra.join("usr/local/bin/picket-agent"));
    c.args(["run", "--config"])
        .arg(ra.join("etc/picket/agent.toml"));
    let _agent = Proc::spawn(c)?;
    wait_for("host-1 online", Duration::from_secs(30), || {
        let a = agents(&w, &admin).ok()?;
        let h = a.get("host-1")?;
        (h["status"] == "online" && h["labels"]["role"] == "prod").then_some(())
    })?;
    // Again: no token needed, no second CA, no second enrollment.
    let crt = std::fs::read(ra.join("var/lib/picket-agent/agent.crt"))?;
    install_sh(&args)?;
    assert_eq!(
        std::fs::read(ra.join("var/lib/picket-agent/agent.crt"))?,
        crt
    );
    let again = install_sh(&["control", "--root", &rc_s, "--bin", &bin_dir])?;
    assert!(again.contains(&fp), "{again}");
    Ok(())
}
