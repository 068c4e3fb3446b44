#!/usr/bin/env python3
"""Alert benchmark (issue #12): the event pipeline's ingest throughput with
20 alert rules loaded against none, and the delay from a matching line
appended to the webhook receiving its notification.

    scripts/bench-alerts.py [--lines 200000] [--runs 2] [--samples 30]

Uses scripts/bench-events.py's fleet (release binaries, a real control
plane and agent on loopback; BENCH_NO_BUILD=1 reuses the binaries).
Throughput is append → acked in store, as there, for Suricata and
fail2ban lines, with: no alert file; 20 rules none of which match the
traffic; 20 rules of which two match every line (an `event` rule and an
`event_count` rule: every event is decoded and goes through the engine).
Latency: one sshd failure every 3 s, each firing a fresh alert (it
resolves after 1 s) to a webhook receiver in this script, with
`group_wait = "0s"`; the time from the append to the POST arriving.
Prints Markdown tables (see docs/benchmarks.md).
"""
import argparse, http.server, importlib.util, json, os, statistics, subprocess, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_events", os.path.join(HERE, "bench-events.py"))
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)

# Eighteen rules the benchmark's traffic never matches, as a fleet's file
# would hold them: thresholds, host_silent, rollout_failed, and event rules
# on other sources and kinds.
QUIET = """
[[rule]]
name = "HostDown"
kind = "host_silent"
after = "1h"
[[rule]]
name = "RolloutFailed"
kind = "rollout_failed"
""" + "".join(f"""
[[rule]]
name = "Cpu{i}"
kind = "threshold"
metric = "cpu_usage_percent"
op = ">"
value = {90 + i}
for = "5m"
""" for i in range(4)) + "".join(f"""
[[rule]]
name = "Disk{i}"
kind = "threshold"
metric = "disk_used_bytes"
op = ">"
value = {10**12 * (i + 1)}
""" for i in range(2)) + "".join(f"""
[[rule]]
name = "Ossec{i}"
kind = "event"
match = {{ source = "ossec", severity = "critical", "fields.rule_id" = "{5700 + i}" }}
""" for i in range(5)) + "".join(f"""
[[rule]]
name = "Brute{i}"
kind = "event_count"
match = {{ source = "sshd", kind = "invalid_user" }}
count = {5 + i}
window = "1m"
""" for i in range(5))

def with_quiet(extra, n_extra):
    """QUIET plus `extra`, topped up to 20 rules with more quiet ones."""
    pad = "".join(f"""
[[rule]]
name = "Pad{i}"
kind = "event"
match = {{ source = "fail2ban", kind = "unban", "fields.jail" = "nothing{i}" }}
""" for i in range(20 - 18 - n_extra))
    return QUIET + pad + extra

NONE_MATCH = with_quiet("", 0)
TWO_MATCH = with_quiet("""
[[rule]]
name = "IdsAlert"
kind = "event"
match = { source = "suricata", kind = "alert", severity = "medium" }
[[rule]]
name = "Bans"
kind = "event_count"
match = { source = "fail2ban", kind = "ban" }
count = 5
window = "1m"
""", 2)


def latency(samples):
    got = {}

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            now = time.time()
            for a in body.get("alerts", []):
                if body["status"] == "firing" and a["status"] == "firing":
                    got.setdefault(a["annotations"].get("summary", ""), now)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    rules = f"""
[defaults]
group_wait = "0s"
group_interval = "1s"
[[rule]]
name = "SshFailure"
kind = "event"
match = {{ source = "sshd", kind = "invalid_user" }}
resolve_after = "1s"
summary = "{{{{ fields.user }}}}"
[[notifier]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{srv.server_port}/hook"
[[route]]
notifiers = ["hook"]
"""
    f = ev.Fleet("sshd", rules)
    sent = {}
    try:
        with open(f.log, "a") as out:
            for i in range(samples):
                user = f"bench{i}"
                sent[user] = time.time()
                out.write(f"Nov 23 09:12:45 vm-prod sshd[4188]: Failed password for invalid user {user} from 203.0.113.77 port 40112 ssh2\n")
                out.flush()
                time.sleep(3)
        time.sleep(2)
    finally:
        f.close()
        srv.shutdown()
    lat = sorted((got[u] - t) * 1000 for u, t in sent.items() if u in got)
    return len(sent), lat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--parsers", default="suricata,fail2ban")
    a = ap.parse_args()
    ev.build()
    print("| parser | alert file | lines/s (append → acked in store), runs | control plane CPU s |")
    print("| --- | --- | --- | --- |")
    for kind in a.parsers.split(","):
        for label, rules in (("none", None), ("20 rules, none matching", NONE_MATCH), ("20 rules, 2 matching every line", TWO_MATCH)):
            rates, cpus = [], []
            for _ in range(a.runs):
                rate, _dt, (_agent_cpu, cp_cpu), _mb, _anchor = ev.throughput(kind, a.lines, rules)
                rates.append(rate)
                cpus.append(cp_cpu)
            print(f"| {kind} | {label} | {' · '.join(f'{r:,.0f}' for r in rates)} | {min(cpus):.2f}–{max(cpus):.2f} |", flush=True)
    n, lat = latency(a.samples)
    print()
    print("| lines | notified | p50 (ms) | p99 (ms) | max (ms) |")
    print("| --- | --- | --- | --- | --- |")
    if lat:
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        print(f"| {n} | {len(lat)} | {statistics.median(lat):.0f} | {q(0.99):.0f} | {lat[-1]:.0f} |")
    else:
        print(f"| {n} | 0 | - | - | - |")


if __name__ == "__main__":
    main()
