#!/usr/bin/env python3
"""Agent footprint under load (issue #21; docs/benchmarks.md): one agent
tailing four sources (raw, sshd, fail2ban, suricata) at 250 lines/s each,
1,000 lines/s in all, host metrics every 10 s, for `--seconds` (60):
its RSS (now and peak), its CPU as % of a core, and the bytes it wrote
to disk (/proc/PID/io write_bytes: what reached the block layer, fsyncs'
metadata included) against the bytes appended to the four files; and, as the anchor in the
same run, Prometheus' node_exporter alone (scraped every 10 s): its RSS
and CPU, and the agent's RSS as a multiple of it.

    scripts/bench-agent.py [--seconds 60] [--rate 250]

Uses scripts/bench-events.py's helpers (release binaries, a real control
plane on loopback; BENCH_NO_BUILD=1 reuses the binaries).
"""
import argparse, importlib.util, os, re, shutil, subprocess, tempfile, time, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_events", os.path.join(HERE, "bench-events.py"))
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)
REL, ROOT = ev.REL, ev.ROOT
KINDS = ["raw", "sshd", "fail2ban", "suricata"]


def io(pid, field):
    """A /proc/PID/io counter: `write_bytes` (what reached the block
    layer) or `wchar` (what was passed to write(2))."""
    with open(f"/proc/{pid}/io") as f:
        return int(re.search(rf"^{field}: (\d+)", f.read(), re.M).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rate", type=int, default=250, help="lines/s per source")
    a = ap.parse_args()
    ev.build()
    commit = ev.commit()
    f = ev.Fleet("raw")
    try:
        # Three more sources beside the fleet's raw one; metrics every 10 s.
        f.agent.terminate(); f.agent.wait()
        cfg = f"{f.tmp}/agent/agent.toml"
        text = open(cfg).read().replace('metrics_interval = "1h"', 'metrics_interval = "10s"')
        logs = {"raw": f.log}
        for k in KINDS[1:]:
            logs[k] = f"{f.tmp}/{k}.log"
            open(logs[k], "w").close()
            text += f'\n[[source]]\nkind = "{k}"\npath = "{logs[k]}"\n'
        open(cfg, "w").write(text)
        f.agent = subprocess.Popen([f"{REL}/picket-agent", "run", "--config", cfg], env=f.env,
                                   stderr=subprocess.DEVNULL)
        # The anchor, in the same run: node_exporter alone, scraped every
        # 10 s as the agent samples.
        ne_port = ev.free_port()
        ne = subprocess.Popen([ev.node_exporter(), f"--web.listen-address=127.0.0.1:{ne_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        pid = f.agent.pid
        ne0 = ev.cpu_s(ne.pid)
        next_scrape = time.time()
        base = ev.ingested(f.http)
        c0, w0, x0, t0 = ev.cpu_s(pid), io(pid, "write_bytes"), io(pid, "wchar"), time.time()
        appended, lines, i = 0, 0, 0
        files = {k: open(p, "a") for k, p in logs.items()}
        tick = 0.1
        per_tick = a.rate * tick
        while time.time() - t0 < a.seconds:
            due = t0 + (i + 1) * tick
            for k, fh in files.items():
                n = int(per_tick * (i + 1)) - int(per_tick * i)
                chunk = "".join(ev.vary(ev.LINES[k], i * 1000 + j) + "\n" for j in range(n))
                fh.write(chunk)
                fh.flush()
                appended += len(chunk.encode())
                lines += n
            i += 1
            if time.time() >= next_scrape:
                urllib.request.urlopen(f"http://127.0.0.1:{ne_port}/metrics").read()
                next_scrape += 10
            time.sleep(max(0.0, due - time.time()))
        # Settled: nothing more stored for a second (lines, their events
        # and samples all count as records).
        last, still = -1, 0
        while still < 10:
            now = ev.ingested(f.http)
            still = still + 1 if now == last else 0
            last = now
            time.sleep(0.1)
        dt = time.time() - t0
        cpu = (ev.cpu_s(pid) - c0) / dt * 100
        wrote, passed = io(pid, "write_bytes") - w0, io(pid, "wchar") - x0
        rss, hwm = ev.status_kib(pid, "VmRSS") / 1024, ev.status_kib(pid, "VmHWM") / 1024
        stored = ev.ingested(f.http) - base
        ne_cpu = (ev.cpu_s(ne.pid) - ne0) / dt * 100
        ne_rss = ev.status_kib(ne.pid, "VmRSS") / 1024
        ne.terminate()
        ne.wait()
        print(f"commit {commit}; {len(KINDS)} sources × {a.rate} lines/s for {a.seconds} s, metrics every 10 s\n")
        print("| lines appended | records stored (lines, events, samples) | agent RSS now / peak (MiB) | agent CPU (% of a core) | µs a line | write(2) ÷ appended | disk written ÷ appended | node_exporter RSS (MiB) / CPU (%) | agent ÷ node_exporter, RSS |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {lines:,} ({appended / 1e6:.1f} MB) | {stored:,} | {rss:.1f} / {hwm:.1f} | {cpu:.1f} | "
              f"{cpu / 100 * dt / max(1, lines) * 1e6:.0f} | {passed / max(1, appended):.1f}× | {wrote / max(1, appended):.1f}× | "
              f"{ne_rss:.1f} / {ne_cpu:.2f} | {rss / ne_rss:.2f}× |")
    finally:
        f.close()


if __name__ == "__main__":
    main()
