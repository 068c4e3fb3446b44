#!/usr/bin/env python3
"""Event pipeline benchmark: lines per second from append to acknowledged in
the control plane's store, for each parser, and latency from append to
visible in `picketctl logs -f` (p50/p99) at a steady 1,000 lines/s.
Beside each parser's row, the anchor measured in the same run: socat
copying the same bytes over loopback TCP into /dev/null (installed if
missing), and Picket's rate as a fraction of it.

    scripts/bench-events.py [--lines 200000] [--rate 1000] [--seconds 20]

BENCH_NO_BUILD=1 reuses the release binaries as they are; BENCH_PERF=DIR
samples both processes with `perf record -g` into DIR while they work.

Builds release binaries, runs a real control plane and agent on loopback in
a temp folder, and prints Markdown tables (see docs/benchmarks.md).
"""
import argparse, json, os, re, shutil, socket, subprocess, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
CORPUS = os.path.join(ROOT, "tests", "corpus")

# One representative line per parser; the benchmark appends copies of it,
# each varied (`vary`): address, port, flow id.
LINES = {
    "raw": "Nov 23 09:12:44 vm-prod app[4188]: GET /api/v1/items?page=2 200 0.012s",
    "sshd": "Nov 23 09:12:45 vm-prod sshd[4188]: Failed password for invalid user oracle from 203.0.113.77 port 40112 ssh2",
    "fail2ban": "2026-11-23 09:14:02,118 fail2ban.actions        [6447]: NOTICE  [sshd] Ban 203.0.113.77",
    "suricata": '{"timestamp":"2026-11-23T09:14:02.118000+0000","flow_id":1042210044,"event_type":"alert","src_ip":"203.0.113.77","src_port":40522,"dest_ip":"10.0.1.10","dest_port":80,"proto":"TCP","alert":{"action":"allowed","gid":1,"signature_id":2013028,"rev":7,"signature":"ET POLICY curl User-Agent Outbound","category":"Attempted Information Leak","severity":2}}',
    "ossec": '{"timestamp":"2026-11-23T09:14:02.118+0000","rule":{"level":10,"description":"sshd: brute force","id":"5712","groups":["syslog","sshd"]},"agent":{"id":"000","name":"vm-prod"},"data":{"srcip":"203.0.113.77","srcuser":"oracle"},"location":"/var/log/auth.log"}',
}


NOISE = int(os.environ.get("BENCH_NOISE", "0"))


def vary(line, i):
    """Copy `i` of a line, with its address, port, flow id and page
    varied: blocks and buffer chunks are compressed, and copies of one
    line would compress far better than a real log. BENCH_NOISE=N also puts
    N random hex digits in the Suricata signature and the OSSEC
    description, for text that compresses about as well as the corpus."""
    if NOISE:
        tag = os.urandom(NOISE // 2 + 1).hex()[:NOISE]
        line = line.replace("Outbound", f"Outbound {tag}").replace("brute force", f"brute force {tag}")
    return (line.replace("203.0.113.77", f"203.0.{i // 250 % 250}.{i % 250 + 1}")
            .replace("40522", str(1024 + i % 60000)).replace("40112", str(1024 + i % 60000))
            .replace("1042210044", str(1042210044 + i * 7919)).replace("page=2", f"page={i}"))


def build():
    """The release binaries the benchmarks run (unless BENCH_NO_BUILD)."""
    if not os.environ.get("BENCH_NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "picket-control", "-p", "picket-agent",
                        "-p", "picketctl"], cwd=ROOT, check=True)


def free_port():
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_exporter():
    """Prometheus' node_exporter (Debian prometheus-node-exporter), the
    anchor the agent's footprint is measured beside; installed if missing."""
    path = shutil.which("prometheus-node-exporter")
    if not path:
        subprocess.run(["apt-get", "install", "-y", "-qq", "prometheus-node-exporter"], check=True)
        path = shutil.which("prometheus-node-exporter")
    return path


