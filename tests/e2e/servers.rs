//! Several control plane addresses (SPEC §12): agents and `picketctl`
//! given a list use one that answers, and an agent whose address dies
//! moves to another without losing or repeating a record. The addresses
//! are relays on loopback ports of their own in front of one control
//! plane, so that one can die while the control plane lives.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::lines::{numbered_lines, wait_all, write_lines};
use picket_tests::relay::Relay;
use picket_tests::*;

#[test]
fn an_agent_moves_to_another_address_when_its_own_dies() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let dead = format!("127.0.0.1:{}", free_port()?);
    let mut relays = [Relay::start(&cp.grpc)?, Relay::start(&cp.grpc)?];
    let list = format!("{dead},{},{}", relays[0].addr(), relays[1].addr());

    // Enrolled through the list (the dead address is passed over); the
    // whole list is kept in agent.toml.
    let tok = token(&w, &cp, &[])?;
    let mut c = w.cmd("picket-agent");
    c.args(["enroll", "--server", &list, "--token", &tok])
        .args(["--ca-fingerprint", &fp, "--name", "vm-a"])
        .arg("--state-dir")
        .arg(w.path("agents/vm-a"));
    let out = c.output()?;
    assert!(out.status.success(), "enroll: {}", stderr(&out));
    let cfg = w.path("agents/vm-a/agent.toml");
    let text = std::fs::read_to_string(&cfg)?;
    let listed = format!(
        "server = [\"{dead}\", \"{}\", \"{}\"]",
        relays[0].addr(),
        relays[1].addr()
    );
    assert!(text.contains(&listed), "{text}");

    let log = w.path("app.log");
    write_lines(&log, 1, 201)?;
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[[source]]\nkind = \"raw\"\npath = \"{}\"\nfrom_start = true\n",
            log.display()
        ),
    )?;
    let mut agent = run_agent(&w, "vm-a")?;
    wait_all(&w, &admin, 201)?;

    // The relay holding the agent's stream dies; the agent moves to the
    // other, and the lines written meanwhile arrive once each.
    let held = wait_for(
        "the agent's stream on a relay",
        Duration::from_secs(20),
        || relays.iter().position(|r| r.open() > 0),
    )
    .with_context(|| agent.stderr())?;
    relays[held].kill();
    write_lines(&log, 201, 401)?;
    let other = 1 - held;
    wait_for(
        "the agent on the other relay",
        Duration::from_secs(60),
        || (relays[other].open() > 0).then_some(()),
    )
    .with_context(|| agent.stderr())?;
    wait_all(&w, &admin, 401)?;
    assert_eq!(status_of(&w, &admin, "vm-a").as_deref(), Some("online"));
    assert!(agent.child_alive(), "{}", agent.stderr());
    wait_for("the agent to log the move", Duration::from_secs(5), || {
        agent
            .stderr()
            .contains("control plane unreachable")
            .then_some(())
    })
    .with_context(|| agent.stderr())?;
    assert_eq!(numbered_lines(&w, &admin)?.len(), 400);
    Ok(())
}

#[test]
fn picketctl_takes_a_list_in_flags_the_environment_and_profiles() -> Result<()> {
    let w = World::new()?;
    w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let dead = format!("127.0.0.1:{}", free_port()?);
    let list = format!("{dead},{}", cp.grpc);

    // --server with a dead address first, or last: either way it answers.
    for servers in [list.clone(), format!("{},{dead}", cp.grpc)] {
        let mut flags = cp.admin_flags();
        flags[1] = servers;
        let out = ctl(&w, &flags, &["status"])?;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // PICKET_SERVER, and a profile's TOML list.
    let flags = cp.admin_flags()[2..].to_vec();
    let mut c = w.cmd("picketctl");
    c.env("PICKET_SERVER", &list).args(&flags).arg("status");
    let out = c.output()?;
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = w.path("profiles");
    std::fs::create_dir_all(&dir)?;
    let d = |f: &str| cp.data_dir.join(f).display().to_string();
    std::fs::write(
        dir.join("cluster.toml"),
        format!(
            "server = [\"{dead}\", \"{}\"]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            cp.grpc,
            d("ca.crt"),
            d("admin.crt"),
            d("admin.key")
        ),
    )?;
    let mut c = w.cmd("picketctl");
    c.env("PICKET_CONFIG_DIR", &dir)
        .args(["--profile", "cluster", "status"]);
    let out = c.output()?;
    assert!(out.status.success(), "{}", stderr(&out));

    // None answers: each address's failure is named.
    let dead2 = format!("127.0.0.1:{}", free_port()?);
    let mut flags = cp.admin_flags();
    flags[1] = format!("{dead},{dead2}");
    let out = ctl(&w, &flags, &["status"])?;
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("no control plane answered") && e.contains(&dead) && e.contains(&dead2),
        "{e}"
    );
    // A bad address is a usage error that names it.
    flags[1] = format!("{},nohost", cp.grpc);
    let out = ctl(&w, &flags, &["status"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("\"nohost\" is not HOST:PORT"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
