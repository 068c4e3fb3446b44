#!/usr/bin/env python3
"""Control plane at scale (issue #21; docs/benchmarks.md), with picket-swarm:

- swarm: for each N (default 1,000, 5,000, 10,000), one swarm of N agents
  (metrics every 10 s) on one control plane; time until all are online,
  then the control plane's RSS and CPU over 30 s of steady state (and the
  swarm's own, for scale);
- storm: at the largest N, kill -9 of the control plane and a restart:
  time until all are online again, the swarm's session errors, the
  control plane's CPU each second (how many seconds at 100 % or more of a
  core) and its handshake refusals;
- fanout: one rollout over every agent with max_parallel = "100%": from
  `rollout create` to each dispatch's arrival (the swarm logs it), p50,
  p99 and max, and to the rollout's end;
- detect: a second swarm of 1,000 more agents is SIGSTOPped (no FIN, no
  RST: a host that hangs or drops off the network): time until all
  1,000 show offline.

    scripts/bench-swarm.py [--agents 1000,5000,10000] [--detect 1000]

The swarm runs on the same 2 cores as the control plane. Connection and
enrollment limits are raised in the control plane's config: every
simulated agent comes from 127.0.0.1. BENCH_NO_BUILD=1 reuses the
release binaries.
"""
import argparse, importlib.util, json, os, re, signal, socket, subprocess, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_events", os.path.join(HERE, "bench-events.py"))
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)
REL, cpu_s = ev.REL, ev.cpu_s


def run(cmd, env, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[-4:])}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def rss_mib(pid):
    return ev.status_kib(pid, "VmRSS") / 1024


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


class Plane:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="picket-bench-swarm-")
        t = self.tmp
        self.env = dict(os.environ, HOME=t, PICKET_CONFIG_DIR=f"{t}/cfg", RUST_LOG="warn")
        out = run([f"{REL}/picket-control", "init", "--data-dir", f"{t}/cp"], self.env).stdout
        self.fp = re.search(r"sha256:[0-9a-f]{64}", out).group(0)
        cfg = open(f"{t}/cp/control.toml").read()
        for k, v in (("max_unauthenticated", 16384), ("max_unauthenticated_per_address", 16384),
                     ("enroll_per_minute", 1000000)):
            cfg, n = re.subn(rf"^{k} = \d+$", f"{k} = {v}", cfg, flags=re.M)
            assert n == 1, k
        open(f"{t}/cp/control.toml", "w").write(cfg)
        # A fixed port: the control plane is restarted on it (storm).
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.grpc = f"127.0.0.1:{sock.getsockname()[1]}"
        self.start()
        self.flags = ["--server", self.grpc, "--ca", f"{t}/cp/ca.crt", "--cert", f"{t}/cp/admin.crt",
                      "--key", f"{t}/cp/admin.key"]

    def start(self):
        self.err = f"{self.tmp}/cp.{time.time_ns()}.err"
        self.p = subprocess.Popen([f"{REL}/picket-control", "run", "--config", f"{self.tmp}/cp/control.toml",
                                   "--listen", self.grpc, "--http-listen", "127.0.0.1:0"],
                                  env=dict(self.env, RUST_LOG="warn,picket_control::server=info"),
                                  stdout=subprocess.DEVNULL, stderr=open(self.err, "w"))
        end = time.time() + 60
        while time.time() < end:
            m = re.search(r"http=(\S+)", open(self.err).read())
            if m:
                self.http = m.group(1)
                return
            time.sleep(0.05)
        raise SystemExit("control plane did not start")

    def ctl(self, *args):
        return run([f"{REL}/picketctl", *self.flags, *args], self.env).stdout

    def online(self, prefix_range=None):
        n = 0
        for l in self.ctl("agents", "list", "-o", "json").splitlines():
            a = json.loads(l)
            if a["status"].startswith("online") and (prefix_range is None or a["name"] in prefix_range):
                n += 1
        return n

    def metric(self, name):
        import urllib.request
        body = urllib.request.urlopen(f"http://{self.http}/metrics").read().decode()
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)", body, re.M))


def swarm(pl, n, first, token, log=None):
    cmd = [f"{REL}/picket-swarm", "--server", pl.grpc, "--ca-fingerprint", pl.fp, "--token", token,
           "--agents", str(n), "--from", str(first), "--state-dir", f"{pl.tmp}/swarm"]
    if log:
        cmd += ["--dispatch-log", log]
    return subprocess.Popen(cmd, env=pl.env, stdout=subprocess.PIPE, stderr=open(f"{pl.tmp}/swarm.err", "a"),
                            text=True)


