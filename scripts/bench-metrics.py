#!/usr/bin/env python3
"""Agent footprint benchmark: RSS and CPU of picket-agent collecting host
metrics, side by side with Prometheus' node_exporter scraped at the same
interval, over the same 60 s window on the same machine.

    scripts/bench-metrics.py [--seconds 60] [--intervals 1,10]

Builds release binaries, starts a real control plane and an enrolled agent
in a temp folder, and prints a Markdown table (see docs/benchmarks.md).
Needs the Debian package prometheus-node-exporter (installed if missing).
"""
import argparse, importlib.util, os, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
spec = importlib.util.spec_from_file_location("bench_events", os.path.join(ROOT, "scripts", "bench-events.py"))
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_line(proc_err_path, pattern, limit=30):
    end = time.time() + limit
    while time.time() < end:
        with open(proc_err_path) as f:
            m = re.search(pattern, f.read())
        if m:
            return m
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {pattern!r} in {proc_err_path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--intervals", default="1,10")
    a = ap.parse_args()

    node_exporter = ev.node_exporter()
    if not os.environ.get("BENCH_NO_BUILD"): subprocess.run(["cargo", "build", "--release", "-q", "-p", "picket-control", "-p", "picket-agent", "-p", "picketctl"],
                   cwd=ROOT, check=True)

    rows = []
    for interval in [int(x) for x in a.intervals.split(",")]:
        tmp = tempfile.mkdtemp(prefix="picket-bench-")
        env = dict(os.environ, HOME=tmp, PICKET_CONFIG_DIR=os.path.join(tmp, "cfg"), RUST_LOG="warn,picket_control=info")
        out = run([f"{REL}/picket-control", "init", "--data-dir", f"{tmp}/cp"], env=env).stdout
        fp = re.search(r"sha256:[0-9a-f]{64}", out).group(0)
        cp_err = open(f"{tmp}/cp.err", "w")
        cp = subprocess.Popen([f"{REL}/picket-control", "run", "--config", f"{tmp}/cp/control.toml",
                               "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"], env=env, stderr=cp_err)
        grpc = wait_line(f"{tmp}/cp.err", r"grpc=(\S+)").group(1)
        flags = ["--server", grpc, "--ca", f"{tmp}/cp/ca.crt", "--cert", f"{tmp}/cp/admin.crt", "--key", f"{tmp}/cp/admin.key"]
        token = run([f"{REL}/picketctl", *flags, "token", "create"], env=env).stdout.strip()
        run([f"{REL}/picket-agent", "enroll", "--server", grpc, "--token", token, "--ca-fingerprint", fp,
             "--name", "bench", "--state-dir", f"{tmp}/agent"], env=env)
        cfg = open(f"{tmp}/agent/agent.toml").read().replace('metrics_interval = "10s"', f'metrics_interval = "{interval}s"')
        open(f"{tmp}/agent/agent.toml", "w").write(cfg)
        agent = subprocess.Popen([f"{REL}/picket-agent", "run", "--config", f"{tmp}/agent/agent.toml"], env=env,
                                 stderr=subprocess.DEVNULL)
        ne_port = ev.free_port()
        ne = subprocess.Popen([node_exporter, f"--web.listen-address=127.0.0.1:{ne_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)  # warm-up: first samples, first scrape

        pids = {"picket-agent": agent.pid, "node_exporter": ne.pid}
        start = {k: cpu_ticks(p) for k, p in pids.items()}
        rss = {k: [] for k in pids}
        t0 = time.time()
        next_scrape = t0
        while time.time() - t0 < a.seconds:
            now = time.time()
            if now >= next_scrape:
                urllib.request.urlopen(f"http://127.0.0.1:{ne_port}/metrics").read()
                next_scrape += interval
            for k, p in pids.items():
                rss[k].append(rss_kib(p))
            time.sleep(0.5)
        wall = time.time() - t0
        for k, p in pids.items():
            cpu = (cpu_ticks(p) - start[k]) / TICK
            rows.append((interval, k, max(rss[k]) / 1024, sum(rss[k]) / len(rss[k]) / 1024, cpu, 100 * cpu / wall))
        for p in (agent, ne, cp):
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"| interval | process | max RSS (MiB) | mean RSS (MiB) | CPU time over {a.seconds} s (s) | CPU % of one core |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} s | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.3f} |")


if __name__ == "__main__":
    main()
