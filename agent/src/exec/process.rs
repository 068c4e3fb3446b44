//! Running an `exec` or `shell` step: its own process group, stdout and
//! stderr into one pipe (interleaved as written), the newest 64 KiB kept,
//! live chunks handed on, and on a timeout or a cancel the whole group
//! stopped: SIGTERM, a grace period, then SIGKILL.

use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid, User};
use picket_proto::v1::StepState;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::ledger::Outcome;

/// The most output kept per step (the newest bytes).
pub const TAIL_BYTES: usize = 64 * 1024;
/// Between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
/// After the step's process exits, how long output from what it left
/// behind is still read before the group is killed.
const LINGER: Duration = Duration::from_millis(500);

/// What to run.
pub struct Spawn {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Already checked against `[exec] users`.
    pub user: Option<String>,
    pub timeout: Duration,
}

/// The newest `TAIL_BYTES` of a stream.
#[derive(Default)]
pub struct Tail {
    buf: VecDeque<u8>,
    cut: bool,
}

impl Tail {
    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > TAIL_BYTES {
            self.cut = true;
            &bytes[bytes.len() - TAIL_BYTES..]
        } else {
            bytes
        };
        let over = (self.buf.len() + bytes.len()).saturating_sub(TAIL_BYTES);
        if over > 0 {
            self.cut = true;
            self.buf.drain(..over);
        }
        self.buf.extend(bytes);
    }

    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        let mut s = String::from_utf8_lossy(&v).into_owned();
        if self.cut
            && let Some(nl) = s.find('\n')
            && nl < 256
        {
            // Start at a whole line when the front was cut.
            s.drain(..=nl);
        }
        s
    }
}

/// The PATH every step starts with.
const STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The agent's own user's home (a step that runs as the agent's user).
fn own_home() -> String {
    User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.dir.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into())
}

/// Looked up before the fork: the user's ids, groups and home.
struct RunAs {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    home: String,
}

fn run_as(name: &str) -> Result<RunAs, String> {
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("user {name:?} does not exist on this host"))?;
    let cname = std::ffi::CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| format!("cannot list the groups of {name:?}: {e}"))?;
    Ok(RunAs {
        uid: user.uid,
        gid: user.gid,
        groups,
        home: user.dir.to_string_lossy().into_owned(),
    })
}

/// Runs the process to its end (or its group's), calling `live` with each
/// chunk read. Never fails: a process that cannot start is a failed step
/// whose output says why.
pub async fn run(s: Spawn, cancel: CancellationToken, mut live: impl FnMut(&[u8])) -> Outcome {
    let started = Instant::now();
    let mut tail = Tail::default();
    let failed = |why: String, started: Instant| Outcome {
        duration_ms: ms(started.elapsed()),
        ..Outcome::failed(why)
    };
    let Some((program, args)) = s.argv.split_first() else {
        return failed("nothing to run".into(), started);
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(format!("cannot make a pipe: {e}"), started),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("cannot make a pipe: {e}"), started),
    };
    let mut cmd = tokio::process::Command::new(program);
    // A clean environment (SPEC §4): PATH, LANG, HOME of the step's user,
    // its own `env` and PICKET_*; nothing of the agent's.
    cmd.env_clear()
        .env("PATH", STEP_PATH)
        .env(
            "LANG",
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
        )
        .env("HOME", own_home())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0)
        .kill_on_drop(true);
    match &s.user {
        None => {
            if let Some(dir) = &s.cwd {
                cmd.current_dir(dir);
            }
        }
        Some(name) => {
            let who = match run_as(name) {
                Ok(w) => w,
                Err(e) => return failed(e, started),
            };
            let cwd = match s.cwd.as_deref().map(std::ffi::CString::new).transpose() {
                Ok(c) => c,
                Err(_) => return failed("bad cwd: it holds a NUL byte".into(), started),
            };
            cmd.env("HOME", &who.home);
            let (uid, gid, groups) = (who.uid, who.gid, who.groups);
            // SAFETY: between fork and exec only async-signal-safe calls
            // run: setgroups, setgid, setuid and chdir are single syscalls
            // on data made before the fork (no allocation, no lock). The
            // step's folder is entered as its user, so a folder the user
            // may not enter fails the step rather than being entered as
            // root.
            unsafe {
                cmd.pre_exec(move || {
                    nix::unistd::setgroups(&groups)?;
                    nix::unistd::setgid(gid)?;
                    nix::unistd::setuid(uid)?;
                    if let Some(dir) = &cwd {
                        nix::unistd::chdir(dir.as_c_str())?;
                    }
                    Ok(())
                });
            }
        }
    }
    // The step's own `env` and PICKET_* last: they may set any of these.
    cmd.envs(&s.env);
    let spawned = cmd.spawn();
    // The parent's copies of the write end go with the command, so the
    // pipe ends when the last process of the step closes it.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start {program:?}: {e}"), started),
    };
    let Some(pgid) = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
    else {
        return failed("the step's process vanished at start".into(), started);
    };
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) {
        Ok(p) => p,
        Err(e) => {
            let _ = stop_group(pgid, &mut child).await;
            return failed(format!("cannot read the step's output: {e}"), started);
        }
    };

    let deadline = tokio::time::sleep(s.timeout);
    tokio::pin!(deadline);
    let mut buf = vec![0u8; 16 * 1024];
    let mut ending: Option<StepState> = None;
    let mut note = String::new();
    let mut open = true;
    let status = loop {
        tokio::select! {
            n = pipe.read(&mut buf), if open => match n {
                Ok(0) | Err(_) => open = false,
                Ok(n) => {
                    tail.push(&buf[..n]);
                    live(&buf[..n]);
                }
            },
            st = child.wait() => break st,
            _ = &mut deadline => {
                ending = Some(StepState::TimedOut);
                note = format!(
                    "timed out after {}; its process group was stopped",
                    humantime::format_duration(s.timeout)
                );
                break stop_group(pgid, &mut child).await;
            }
            _ = cancel.cancelled() => {
                ending = Some(StepState::Failed);
                note = "cancelled; its process group was stopped".into();
                break stop_group(pgid, &mut child).await;
            }
        }
    };
    // Output still coming from what the step left behind is read a little
    // longer; then whatever is left in its group ends with it, and the
    // pipe is drained (briefly: a process that left the group may hold it).
    for kill_first in [false, true] {
        if kill_first {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        if !open {
            break;
        }
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                tail.push(&buf[..n]);
                live(&buf[..n]);
            }
            open = false;
        })
        .await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let status = Some(status);
    let code = status.and_then(|s| s.ok()).and_then(|s| {
        use std::os::unix::process::ExitStatusExt;
        match s.code() {
            Some(c) => Some(c),
            None => {
                if ending.is_none() {
                    note = format!("killed by signal {}", s.signal().unwrap_or(0));
                }
                None
            }
        }
    });
    let state = ending.unwrap_or(if code == Some(0) {
        StepState::Succeeded
    } else {
        StepState::Failed
    });
    if !note.is_empty() {
        tail.push(format!("\n[picket] {note}\n").as_bytes());
    }
    Outcome {
        state: state as i32,
        exit_code: if ending.is_some() { None } else { code },
        duration_ms: ms(started.elapsed()),
        output: tail.text(),
    }
}

