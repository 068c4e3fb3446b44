#!/usr/bin/env python3
"""Operations benchmark (docs/operations.md, sizing; docs/benchmarks.md):

- disk: the control plane's data folder (sled index + block segments)
  per million raw log lines, and per million Suricata lines (each a line
  and its event);
- backup under load: `picket-control backup` of that store while an agent
  writes, how long the control plane held writes, how long the backup and
  a restore took, the archive's size;
- memory per agent: the control plane's RSS with one agent connected and
  with N (each a real `picket-agent` process, metrics every 10 s).

    scripts/bench-ops.py [--lines 1000000] [--agents 50]

BENCH_NO_BUILD=1 reuses the release binaries as they are.
"""
import argparse, importlib.util, os, re, subprocess, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_events", os.path.join(ROOT, "scripts", "bench-events.py"))
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)
REL = ev.REL


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(d, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def rss_kib(pid):
    return ev.status_kib(pid, "VmRSS")


def append(f, kind, start, n):
    with open(f.log, "a") as out:
        for k in range(start // 10000, (start + n) // 10000):
            out.write("".join(ev.vary(ev.LINES[kind], k * 10000 + i) + "\n" for i in range(10000)))
            out.flush()


def disk_and_backup(kind, n):
    f = ev.Fleet(kind)
    try:
        data = os.path.join(f.tmp, "cp")
        per_line = 1 if kind == "raw" else 2
        base_disk = du(os.path.join(data, "store")) + du(os.path.join(data, "blocks"))
        base = ev.ingested(f.http)
        append(f, kind, 0, n)
        while ev.ingested(f.http) < base + n * per_line:
            time.sleep(0.2)
        time.sleep(1.5)  # sled's flush and the last segment sync
        store, blocks = du(os.path.join(data, "store")), du(os.path.join(data, "blocks"))
        per_m = (store + blocks - base_disk) * 1_000_000 / n
        # Backup while another 20 % is written.
        more = threading.Thread(target=append, args=(f, kind, n, n // 5))
        more.start()
        time.sleep(0.3)
        out = os.path.join(f.tmp, "backup.tar")
        t0 = time.time()
        said = ev.run([f"{REL}/picket-control", "backup", "--config", f"{data}/control.toml", "--out", out], f.env).stdout
        backup_s = time.time() - t0
        held = int(re.search(r"writes held for (\d+) ms", said).group(1))
        more.join()
        t0 = time.time()
        ev.run([f"{REL}/picket-control", "restore", "--from", out, "--data-dir", os.path.join(f.tmp, "restored")], f.env)
        restore_s = time.time() - t0
        return dict(kind=kind, n=n, store=store, blocks=blocks, per_m=per_m, held=held,
                    backup_s=backup_s, restore_s=restore_s, archive=os.path.getsize(out))
    finally:
        f.close()


def memory(agents):
    f = ev.Fleet("raw")
    procs = []
    try:
        time.sleep(3)
        one = rss_kib(f.cp.pid)
        t = f.tmp
        fp = re.search(r"sha256:[0-9a-f]{64}", open(f"{t}/cp.err").read()).group(0)
        # Enrollment is rate-limited per address (10 a minute by default):
        # pace the agents under it, as a real fleet's provisioning would.
        for i in range(agents - 1):
            if i and i % 9 == 0:
                time.sleep(61)
            tok = ev.run([f"{REL}/picketctl", *f.flags, "token", "create"], f.env).stdout.strip()
            ev.run([f"{REL}/picket-agent", "enroll", "--server", f.grpc, "--token", tok, "--ca-fingerprint", fp,
                    "--name", f"m{i}", "--state-dir", f"{t}/m{i}"], f.env)
            procs.append(subprocess.Popen([f"{REL}/picket-agent", "run", "--config", f"{t}/m{i}/agent.toml"],
                                          env=f.env, stderr=subprocess.DEVNULL))
        time.sleep(30)  # a few metrics samples and heartbeats each
        many = rss_kib(f.cp.pid)
        return one, many
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        f.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-disk", action="store_true", help="only the memory figures")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--agents", type=int, default=50)
    a = ap.parse_args()
    if not os.environ.get("BENCH_NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], cwd=ROOT, check=True)
    if a.skip_disk:
        return memory_table(a.agents)
    print("| source | lines | sled index (MB) | block segments (MB) | disk per million lines (MB) | writes held by backup (ms) | backup (s) | archive (MB) | restore (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, n in (("raw", a.lines), ("suricata", a.lines // 2)):
        r = disk_and_backup(kind, n)
        print(f"| {kind} | {n:,} | {r['store'] / 1e6:.1f} | {r['blocks'] / 1e6:.1f} | {r['per_m'] / 1e6:.1f} | "
              f"{r['held']} | {r['backup_s']:.1f} | {r['archive'] / 1e6:.1f} | {r['restore_s']:.1f} |", flush=True)
    print()
    memory_table(a.agents)


def memory_table(agents):
    one, many = memory(agents)
    print("| agents connected | control plane RSS (MiB) | per extra agent (KiB) |")
    print("| --- | --- | --- |")
    print(f"| 1 | {one / 1024:.1f} | |")
    print(f"| {agents} | {many / 1024:.1f} | {(many - one) / (agents - 1):.0f} |")


if __name__ == "__main__":
    main()