def commit():
    """HEAD's short hash, for a result's row."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def run(cmd, env):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)


def wait_re(path, pattern, limit=30):
    end = time.time() + limit
    while time.time() < end:
        m = re.search(pattern, open(path).read())
        if m:
            return m
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {pattern!r} in {path}")


TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def written_mb(pid):
    """Bytes the process has passed to write(2) and friends, in MB."""
    with open(f"/proc/{pid}/io") as f:
        return int(re.search(r"^wchar: (\d+)", f.read(), re.M).group(1)) / 1e6


def metric(http, name):
    """A single-value gauge of the control plane's /metrics (0 if absent)."""
    body = urllib.request.urlopen(f"http://{http}/metrics").read().decode()
    m = re.search(rf"^{name} (\d+)", body, re.M)
    return int(m.group(1)) if m else 0


def ingested(http):
    return metric(http, "picket_control_records_ingested")


def status_kib(pid, field):
    """A /proc/PID/status field in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1))


class Fleet:
    def __init__(self, kind, alerts=None):
        """A control plane and one agent tailing a `kind` source; `alerts`
        is the text of an alert file for the control plane, if any."""
        self.tmp = tempfile.mkdtemp(prefix="picket-bench-ev-")
        t = self.tmp
        self.env = dict(os.environ, HOME=t, PICKET_CONFIG_DIR=f"{t}/cfg", RUST_LOG="warn,picket_control::server=info")
        out = run([f"{REL}/picket-control", "init", "--data-dir", f"{t}/cp"], self.env).stdout
        fp = re.search(r"sha256:[0-9a-f]{64}", out).group(0)
        if alerts is not None:
            open(f"{t}/cp/alerts.toml", "w").write(alerts)
            cfg = open(f"{t}/cp/control.toml").read()
            open(f"{t}/cp/control.toml", "w").write('alerts = "alerts.toml"\n' + cfg)
        self.cp = subprocess.Popen([f"{REL}/picket-control", "run", "--config", f"{t}/cp/control.toml",
                                    "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
                                   env=self.env, stderr=open(f"{t}/cp.err", "w"))
        m = wait_re(f"{t}/cp.err", r"grpc=(\S+) http=(\S+)")
        self.grpc, self.http = m.group(1), m.group(2)
        self.flags = ["--server", self.grpc, "--ca", f"{t}/cp/ca.crt", "--cert", f"{t}/cp/admin.crt", "--key", f"{t}/cp/admin.key"]
        tok = run([f"{REL}/picketctl", *self.flags, "token", "create"], self.env).stdout.strip()
        run([f"{REL}/picket-agent", "enroll", "--server", self.grpc, "--token", tok, "--ca-fingerprint", fp,
             "--name", "bench", "--state-dir", f"{t}/agent"], self.env)
        self.log = f"{t}/source.log"
        open(self.log, "w").close()
        with open(f"{t}/agent/agent.toml", "a") as f:
            f.write(f'\n[[source]]\nkind = "{kind}"\npath = "{self.log}"\n')
        cfg = open(f"{t}/agent/agent.toml").read().replace('metrics_interval = "10s"', 'metrics_interval = "1h"')
        open(f"{t}/agent/agent.toml", "w").write(cfg)
        self.agent = subprocess.Popen([f"{REL}/picket-agent", "run", "--config", f"{t}/agent/agent.toml"],
                                      env=self.env, stderr=subprocess.DEVNULL)
        time.sleep(2)

    def close(self):
        for p in (self.agent, self.cp):
            p.terminate()
            p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def throughput(kind, n, alerts=None):
    f = Fleet(kind, alerts)
    try:
        base = ingested(f.http)
        per_line = 1 if kind == "raw" else 2  # the line, and its event
        want = base + n * per_line
        chunks = ["".join(vary(LINES[kind], k * 10000 + i) + "\n" for i in range(10000))
                  for k in range(n // 10000)]
        perf = []
        if os.environ.get("BENCH_PERF"):
            # Sample both processes while they work: perf.<kind>.{agent,cp}.data in BENCH_PERF.
            for who, p in (("agent", f.agent), ("cp", f.cp)):
                out = os.path.join(os.environ["BENCH_PERF"], f"perf.{kind}.{who}.data")
                perf.append(subprocess.Popen(["perf", "record", "-q", "-F", "999", "-g", "-o", out, "-p", str(p.pid)],
                                             stderr=subprocess.DEVNULL))
            time.sleep(0.5)
        t0 = time.time()
        cpu0 = cpu_s(f.agent.pid), cpu_s(f.cp.pid)
        w0 = written_mb(f.agent.pid), written_mb(f.cp.pid)
        with open(f.log, "a") as out:
            for chunk in chunks:
                out.write(chunk)
                out.flush()
        while ingested(f.http) < want:
            time.sleep(0.05)
        dt = time.time() - t0
        cpu = cpu_s(f.agent.pid) - cpu0[0], cpu_s(f.cp.pid) - cpu0[1]
        mb = written_mb(f.agent.pid) - w0[0], written_mb(f.cp.pid) - w0[1]
        for p in perf:
            p.send_signal(2)
            p.wait()
        anchor = socat_copy("".join(chunks).encode(), f.tmp)
        return n / dt, dt, cpu, mb, n / anchor
    finally:
        f.close()


def socat_copy(data, tmp):
    """The anchor beside ingest, in the same run: seconds for socat to copy
    the same bytes over loopback TCP into /dev/null (no TLS, no parsing,
    no disk)."""
    if not shutil.which("socat"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "socat"], check=True)
    path = os.path.join(tmp, "anchor.bytes")
    with open(path, "wb") as out:
        out.write(data)
    port = free_port()
    sink = subprocess.Popen(["socat", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", "OPEN:/dev/null"])
    time.sleep(0.2)
    t0 = time.time()
    subprocess.run(["socat", "-u", f"FILE:{path}", f"TCP:127.0.0.1:{port}"], check=True)
    sink.wait(timeout=60)
    return time.time() - t0


def latency(rate, seconds):
    f = Fleet("raw")
    try:
        follow = subprocess.Popen([f"{REL}/picketctl", *f.flags, "logs", "-f", "-o", "json"], env=f.env,
                                  stdout=subprocess.PIPE, text=True)
        lat = []
        total = rate * seconds
        def reader():
            for l in follow.stdout:
                m = re.search(r"t=(\d+)", json.loads(l)["line"])
                if m:
                    lat.append(time.time_ns() - int(m.group(1)))
                if len(lat) >= total:
                    return
        th = threading.Thread(target=reader)
        th.start()
        time.sleep(1)
        with open(f.log, "a") as out:
            start = time.time()
            for i in range(total):
                target = start + i / rate
                d = target - time.time()
                if d > 0:
                    time.sleep(d)
                out.write(f"bench line {i} t={time.time_ns()}\n")
                out.flush()
        th.join(timeout=30)
        follow.terminate()
        lat.sort()
        ms = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6
        return len(lat), ms(0.5), ms(0.99), ms(1.0) if lat else 0
    finally:
        f.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--parsers", default=",".join(LINES), help="comma-separated subset")
    ap.add_argument("--no-latency", action="store_true")
    a = ap.parse_args()
    build()
    print(f"| parser | lines | seconds | lines/s (append → acked in store) | agent CPU s | control plane CPU s | agent MB written | control plane MB written | socat loopback copy, lines/s | picket ÷ socat |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in a.parsers.split(","):
        rate, dt, (agent_cpu, cp_cpu), (agent_mb, cp_mb), anchor = throughput(kind, a.lines)
        print(f"| {kind} | {a.lines} | {dt:.2f} | {rate:,.0f} | {agent_cpu:.2f} | {cp_cpu:.2f} | {agent_mb:,.0f} | {cp_mb:,.0f} | "
              f"{anchor:,.0f} | {rate / anchor:.3f}× |", flush=True)
    if a.no_latency:
        return
    n, p50, p99, mx = latency(a.rate, a.seconds)
    print()
    print("| rate | lines seen | p50 (ms) | p99 (ms) | max (ms) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {a.rate}/s | {n} | {p50:.1f} | {p99:.1f} | {mx:.1f} |")


if __name__ == "__main__":
    main()