def wait(what, f, limit):
    t0 = time.time()
    while time.time() - t0 < limit:
        if f():
            return time.time() - t0
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default="1000,5000,10000")
    ap.add_argument("--detect", type=int, default=1000)
    a = ap.parse_args()
    sizes = [int(x) for x in a.agents.split(",")]
    ev.build()
    commit = ev.commit()
    pl = Plane()
    # A token has at most 10,000 uses: one for the swarm, one for detect's.
    token = pl.ctl("token", "create", "--uses", str(max(sizes)), "--ttl", "24h").strip()
    print(f"commit {commit}; control plane and swarm on this machine\n")
    print("| agents | all online after (s) | control plane RSS (MiB) | per agent (KiB) | control plane CPU, steady (% of a core) | swarm RSS (MiB) | swarm CPU (% of a core) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    sw = None
    for n in sizes:
        if sw:
            sw.send_signal(signal.SIGTERM)
            sw.wait()
        sw = swarm(pl, n, 1, token)
        up = wait(f"{n} online", lambda: pl.online() >= n, 1800)
        time.sleep(15)
        c0, s0, t0 = cpu_s(pl.p.pid), cpu_s(sw.pid), time.time()
        time.sleep(30)
        dt = time.time() - t0
        cp_cpu, sw_cpu = (cpu_s(pl.p.pid) - c0) / dt * 100, (cpu_s(sw.pid) - s0) / dt * 100
        rss = rss_mib(pl.p.pid)
        print(f"| {n:,} | {up:.1f} | {rss:.0f} | {rss * 1024 / n:.0f} | {cp_cpu:.1f} | {rss_mib(sw.pid):.0f} | {sw_cpu:.1f} |",
              flush=True)
    n = sizes[-1]

    # storm
    pl.p.kill()
    pl.p.wait()
    pl.start()
    t0, busy, peak = time.time(), 0, 0.0
    last = cpu_s(pl.p.pid)
    while True:
        time.sleep(1)
        now = cpu_s(pl.p.pid)
        use = (now - last) * 100
        last = now
        peak = max(peak, use)
        busy += use >= 100
        if pl.online() >= n:
            break
        if time.time() - t0 > 900:
            raise SystemExit("storm: not all back in 15 min")
    back = time.time() - t0
    errs = sum(pl.metric(m) for m in ("picket_control_tls_handshake_failures", "picket_control_connections_refused",
                                      "picket_control_connections_refused_address"))
    print(f"\n| storm: agents | back after kill -9 (s) | control plane CPU peak (% of a core) | seconds at ≥ 100 % | handshakes failed or refused |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {n:,} | {back:.1f} | {peak:.0f} | {busy} | {errs:.0f} |", flush=True)

    # fanout
    log = f"{pl.tmp}/dispatches"
    sw.send_signal(signal.SIGTERM)
    sw.wait()
    sw = swarm(pl, n, 1, token, log)
    wait("all online for fan-out", lambda: pl.online() >= n, 900)
    spec = f"{pl.tmp}/r.toml"
    open(spec, "w").write('name = "fanout"\nselector = "none!=x"\nmax_parallel = "100%"\n[[step]]\nshell = "true"\n')
    t0 = time.time_ns()
    rid = pl.ctl("rollout", "create", "-f", spec).strip()
    wait("rollout done", lambda: json.loads(pl.ctl("rollout", "status", rid, "-o", "json"))["state"]
         in ("succeeded", "failed"), 900)
    done = (time.time_ns() - t0) / 1e6
    lat = [(int(l.split()[1]) - t0) / 1e6 for l in open(log)]
    within = sum(1 for x in lat if x <= 2000) / n * 100
    print(f"\n| fan-out: agents | dispatches | p50 (ms) | p99 (ms) | max (ms) | within 2 s | rollout done (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {n:,} | {len(lat):,} | {pct(lat, 50):.0f} | {pct(lat, 99):.0f} | {max(lat):.0f} | {within:.1f} % | {done:.0f} |",
          flush=True)

    # detect
    if a.detect:
        names = {f"swarm-{i:05}" for i in range(n + 1, n + a.detect + 1)}
        token2 = pl.ctl("token", "create", "--uses", str(a.detect), "--ttl", "24h").strip()
        extra = swarm(pl, a.detect, n + 1, token2)
        wait("detect swarm online", lambda: pl.online(names) >= a.detect, 900)
        time.sleep(3)
        extra.send_signal(signal.SIGSTOP)
        t0 = time.time()
        first = None
        while True:
            on = pl.online(names)
            if first is None and on < a.detect:
                first = time.time() - t0
            if on == 0:
                break
            if time.time() - t0 > 600:
                raise SystemExit("detect: still online after 10 min")
            time.sleep(0.5)
        gone = time.time() - t0
        extra.send_signal(signal.SIGCONT)
        extra.send_signal(signal.SIGTERM)
        extra.wait()
        print(f"\n| detect: agents stopped (SIGSTOP) beside {n:,} | first offline (s) | all offline (s) |")
        print("| --- | --- | --- |")
        print(f"| {a.detect:,} | {first:.1f} | {gone:.1f} |", flush=True)
    sw.send_signal(signal.SIGTERM)
    sw.wait()
    pl.p.terminate()
    pl.p.wait()


if __name__ == "__main__":
    main()
