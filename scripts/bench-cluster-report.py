#!/usr/bin/env python3
"""Writes docs/bench-cluster.md from `scripts/bench cluster`'s JSON lines, and
puts it in docs/benchmarks.md between the cluster markers (the rest of that
report comes from the standard run)."""
import json
import os
import sys

START, END = "<!-- cluster: scripts/bench cluster -->", "<!-- /cluster -->"


def p99(run):
    return run["latency"]["p99_ms"]


def carried(runs, bound):
    ok = [r for r in runs if r["ok"] and p99(r) <= bound and r["delivered_msg_per_sec"] >= 0.98 * r["offered_msg_per_sec"]]
    return max((r["offered_msg_per_sec"] for r in ok), default=None)


def main(results, out):
    rows = [json.loads(line) for line in open(results) if line.strip()]
    by = {r["target"]: r for r in rows if r.get("mode") == "sweep"}
    one, four = by.get("one-node"), by.get("cluster")
    md = ["## Cluster: four nodes behind nginx beside one node (PostgreSQL)\n"]
    md.append(
        "`scripts/bench cluster`, in one run: the conversations sweep against one node on PostgreSQL, then against "
        "four nodes on the same PostgreSQL with a Redis backplane behind nginx (the repository's nginx.conf). In the "
        "cluster, each customer connects through nginx and its agent straight to another node, so every message "
        "crosses Redis. Every Parley process, nginx and Redis are pinned to core 0 and the load to core 1 "
        "(PostgreSQL unpinned; its CPU, all its processes together, is in its own column): the cluster gets no "
        "more CPU than the single node. CPU-s / M: CPU seconds per million messages delivered. "
        f"{one['pairs'] if one else '?'} conversations, {one['duration_secs'] if one else '?'} s per rate.\n")
    md.append("| offered msg/s | one node p99 ms | cluster p99 ms | one node CPU-s / M | cluster nodes CPU-s / M | Redis CPU-s / M | nginx CPU-s / M | PostgreSQL CPU-s / M (one / cluster) | lost, dup, ooo (one / cluster) |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    rates = sorted({r["offered_msg_per_sec"] for t in (one, four) if t for r in t["runs"]})
    idx = {t: {r["offered_msg_per_sec"]: r for r in by[t]["runs"]} for t in by}
    for rate in rates:
        a, b = idx.get("one-node", {}).get(rate), idx.get("cluster", {}).get(rate)
        f = lambda r, k: "-" if r is None else r[k]
        other = lambda r, k: "-" if r is None else r.get("other_cpu_secs_per_million", {}).get(k, "-")
        bad = lambda r: "-" if r is None else f"{r['lost']}/{r['duplicated']}/{r['out_of_order']}"
        md.append(f"| {rate} | {'-' if a is None else p99(a)} | {'-' if b is None else p99(b)} | "
                  f"{f(a, 'server_cpu_secs_per_million')} | {f(b, 'server_cpu_secs_per_million')} | "
                  f"{other(b, 'redis')} | {other(b, 'nginx')} | {other(a, 'postgres')} / {other(b, 'postgres')} | "
                  f"{bad(a)} , {bad(b)} |")
    md.append("")
    for name, t in (("One node", one), ("Cluster", four)):
        if t:
            at = lambda b: f"{carried(t['runs'], b)} msg/s" if carried(t["runs"], b) else "no rate tried"
            md.append(f"- {name}: carried **{at(50)}** offered at p99 <= 50 ms ({at(10)} at p99 <= 10 ms).")
    md.append(
        "\nWhat this does and does not show: on two cores the four nodes share one core, so the cluster cannot be "
        "faster than one node here; it shows what a message costs when it crosses nodes (the extra hop through "
        "Redis, the second node's delivery, nginx), and that nothing is lost, repeated or reordered on the way. "
        "Scale-out needs cores per node: docs/scaling.md works from these costs.\n")
    text = "\n".join(md)
    open(out, "w").write(text)
    report = "docs/benchmarks.md"
    if os.path.exists(report):
        doc = open(report).read()
        block = f"{START}\n{text}\n{END}"
        if START in doc and END in doc:
            doc = doc[:doc.index(START)] + block + doc[doc.index(END) + len(END):]
        else:
            marker = "## Idle connections"
            doc = doc.replace(marker, block + "\n\n" + marker, 1) if marker in doc else doc + "\n" + block + "\n"
        open(report, "w").write(doc)
    print(f"wrote {out} and its section of {report}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