/// SIGTERM to the group, up to [`GRACE`] for the process to exit, then
/// SIGKILL to the group; returns the process's status.
async fn stop_group(
    pgid: Pid,
    child: &mut tokio::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    let _ = killpg(pgid, Signal::SIGTERM);
    let exited = tokio::time::timeout(GRACE, child.wait()).await;
    let _ = killpg(pgid, Signal::SIGKILL);
    match exited {
        Ok(st) => st,
        Err(_) => child.wait().await,
    }
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(argv: &[&str], timeout: Duration) -> Spawn {
        Spawn {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
            user: None,
            timeout,
        }
    }

    #[test]
    fn the_tail_keeps_the_newest_bytes_from_a_line_start() {
        let mut t = Tail::default();
        for i in 0..20_000 {
            t.push(format!("line {i}\n").as_bytes());
        }
        let s = t.text();
        assert!(s.len() <= TAIL_BYTES);
        assert!(s.starts_with("line "), "{}", &s[..20]);
        assert!(s.ends_with("line 19999\n"));
    }

    #[tokio::test]
    async fn output_interleaves_and_exit_codes_count() {
        let o = run(
            spawn(
                &["/bin/sh", "-c", "echo out; echo err >&2; echo out2; exit 3"],
                Duration::from_secs(10),
            ),
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.output, "out\nerr\nout2\n");
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.state, StepState::Failed as i32);
    }

    #[tokio::test]
    async fn a_timeout_kills_a_child_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sh -c 'trap \"\" TERM; echo $$ > {}; while true; do sleep 0.1; done' & wait",
            pidfile.display()
        );
        let o = run(
            spawn(&["/bin/sh", "-c", &script], Duration::from_millis(500)),
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.state, StepState::TimedOut as i32, "{}", o.output);
        assert!(o.output.contains("timed out"), "{}", o.output);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild is gone (kill -0 fails once it is reaped by init).
        let mut gone = false;
        for _ in 0..50 {
            let alive = nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "));
            if !alive {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(gone, "grandchild {pid} outlived the step");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_failure() {
        let o = run(
            spawn(&["/nonexistent/deploy.sh"], Duration::from_secs(5)),
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.state, StepState::Failed as i32);
        assert!(
            o.output.contains("cannot start \"/nonexistent/deploy.sh\""),
            "{}",
            o.output
        );
    }

    #[tokio::test]
    async fn a_flood_of_output_keeps_only_the_tail() {
        let mut seen = 0usize;
        let o = run(
            spawn(
                &[
                    "/bin/sh",
                    "-c",
                    "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo end",
                ],
                Duration::from_secs(60),
            ),
            CancellationToken::new(),
            |b| seen += b.len(),
        )
        .await;
        assert_eq!(o.state, StepState::Succeeded as i32);
        assert!(seen > 200_000_000);
        assert!(o.output.len() <= TAIL_BYTES && o.output.ends_with("end\n"));
    }
}
