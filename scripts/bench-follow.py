#!/usr/bin/env python3
"""Follower benchmark (issue #26; docs/benchmarks.md): a burst of raw lines
appended at once while `picketctl logs -f -o json` and `picketctl logs -f`
follow, side by side.

For each: lines/s from the first append to the last line printed (the
reader takes what picketctl writes in 1 MiB reads, as a pipe into
/dev/null would), beside the store's own ingest rate in the same run. The
JSON follower's output is checked line by line: every appended line once,
in order. Also the control plane's peak RSS during the burst against its
RSS before, and how many times a follower caught up from the store.

    scripts/bench-follow.py [--lines 1000000] [--queue-bytes 16777216]

BENCH_NO_BUILD=1 reuses the release binaries as they are.
"""
import argparse, importlib.util, os, re, subprocess, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_events", os.path.join(ROOT, "scripts", "bench-events.py"))
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)
REL = ev.REL


status_kib, metric = ev.status_kib, ev.metric


class Reader(threading.Thread):
    """Reads a follower's stdout in big chunks; with `check`, verifies the
    `n=<i>` of every line is the next one (JSON: exactly once, in order)."""

    def __init__(self, proc, want, check):
        super().__init__(daemon=True)
        self.proc, self.want, self.check = proc, want, check
        self.lines, self.last_at, self.bad = 0, None, []

    def run(self):
        fd, rest, expect = self.proc.stdout.fileno(), b"", 0
        pat = re.compile(rb"n=(\d+) ")
        while self.lines < self.want:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            whole, rest = data[:cut], data[cut:]
            if self.check:
                for m in pat.finditer(whole):
                    i = int(m.group(1))
                    if i != expect and len(self.bad) < 5:
                        self.bad.append((expect, i))
                    expect = i + 1
            self.lines += whole.count(b"\n")
            self.last_at = time.time()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--queue-bytes", type=int, default=16 * 1024 * 1024)
    a = ap.parse_args()
    ev.build()
    f = ev.Fleet("raw")
    try:
        # The queue bound under test: restart with it set.
        cfg = f"{f.tmp}/cp/control.toml"
        text = open(cfg).read()
        if "[limits]" in text:
            text = text.replace("[limits]", f"[limits]\nfollower_queue_bytes = {a.queue_bytes}", 1)
        else:
            text += f"\n[limits]\nfollower_queue_bytes = {a.queue_bytes}\n"
        open(cfg, "w").write(text)
        f.agent.terminate(); f.agent.wait()
        f.cp.terminate(); f.cp.wait()
        f.cp = subprocess.Popen([f"{REL}/picket-control", "run", "--config", cfg, "--listen", f.grpc,
                                 "--http-listen", f.http], env=f.env, stderr=open(f"{f.tmp}/cp2.err", "w"))
        ev.wait_re(f"{f.tmp}/cp2.err", r"grpc=(\S+) http=(\S+)")
        f.agent = subprocess.Popen([f"{REL}/picket-agent", "run", "--config", f"{f.tmp}/agent/agent.toml"],
                                   env=f.env, stderr=subprocess.DEVNULL)
        time.sleep(2)
        followers = {}
        for name, out in (("json", ["-o", "json"]), ("table", [])):
            p = subprocess.Popen([f"{REL}/picketctl", *f.flags, "logs", "-f", *out], env=f.env,
                                 stdout=subprocess.PIPE, stderr=open(f"{f.tmp}/{name}.err", "w"))
            followers[name] = p
        time.sleep(1.5)
        readers = {n: Reader(p, a.lines, n == "json") for n, p in followers.items()}
        for r in readers.values():
            r.start()
        rss0 = status_kib(f.cp.pid, "VmRSS")
        base = ev.ingested(f.http)
        peak, stored_at = rss0, None
        t0 = time.time()
        with open(f.log, "a") as out:
            for k in range(0, a.lines, 10_000):
                out.write("".join(f"burst n={i} {ev.vary(ev.LINES['raw'], i)}\n"
                                  for i in range(k, min(a.lines, k + 10_000))))
                out.flush()
        deadline = time.time() + 600
        while time.time() < deadline and any(r.is_alive() for r in readers.values()):
            peak = max(peak, status_kib(f.cp.pid, "VmRSS"))
            if stored_at is None and ev.ingested(f.http) >= base + a.lines:
                stored_at = time.time()
            time.sleep(0.05)
        stored_at = stored_at or time.time()
        catch_ups = metric(f.http, "picket_control_follower_catch_ups")
        hwm = status_kib(f.cp.pid, "VmHWM")
        print(f"| lines | ingest lines/s (append → stored) | follower | lines printed | lines/s (append → last printed) | exactly once, in order | catch-ups (both) | control plane RSS before → peak (MiB) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r in readers.items():
            got = r.lines
            dt = (r.last_at or time.time()) - t0
            once = "n/a" if name == "table" else ("yes" if got == a.lines and not r.bad else f"NO {r.bad}")
            print(f"| {a.lines:,} | {a.lines / (stored_at - t0):,.0f} | `logs -f{' -o json' if name == 'json' else ''}` | "
                  f"{got:,} | {got / dt:,.0f} | {once} | {catch_ups} | {rss0 / 1024:.1f} → {max(peak, hwm) / 1024:.1f} |",
                  flush=True)
        for p in followers.values():
            p.terminate()
    finally:
        f.close()


if __name__ == "__main__":
    main()
