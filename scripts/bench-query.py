#!/usr/bin/env python3
"""Query benchmark (issue #21; docs/benchmarks.md): `picketctl logs --tail 5`,
`--grep RARE` and `--since` over N stored raw lines, beside the same ask of
the raw file in the same run (GNU `tail -n 5`, `grep RARE`).

Appends N lines (one in 100,000 holds the word RARE), waits until every one
is stored, then runs each query several times and prints the median wall
time (picketctl's whole run: start, TLS, query, output), the lines printed,
and the anchor's time and ratio. A floor row (`agents list`) shows what a
round trip costs with no records read.

    scripts/bench-query.py [--lines 1000000] [--runs 5]

BENCH_NO_BUILD=1 reuses the release binaries as they are.
"""
import argparse, importlib.util, os, statistics, subprocess, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_events", os.path.join(ROOT, "scripts", "bench-events.py"))
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)
REL = ev.REL


def timed(cmd, env, runs):
    """Median wall seconds of `runs` runs, and the lines the last printed."""
    times, lines = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE)
        # grep's 1 is "no match" (fewer than 100,000 lines hold no RARE).
        if p.returncode > 1 or (p.returncode == 1 and cmd[0] != "grep"):
            raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}")
        out = p.stdout
        times.append(time.perf_counter() - t0)
        lines = out.count(b"\n")
    return statistics.median(times), lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    ev.build()
    commit = ev.commit()
    f = ev.Fleet("raw")
    try:
        base = ev.ingested(f.http)
        t0 = time.time()
        with open(f.log, "a") as out:
            for k in range(0, a.lines, 10_000):
                out.write("".join(
                    f"n={i} RARE {ev.vary(ev.LINES['raw'], i)}\n" if i % 100_000 == 50_000
                    else f"n={i} {ev.vary(ev.LINES['raw'], i)}\n"
                    for i in range(k, min(a.lines, k + 10_000))))
        while ev.ingested(f.http) < base + a.lines:
            if time.time() - t0 > 3600:
                raise SystemExit("not all lines stored within an hour")
            time.sleep(0.2)
        stored_s = time.time() - t0
        size_mb = os.path.getsize(f.log) / 1e6
        ctl = [f"{REL}/picketctl", *f.flags]
        # Let the last batch's flush and the agent's acks settle.
        time.sleep(1)
        rows = [
            ("`agents list` (floor: a round trip, no records)", ctl + ["agents", "list"], None),
            ("`logs --tail 5`", ctl + ["logs", "--tail", "5"], ["tail", "-n", "5", f.log]),
            ("`logs --grep RARE`", ctl + ["logs", "--grep", "RARE"], ["grep", "RARE", f.log]),
            ("`logs --grep RARE --tail 1`", ctl + ["logs", "--grep", "RARE", "--tail", "1"], None),
        ]
        print(f"{a.lines:,} raw lines ({size_mb:.0f} MB) stored in {stored_s:.1f} s; commit {commit}; "
              f"median of {a.runs} runs\n")
        print("| stored lines | query | lines printed | picketctl (ms) | anchor | anchor (ms) | anchor ÷ picketctl |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, cmd, anchor in rows:
            s, n = timed(cmd, f.env, a.runs)
            if anchor:
                s2, _ = timed(anchor, f.env, a.runs)
                tail = f"`{' '.join(anchor[:-1])}` on the file | {s2 * 1000:.1f} | {s2 / s:.2f}×"
            else:
                tail = "— | — | —"
            print(f"| {a.lines:,} | {name} | {n:,} | {s * 1000:.1f} | {tail} |", flush=True)
        # `--since` seeks by time: 1,000 lines appended now, asked for with
        # a window that holds only them.
        time.sleep(3.5)
        base = ev.ingested(f.http)
        with open(f.log, "a") as out:
            out.write("".join(f"late n={i} {ev.vary(ev.LINES['raw'], i)}\n" for i in range(1_000)))
        while ev.ingested(f.http) < base + 1_000:
            time.sleep(0.05)
        s, n = timed(ctl + ["logs", "--since", "2s"], f.env, a.runs)
        print(f"| {a.lines:,} | `logs --since 2s` (the last 1,000) | {n:,} | {s * 1000:.1f} | — | — | — |")
    finally:
        f.close()


if __name__ == "__main__":
    main()
