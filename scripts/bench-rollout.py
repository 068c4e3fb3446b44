#!/usr/bin/env python3
"""Rollout fan-out benchmark: N real agent processes (default 50) on this
machine, one rollout over all of them with max_parallel = "100%", one
shell step each. Measures, per host, the time from `picketctl rollout
create` being started to the step's process starting on the host (the
step writes a nanosecond timestamp), and to the host's result being
stored (seen on `rollout watch -o json`); prints p50/p99/max as a
Markdown table (see docs/benchmarks.md).

    scripts/bench-rollout.py [--agents 50] [--rounds 3]

Builds release binaries (BENCH_NO_BUILD=1 skips that).
"""
import argparse, json, os, re, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_for(what, f, limit=60):
    end = time.time() + limit
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not os.environ.get("BENCH_NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "picket-control",
                        "-p", "picket-agent", "-p", "picketctl"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="picket-bench-rollout-")
    env = dict(os.environ, HOME=tmp, PICKET_CONFIG_DIR=os.path.join(tmp, "cfg"), RUST_LOG="warn")
    out = run([f"{REL}/picket-control", "init", "--data-dir", f"{tmp}/cp"], env=env).stdout
    fp = re.search(r"sha256:[0-9a-f]{64}", out).group(0)
    cfg = open(f"{tmp}/cp/control.toml").read()
    assert "enroll_per_minute = 10\n" in cfg
    with open(f"{tmp}/cp/control.toml", "w") as f:
        f.write(cfg.replace("enroll_per_minute = 10\n", "enroll_per_minute = 1000\n"))
    cp_err = open(f"{tmp}/cp.err", "w")
    cp = subprocess.Popen([f"{REL}/picket-control", "run", "--config", f"{tmp}/cp/control.toml",
                           "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
                          env=dict(env, RUST_LOG="info"), stderr=cp_err)
    grpc = wait_for("control plane", lambda: (m := re.search(r"grpc=(\S+)", open(f"{tmp}/cp.err").read())) and m.group(1))
    flags = ["--server", grpc, "--ca", f"{tmp}/cp/ca.crt", "--cert", f"{tmp}/cp/admin.crt", "--key", f"{tmp}/cp/admin.key"]
    ctl = lambda *args: run([f"{REL}/picketctl", *flags, *args], env=env).stdout
    token = ctl("token", "create", "--uses", str(a.agents), "--label", "role=bench").strip()
    agents = []
    for i in range(a.agents):
        state = f"{tmp}/agents/a{i:02}"
        run([f"{REL}/picket-agent", "enroll", "--server", grpc, "--token", token,
             "--ca-fingerprint", fp, "--name", f"a{i:02}", "--state-dir", state], env=env)
        with open(f"{state}/agent.toml") as f:
            text = f.read().replace('metrics_interval = "10s"', 'metrics_interval = "60s"')
        with open(f"{state}/agent.toml", "w") as f:
            f.write(text)
        agents.append(subprocess.Popen([f"{REL}/picket-agent", "run", "--config", f"{state}/agent.toml"],
                                       env=env, stderr=subprocess.DEVNULL))
    wait_for("agents online", lambda: sum(1 for l in ctl("agents", "list", "-o", "json").splitlines()
                                        if json.loads(l)["status"] == "online") == a.agents)
    marks = f"{tmp}/marks"
    starts, stored, totals = [], [], []
    for r in range(a.rounds):
        if os.path.exists(marks):
            os.remove(marks)
        spec = f"""name = "bench {r}"
selector = "role=bench"
max_parallel = "100%"
[[step]]
shell = "echo $PICKET_HOST $(date +%s%N) >> {marks}"
"""
        with open(f"{tmp}/r.toml", "w") as f:
            f.write(spec)
        t0 = time.time_ns()
        rid = ctl("rollout", "create", "-f", f"{tmp}/r.toml").strip()
        w = subprocess.Popen([f"{REL}/picketctl", *flags, "rollout", "watch", rid, "-o", "json"],
                             env=env, stdout=subprocess.PIPE, text=True)
        seen = {}
        for line in w.stdout:
            now = time.time_ns()
            v = json.loads(line)
            for wave in v["waves"]:
                for h in wave["hosts"]:
                    if h["state"] == "succeeded" and h["name"] not in seen:
                        seen[h["name"]] = now
            if v["state"] in ("succeeded", "failed"):
                done = now
                break
        w.wait()
        for line in open(marks):
            host, ns = line.split()
            starts.append((int(ns) - t0) / 1e6)
        stored.extend((t - t0) / 1e6 for t in seen.values())
        totals.append((done - t0) / 1e6)
    print(f"| {a.agents} agents, {a.rounds} rounds | p50 | p99 | max |")
    print("| --- | --- | --- | --- |")
    for name, xs in [("create → step started on the host", starts),
                     ("create → host's result stored (seen on watch)", stored),
                     ("create → rollout succeeded", totals)]:
        print(f"| {name} | {pct(xs, 50):.0f} ms | {pct(xs, 99):.0f} ms | {max(xs):.0f} ms |")
    for p in agents:
        p.terminate()
    cp.terminate()
    for p in agents + [cp]:
        p.wait()


if __name__ == "__main__":
    main()
