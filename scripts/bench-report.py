#!/usr/bin/env python3
"""Writes docs/benchmarks.md from the JSON lines scripts/bench collected.

usage: scripts/bench-report.py RESULTS.jsonl OUT.md
"""
import datetime
import json
import os
import platform
import sys

NAMES = {"parley": "Parley", "parley-pg": "Parley on PostgreSQL", "socketio": "Socket.IO 4", "relay": "floor relay", "relay-ack": "floor relay + acks"}

COMMANDS = """## Commands

What `scripts/bench` runs (`PORT` 18600; every server under `taskset -c 0`, every load under `taskset -c 1`):

```sh
parley agent add bench$i --password bench-password --max-active 100       # i = 0 .. PAIRS-1
parley serve --listen 127.0.0.1:$PORT --data-dir $FRESH_COPY --tcp-listen '' \\
  --rate-per-sec 1000 --rate-burst 1000 --max-active 100
node bench/socketio-relay.js $PORT
target/release/examples/floor-relay 127.0.0.1:$PORT [--ack]

parley-bench --target T --server 127.0.0.1:$PORT --pid $SERVER --sources 8 idle --connections $IDLE --hold 10
parley-bench --target T ... sweep --pairs $PAIRS --rates $RATES --duration $DURATION --out docs/bench-sweep-T.md
parley-bench ... storm --customers $STORM
parley-bench ... agent-load --customers 50 --each 1 --duration $DURATION
```
"""


