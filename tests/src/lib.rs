//! The end-to-end harness: runs the real `picket-control`, `picket-agent`
//! and `picketctl` binaries in a temporary folder, over loopback, as
//! ripgrep's `tests/util.rs` runs `rg`.
//!
//! The binaries are the ones cargo built next to this test
//! (`target/<profile>/`); `cargo test --workspace` builds them first.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod ansible;
pub mod etcd;
pub mod fleet;
pub mod lines;
pub mod netns;
pub mod postgres;
pub mod receiver;
pub mod relay;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is under target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace --bins` (the README's test command does)",
        p.display()
    );
    p
}

/// The `tests/` folder of the repository (corpus, tools).
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 200 ms until it returns Some, or fails after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process whose stderr is collected, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
    pub stdout: Arc<Mutex<String>>,
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut g) = b.lock() {
                g.push_str(&line);
                g.push('\n');
            }
        }
    });
    buf
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stderr = collect(child.stderr.take().context("stderr")?);
        let stdout = collect(child.stdout.take().context("stdout")?);
        Ok(Proc {
            child,
            stderr,
            stdout,
        })
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0))
    }

    /// Whether the process is still running.
    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no chance to clean up, as a crash or `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid(), sig);
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let child = &mut self.child;
        wait_for("process exit", limit, || child.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A temporary world: a home folder for profiles, and helpers to run the
/// three binaries in it.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> Result<World> {
        Ok(World {
            dir: tempfile::tempdir()?,
        })
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A command for one of the binaries with HOME and the profile folder
    /// inside this world, and no PICKET_* from the caller's environment.
    pub fn cmd(&self, name: &str) -> Command {
        self.setup(Command::new(bin(name)))
    }

    /// [`World::cmd`] inside the network namespace `ns` (`ip netns exec`).
    pub fn cmd_in(&self, ns: &str, name: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(bin(name));
        self.setup(c)
    }

    fn setup(&self, mut c: Command) -> Command {
        c.env("HOME", self.path("home"))
            .env("PICKET_CONFIG_DIR", self.path("home/.config/picket"))
            .env("RUST_LOG", "info")
            .env_remove("XDG_CONFIG_HOME");
        for v in [
            "PICKET_SERVER",
            "PICKET_CA",
            "PICKET_CERT",
            "PICKET_KEY",
            "PICKET_PROFILE",
        ] {
            c.env_remove(v);
        }
        c.current_dir(self.dir.path());
        c
    }

    pub fn run(&self, name: &str, args: &[&str]) -> Result<Output> {
        self.cmd(name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {name} {args:?}"))
    }

    /// `picket-control init`; returns the CA fingerprint it printed.
    pub fn init(&self, data_dir: &str, extra_config: &str) -> Result<String> {
        let out = self.run("picket-control", &["init", "--data-dir", data_dir])?;
        if !out.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let fp = text
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .ok_or_else(|| anyhow!("no fingerprint in init output: {text}"))?;
        if !extra_config.is_empty() {
            let cfg = self.dir.path().join(data_dir).join("control.toml");
            let text = std::fs::read_to_string(&cfg)?;
            std::fs::write(cfg, merge_config(&text, extra_config))?;
        }
        Ok(fp.to_string())
    }
}

/// `extra` merged into a config file's text, table by table: a key of
/// `extra` replaces the same key of the same table (top level included),
/// and a table the file does not have is appended.
pub fn merge_config(text: &str, extra: &str) -> String {
    /// A file as its top level (header `None`) and its `[table]`s.
    fn sections(text: &str) -> Vec<(Option<String>, Vec<String>)> {
        let mut out = vec![(None, Vec::new())];
        for l in text.lines() {
            let t = l.trim();
            if t.starts_with('[') && !t.starts_with("[[") {
                out.push((Some(t.to_string()), Vec::new()));
            } else if let Some(last) = out.last_mut() {
                last.1.push(l.to_string());
            }
        }
        out
    }
    let key = |l: &str| l.split_once('=').map(|(k, _)| k.trim().to_string());
    let mut file = sections(text);
    for (header, lines) in sections(extra) {
        let keys: Vec<String> = lines.iter().filter_map(|l| key(l)).collect();
        match file.iter_mut().find(|(h, _)| *h == header) {
            Some((_, have)) => {
                have.retain(|l| {
                    l.trim_start().starts_with('#') || key(l).is_none_or(|k| !keys.contains(&k))
                });
                have.extend(lines);
            }
            None => file.push((header, lines)),
        }
    }
    let mut out = String::new();
    for (header, lines) in file {
        if let Some(h) = header {
            out.push_str(&h);
            out.push('\n');
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// A running control plane on free loopback ports.
pub struct Control {
    pub proc: Proc,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
}

impl Control {
    pub fn start(world: &World, data_dir: &str) -> Result<Control> {
        Self::start_on(world, data_dir, "127.0.0.1:0")
    }

    pub fn start_on(world: &World, data_dir: &str, listen: &str) -> Result<Control> {
        let dir = world.path(data_dir);
        let cfg = dir.join("control.toml");
        let c = world.cmd("picket-control");
        Self::start_with(dir, &cfg, c, listen, "127.0.0.1:0")
    }

    /// `picket-control run` as `c` (the binary, perhaps behind `ip netns
    /// exec`) with `cfg` for `data_dir`, listening on `listen` and `http`.
    pub fn start_with(
        data_dir: PathBuf,
        cfg: &Path,
        mut c: Command,
        listen: &str,
        http: &str,
    ) -> Result<Control> {
        without_floor(cfg)?;
        c.args(["run", "--config"])
            .arg(cfg)
            .args(["--listen", listen, "--http-listen", http]);
        let proc = Proc::spawn(c)?;
        let (grpc, http) = wait_for("control plane to listen", Duration::from_secs(20), || {
            let err = proc.stderr();
            let line = err
                .lines()
                .find(|l| l.contains("control plane listening"))?;
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .map(str::to_string)
            };
            Some((field("grpc")?, field("http")?))
        })
        .with_context(|| format!("control plane stderr: {}", proc.stderr()))?;
        Ok(Control {
            proc,
            grpc,
            http,
            data_dir,
        })
    }

    /// `picketctl` flags for the admin bundle that `init` wrote.
    pub fn admin_flags(&self) -> Vec<String> {
        self.flags("admin.crt", "admin.key")
    }

    pub fn flags(&self, cert: &str, key: &str) -> Vec<String> {
        let d = |f: &str| self.data_dir.join(f).display().to_string();
        vec![
            "--server".into(),
            self.grpc.clone(),
            "--ca".into(),
            d("ca.crt"),
            "--cert".into(),
            d(cert),
            "--key".into(),
            d(key),
        ]
    }
}

/// Turns the free-space floor off in `cfg` where it is the default that
/// `init` writes (`min_free_percent = 1.0`): the tests share a disk whose
/// free space they do not control (CI's was once at 0.27 % free, under
/// the default floor, with room enough for every test). A test of the
/// floor writes a value of its own, which is kept.
fn without_floor(cfg: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(cfg) else {
        // No file: `run` says so itself.
        return Ok(());
    };
    if !text.lines().any(|l| l.trim() == "min_free_percent = 1.0") {
        return Ok(());
    }
    std::fs::write(cfg, merge_config(&text, "min_free_percent = 0"))
        .with_context(|| format!("writing {}", cfg.display()))
}

/// Runs `picketctl` with `flags` then `args`.
pub fn ctl(world: &World, flags: &[String], args: &[&str]) -> Result<Output> {
    let mut c = world.cmd("picketctl");
    c.args(flags).args(args);
    c.output().context("running picketctl")
}

/// `picketctl ... -o json` parsed as JSON lines; fails on a non-zero exit.
pub fn ctl_json(world: &World, flags: &[String], args: &[&str]) -> Result<Vec<Value>> {
    ctl_json_with(world.cmd("picketctl"), flags, args)
}

/// [`ctl_json`] with `picketctl` run as `c` (perhaps behind `ip netns exec`).
pub fn ctl_json_with(mut c: Command, flags: &[String], args: &[&str]) -> Result<Vec<Value>> {
    let out = c
        .args(flags)
        .args(args)
        .args(["-o", "json"])
        .output()
        .context("running picketctl")?;
    if !out.status.success() {
        bail!(
            "picketctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad JSON line {l:?}")))
        .collect()
}

/// Agents by name from `agents list -o json`.
pub fn agents(world: &World, flags: &[String]) -> Result<BTreeMap<String, Value>> {
    Ok(ctl_json(world, flags, &["agents", "list"])?
        .into_iter()
        .filter_map(|a| Some((a["name"].as_str()?.to_string(), a)))
        .collect())
}

pub fn status_of(world: &World, flags: &[String], name: &str) -> Option<String> {
    agents(world, flags)
        .ok()?
        .get(name)?
        .get("status")?
        .as_str()
        .map(str::to_string)
}

/// Creates a token with the admin bundle.
pub fn token(world: &World, control: &Control, args: &[&str]) -> Result<String> {
    let mut a = vec!["token", "create"];
    a.extend(args);
    let out = ctl(world, &control.admin_flags(), &a)?;
    if !out.status.success() {
        bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `picket-agent enroll` into `state_dir`.
pub fn enroll(
    world: &World,
    control: &Control,
    fingerprint: &str,
    token: &str,
    name: &str,
    labels: &[&str],
) -> Result<Output> {
    let state = world.path(&format!("agents/{name}"));
    let mut c = world.cmd("picket-agent");
    c.args(["enroll", "--server", &control.grpc, "--token", token])
        .args(["--ca-fingerprint", fingerprint, "--name", name])
        .arg("--state-dir")
        .arg(&state);
    for l in labels {
        c.args(["--label", l]);
    }
    c.output().context("running picket-agent enroll")
}

/// Enrolls `name` (with `labels`), adds the given `[[source]]` tables
/// (kind, path; read from the start) to its `agent.toml`, and starts it.
pub fn enroll_with_sources(
    w: &World,
    cp: &Control,
    fp: &str,
    name: &str,
    labels: &[&str],
    sources: &[(&str, &Path)],
) -> Result<Proc> {
    enroll_with(w, cp, fp, name, labels, sources, "")
}

/// [`enroll_with_sources`], with `extra` merged into its agent.toml
/// ([`merge_config`]) before it starts.
pub fn enroll_with(
    w: &World,
    cp: &Control,
    fp: &str,
    name: &str,
    labels: &[&str],
    sources: &[(&str, &Path)],
    extra: &str,
) -> Result<Proc> {
    let tok = token(w, cp, &[])?;
    let out = enroll(w, cp, fp, &tok, name, labels)?;
    anyhow::ensure!(out.status.success(), "enroll: {}", stderr(&out));
    for (kind, path) in sources {
        add_source(&w.path(&format!("agents/{name}/agent.toml")), kind, path)?;
    }
    let cfg = w.path(&format!("agents/{name}/agent.toml"));
    let text = merge_config(&std::fs::read_to_string(&cfg)?, extra);
    std::fs::write(&cfg, text)?;
    run_agent(w, name)
}

/// Adds a `[[source]]` of `kind` on `path`, read from the start, to the
/// agent.toml at `cfg`.
pub fn add_source(cfg: &Path, kind: &str, path: &Path) -> Result<()> {
    let mut text = std::fs::read_to_string(cfg)?;
    text.push_str(&format!(
        "\n[[source]]\nkind = \"{kind}\"\npath = \"{}\"\nfrom_start = true\n",
        path.display()
    ));
    std::fs::write(cfg, text)?;
    Ok(())
}

/// Starts `picket-agent run` for an enrolled agent.
pub fn run_agent(world: &World, name: &str) -> Result<Proc> {
    let cfg = world.path(&format!("agents/{name}/agent.toml"));
    let mut c = world.cmd("picket-agent");
    c.args(["run", "--config"]).arg(cfg);
    Proc::spawn(c)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A plain HTTP/1.0 GET on loopback; returns status code and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP answer from {addr}: {head}"))?;
    Ok((code, body.to_string()))
}

/// Appends `text` to the file at `p` (created if missing), as a logger
/// writes.
pub fn append(p: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A free loopback port (bound, then released).
/// A loopback port free now and never handed out before in this test
/// process: a port is released before the program that will listen on it
/// starts, and the kernel may give it to the next caller meanwhile (tests
/// that start many servers at once, as the cluster tests' etcd members,
/// met that).
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// Sets a top-level key of an enrolled agent's agent.toml.
pub fn set_agent_key(world: &World, name: &str, key: &str, value: &str) -> Result<()> {
    let path = world.path(&format!("agents/{name}/agent.toml"));
    let text = std::fs::read_to_string(&path)?;
    let mut out: Vec<String> = Vec::new();
    let mut done = false;
    for line in text.lines() {
        if line.starts_with(&format!("{key} =")) {
            out.push(format!("{key} = {value}"));
            done = true;
        } else {
            out.push(line.to_string());
        }
    }
    if !done {
        // Top-level keys must precede any table.
        let at = out
            .iter()
            .position(|l| l.starts_with('['))
            .unwrap_or(out.len());
        out.insert(at, format!("{key} = {value}"));
    }
    std::fs::write(path, out.join("\n") + "\n")?;
    Ok(())
}

/// Where an outside program the tests need lives; fails naming the
/// Debian package that `scripts/test` installs, rather than skipping.
pub fn tool(name: &str, package: &str) -> Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} is not installed (Debian package {package}; scripts/test installs it)")
}