def main(results_path, out):
    rows = [json.loads(line) for line in open(results_path) if line.strip()]
    failed = [r for r in rows if "mode" not in r]
    by = {}
    for r in rows:
        if "mode" in r:
            by[(r.get("target", "parley"), r["mode"])] = r
    targets = [t for t in NAMES if (t, "sweep") in by or (t, "idle") in by]
    sweeps = {t: {run["offered_msg_per_sec"]: run for run in by[(t, "sweep")]["runs"]} for t in targets if (t, "sweep") in by}

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) // 1024 // 1024
    md = [
        "# Benchmarks\n",
        f"Measured by `scripts/bench` on {datetime.date.today()}: {os.cpu_count()} cores ({cpu}), {mem} GiB, "
        f"{platform.system()} {platform.release()}. Every server is pinned to core 0 and the load generator "
        "(`parley-bench`, one thread) to core 1. Parley commits every message to SQLite with fsync "
        "(`--sync full`) before its ack; the relays store nothing:\n",
        "- **Socket.IO 4**: `bench/socketio-relay.js`, Node.js "
        + node_version()
        + ", WebSocket transport, each pair of clients in its own room, `msg` events relayed to the room.",
        "- **floor relay**: `bench/floor-relay.rs`, one tokio thread relaying WebSocket text frames within a room: "
        "the least this machine needs to move a message, with no protocol, storage or acks.",
        "- **floor relay + acks**: the same relay started with `--ack`, which also answers every frame to its "
        "sender with a short frame (`ack:t:MICROS`): the one extra frame per message that Parley's protocol "
        "requires, and nothing else. Against it, Parley's CPU shows what JSON, routing and storage cost.\n",
        "Reproduce with `scripts/bench` (about 20 minutes; `PAIRS`, `RATES`, `DURATION`, `IDLE`, `STORM` and "
        "`TARGETS` override the standard set). CPU is the server process's user + system time from "
        "`/proc/PID/stat`, so it is comparable even where the load generator is the limit.\n",
    ]
    if failed:
        md.append("**Runs that failed:** " + "; ".join(r.get("error", "?") for r in failed) + "\n")

    md.append("## Against the targets\n")
    md.append("| target | measured | met |\n|---|---|---|")
    for t, m, ok in targets_rows(by, sweeps):
        md.append(f"| {t} | {m} | {'yes' if ok else '**no**'} |")
    md.append("")

    if sweeps:
        md.append("## Conversations: Parley beside Socket.IO and the floor\n")
        md.append(
            f"{sweep_setting(by, 'pairs')} conversations, {sweep_setting(by, 'duration_secs')} s per rate, each two clients sending to each other at an equal share of the "
            f"offered total, 64-byte bodies. p99 is end to end (sender's clock to receiver, one machine). "
            "A dash: that target was already saturated at a lower rate.\n"
        )
        rates = sorted({r for s in sweeps.values() for r in s})
        head = ["offered msg/s"] + [f"{NAMES[t]} p99 ms" for t in sweeps] + [f"{NAMES[t]} CPU-s / M" for t in sweeps]
        ratio_cols = [t for t in ("socketio", "relay", "relay-ack") if t in sweeps and "parley" in sweeps]
        head += [f"Parley / {NAMES[t]} CPU" for t in ratio_cols]
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "---|" * len(head))
        for rate in rates:
            cells = [str(rate)]
            cells += [cell(sweeps[t].get(rate), lambda r: r["latency"]["p99_ms"]) for t in sweeps]
            cells += [cell(sweeps[t].get(rate), lambda r: r["server_cpu_secs_per_million"]) for t in sweeps]
            for t in ratio_cols:
                a, b = sweeps["parley"].get(rate), sweeps[t].get(rate)
                q = cpu_ratio(a, b) if a and b else None
                cells.append(f"{q:.1f}x" if q else "-")
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
        md.append("Highest offered rate each target carried (at least 98 % delivered; nothing lost, duplicated or "
                  "out of order) within a p99 bound:\n")
        md.append("| | p99 <= 10 ms | p99 <= 50 ms | lost, duplicated, out of order (all runs) |\n|---|---|---|---|")
        for t, s in sweeps.items():
            bad = sum(r["lost"] + r["duplicated"] + r["out_of_order"] for r in s.values())
            md.append(f"| {NAMES[t]} | {carried(s, 10)} | {carried(s, 50)} | {bad} |")
        md.append("")

    cluster = "docs/bench-cluster.md"
    if os.path.exists(cluster):  # from `scripts/bench cluster`, a run of its own
        md.append("<!-- cluster: scripts/bench cluster -->\n" + open(cluster).read() + "\n<!-- /cluster -->\n")
    idles = [(t, by[(t, "idle")]) for t in targets if (t, "idle") in by]
    if idles:
        md.append("## Idle connections\n")
        md.append(
            "Each connection is a Parley customer (hello + open: a queued conversation) or a relay client in a "
            "room of its own, spread over 8 source addresses; held 10 s.\n"
        )
        md.append("| | connections | server RSS per connection | server CPU while idle |\n|---|---|---|---|")
        for t, r in idles:
            md.append(f"| {NAMES[t]} | {r['connections']} | {r['rss_kib_per_connection']} KiB | "
                      f"{r['server_idle_cpu_percent']} % |")
        md.append("")
    if ("parley", "storm") in by:
        s = by[("parley", "storm")]
        md.append("## Reconnect storm (Parley)\n")
        md.append(f"{s['customers']} customers cut at once, one message posted to each while away, all reconnecting "
                  f"with their token and `sync`: resumed {s['resumed']}, lost **{s['lost']}**, in "
                  f"**{s['resume_secs']} s**.\n")
    if ("parley-pg", "storm") in by:
        s = by[("parley-pg", "storm")]
        md.append("## Reconnect storm (Parley on PostgreSQL)\n")
        md.append(f"The same on PostgreSQL (`--database`): resumed {s['resumed']}, lost **{s['lost']}**, in "
                  f"**{s['resume_secs']} s**.\n")
    if ("parley", "agent-load") in by:
        a = by[("parley", "agent-load")]
        md.append("## One agent, 50 customers at 1 msg/s each (Parley)\n")
        md.append(f"Agent-side latency p50 {a['agent_latency']['p50_ms']} ms, p99 **{a['agent_latency']['p99_ms']} ms**, "
                  f"max {a['agent_latency']['max_ms']} ms; {a['delivered_to_agent']} of {a['acked']} acked messages "
                  "delivered.\n")
    for t in sweeps:
        path = f"docs/bench-sweep-{t}.md"
        if os.path.exists(path):
            body = open(path).read().split("\n", 2)[2]
            md.append(f"## Every rate: {NAMES[t]}\n\n{body}")
    md.append(COMMANDS)
    log = "docs/performance-log.md"
    if os.path.exists(log):
        # The log's own title gives way to a section of this report.
        body = open(log).read().split("\n", 1)[1].replace("\n## ", "\n### ")
        md.append("## What each fix bought, and what stands in the way\n" + body)
    md.append("Raw results (the JSON lines of `parley-bench`):\n\n```json")
    md += [json.dumps(r, sort_keys=True) for r in rows]
    md.append("```\n")
    open(out, "w").write("\n".join(md))
    print(f"wrote {out}")


def node_version():
    try:
        return os.popen("node --version").read().strip() or "?"
    except OSError:
        return "?"


def sweep_setting(by, key):
    """A setting shared by every sweep of the run (pairs, duration_secs)."""
    return next((r[key] for (_, m), r in by.items() if m == "sweep"), "?")


def cell(run, f):
    return "-" if run is None else str(f(run))


def clean(r):
    """Nothing lost, duplicated or out of order, and the offered rate carried."""
    carried = r["delivered_msg_per_sec"] >= 0.98 * r["offered_msg_per_sec"]
    return carried and r["lost"] == 0 and r["duplicated"] == 0 and r["out_of_order"] == 0


def best(s, p99_max):
    """The highest offered rate carried cleanly at p99 <= p99_max."""
    ok = [r["offered_msg_per_sec"] for r in s.values() if r["latency"]["p99_ms"] <= p99_max and clean(r)]
    return max(ok) if ok else None


def carried(s, p99_max):
    """`best` in words: a rate, or why there is none."""
    b = best(s, p99_max)
    if b is not None:
        return f"{b} msg/s offered"
    low = min(s, key=lambda r: s[r]["offered_msg_per_sec"])
    return f"none of the rates (at {s[low]['offered_msg_per_sec']} msg/s: p99 {s[low]['latency']['p99_ms']} ms)"


def cpu_ratio(a, b):
    x, y = a.get("server_cpu_secs_per_million"), b.get("server_cpu_secs_per_million")
    return x / y if x and y else None


def targets_rows(by, sweeps):
    out = []
    idle = by.get(("parley", "idle"))
    if idle:
        kib = idle["rss_kib_per_connection"] or 0
        out.append(("idle: <= 6 KiB server RSS per connection, at the most one process may hold",
                    f"{kib} KiB at {idle['connections']}", kib <= 6))
    s = sweeps.get("parley")
    if s:
        out.append(("conversations: 40,000 msg/s at p99 <= 10 ms",
                    f"carried at p99 <= 10 ms: {carried(s, 10)}", (best(s, 10) or 0) >= 40000))
        out.append(("conversations: 80,000 msg/s at p99 <= 50 ms",
                    f"carried at p99 <= 50 ms: {carried(s, 50)}", (best(s, 50) or 0) >= 80000))
        floor = sweeps.get("relay")
        if floor:
            common = [r for r in s if r in floor and s[r]["latency"]["p99_ms"] <= 1000 and cpu_ratio(s[r], floor[r])]
            if common:
                ratios = [cpu_ratio(s[r], floor[r]) for r in common]
                low = min(ratios)
                acked = sweeps.get("relay-ack", {})
                alone = [cpu_ratio(acked[r], floor[r]) for r in common if r in acked]
                alone = [q for q in alone if q]
                note = (f"; the ack frame alone, floor relay + acks: {min(alone):.1f}x to {max(alone):.1f}x"
                        if alone else "")
                out.append(("server CPU per delivered message <= 1.5 x the floor relay's",
                            f"{low:.1f}x at best ({min(ratios):.1f}x to {max(ratios):.1f}x over "
                            f"{min(common)} to {max(common)} msg/s{note})", low <= 1.5))
    st = by.get(("parley", "storm"))
    if st:
        out.append(("storm: 10,000 customers resumed within 5 s, 0 lost",
                    f"{st['resumed']} in {st['resume_secs']} s, {st['lost']} lost",
                    st["customers"] >= 10000 and st["resume_secs"] <= 5 and st["lost"] == 0))
    ag = by.get(("parley", "agent-load"))
    if ag:
        p99 = ag["agent_latency"]["p99_ms"]
        out.append(("agent-load: agent-side p99 <= 5 ms", f"{p99} ms", p99 <= 5))
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
