#!/usr/bin/env python3
"""Turns scripts/bench-peers.sh results (JSON lines) into a table with medians, ranges and
each Ferry variant's ratio to each peer; prints it, writes it into docs/benchmarks.md between markers,
and plots throughput and p99 latency per system.

usage: bench-peers-report.py RESULTS.jsonl BENCHMARKS.md PLOT.png CONFIG_TEXT
"""
import datetime
import json
import statistics
import sys

BEGIN = "<!-- bench-peers:begin -->"
END = "<!-- bench-peers:end -->"


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def values(rows, system, workload, key):
    return [r[key] for r in rows if r["system"] == system and r["workload"] == workload and key in r]


def fmt(vals, scale=1.0, digits=0):
    if not vals:
        return "–"
    v = [x * scale for x in vals]
    med = statistics.median(v)
    if len(v) == 1 or min(v) == max(v):
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(v):,.{digits}f}–{max(v):,.{digits}f})"


def ratio(a, b):
    if not a or not b:
        return "–"
    mb = statistics.median(b)
    if mb == 0:
        return "–"
    return f"{statistics.median(a) / mb:.2f}×"


def main():
    results, md_path, png_path, config = sys.argv[1:5]
    rows = load(results)
    systems = []
    for r in rows:
        if r["system"] not in systems:
            systems.append(r["system"])
    ferries = [s for s in systems if s.startswith("ferry")]
    peers = [s for s in systems if s not in ferries]
    fanin = next((r["workload"] for r in rows if r["workload"].startswith("fan-in")), "fan-in 50")
    idle = next((r["workload"] for r in rows if r["workload"].startswith("idle")), "idle 1000")

    # (label, workload, key, scale, digits)
    metrics = [
        ("one-to-one: msg/s acknowledged", "one-to-one", "throughput", 1, 0),
        ("one-to-one: msg/s delivered", "one-to-one", "delivered_throughput", 1, 0),
        ("one-to-one: publish→ack p50 ms", "one-to-one", "publish_ack_p50_ms", 1, 2),
        ("one-to-one: publish→ack p99 ms", "one-to-one", "publish_ack_p99_ms", 1, 2),
        ("one-to-one: end-to-end p50 ms", "one-to-one", "e2e_p50_ms", 1, 2),
        ("one-to-one: end-to-end p99 ms", "one-to-one", "e2e_p99_ms", 1, 2),
        ("one-to-one: lost", "one-to-one", "lost", 1, 0),
        ("one-to-one: duplicated", "one-to-one", "duplicated", 1, 0),
        ("one-to-one: disk written per message, B", "one-to-one", "server_disk_bytes_per_message", 1, 0),
        ("one-to-one: server CPU per message, µs", "one-to-one", "server_cpu_us_per_message", 1, 1),
        ("one-to-one: load generator CPU per message, µs", "one-to-one", "loadgen_cpu_us_per_message", 1, 1),
        (f"{fanin}: msg/s acknowledged", fanin, "throughput", 1, 0),
        (f"{fanin}: msg/s delivered", fanin, "delivered_throughput", 1, 0),
        (f"{fanin}: publish→ack p99 ms", fanin, "publish_ack_p99_ms", 1, 2),
        (f"{fanin}: end-to-end p50 ms", fanin, "e2e_p50_ms", 1, 2),
        (f"{fanin}: end-to-end p99 ms", fanin, "e2e_p99_ms", 1, 2),
        (f"{fanin}: lost", fanin, "lost", 1, 0),
        (f"{fanin}: duplicated", fanin, "duplicated", 1, 0),
        (f"{fanin}: disk written per message, B", fanin, "server_disk_bytes_per_message", 1, 0),
        (f"{fanin}: server CPU per message, µs", fanin, "server_cpu_us_per_message", 1, 1),
        (f"{fanin}: load generator CPU per message, µs", fanin, "loadgen_cpu_us_per_message", 1, 1),
        ("idle RSS MiB", idle, "server_rss_idle_kib", 1 / 1024, 1),
        (f"RSS with {idle.split()[-1]} idle clients MiB", idle, "server_rss_with_clients_kib", 1 / 1024, 1),
        ("peak RSS MiB (after fan-in)", fanin, "server_peak_rss_kib", 1 / 1024, 1),
        ("crash: acknowledged kept after kill -9", "crash", "kept", 1, 0),
    ]
    pairs = [(f, p) for f in ferries for p in peers]
    head = ["", *systems] + [f"{f} ÷ {p}" for f, p in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, wl, key, scale, digits in metrics:
        cells = [label]
        for s in systems:
            cells.append(fmt(values(rows, s, wl, key), scale, digits))
        for f, p in pairs:
            cells.append(ratio(values(rows, f, wl, key), values(rows, p, wl, key)))
        lines.append("| " + " | ".join(cells) + " |")
    crash_of = next((r["of"] for r in rows if r["workload"] == "crash" and "of" in r), None)
    rounds = len({r.get("round") for r in rows})
    table = "\n".join(lines)
    print(table)

    date = datetime.date.today().isoformat()
    section = f"""{BEGIN}
## Ferry against Mosquitto and NATS JetStream

Run {date} with `scripts/bench-peers.sh` ({rounds} rounds, systems interleaved; medians with
the range over rounds in brackets; ratios are Ferry's median over the peer's: above 1× is
better for throughput, below 1× is better for latency, CPU, memory and disk writes).
Acknowledged: the messages the server acknowledged to the producers ÷ the time until the last
acknowledgement. Delivered: the messages the consumer received ÷ the time until the last one
arrived; a server that acknowledges faster than its consumer is served shows the difference
here. Disk written: the server's `write_bytes` from `/proc/<pid>/io` over the run, divided by the messages
sent, what the run costs a router's flash (a server that writes nothing during the run shows 0
and no ratio). CPU per message: `utime` + `stime` from `/proc/<pid>/stat` over the run (all
threads, 10 ms resolution), divided by the messages sent; for the server, and for the load
generator itself (producers and consumer with their client libraries: quinn, rumqttc,
async-nats), which shares the two cores with it. Crash: of {crash_of} acknowledged messages
for a consumer that was not reading, how many it still got after the server was killed with
SIGKILL and restarted.

{config}

{table}

![throughput and p99 end-to-end latency per system](bench-peers.png)
{END}"""
    try:
        with open(md_path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + section + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    with open(md_path, "w") as f:
        f.write(doc)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    width = 0.38
    xs = range(len(systems))
    for ax, key, title, unit in [
        (axes[0], "throughput", "acknowledged messages/s (higher is better)", "msg/s"),
        (axes[1], "e2e_p99_ms", "end-to-end p99 latency (lower is better)", "ms"),
    ]:
        for off, wl in [(-width / 2, "one-to-one"), (width / 2, fanin)]:
            meds = [statistics.median(values(rows, s, wl, key) or [0]) for s in systems]
            bars = ax.bar([x + off for x in xs], meds, width, label=wl)
            ax.bar_label(bars, fmt="%.0f" if key == "throughput" else "%.1f", fontsize=7)
        ax.set_xticks(list(xs))
        # One word per line inside the brackets: five systems' labels fit side by side.
        ax.set_xticklabels([s.replace(" (", "\n(").replace(" ", "\n") for s in systems], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        if key != "throughput":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"Ferry vs Mosquitto vs NATS JetStream, {date}", fontsize=11)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {md_path} and {png_path}")


if __name__ == "__main__":
    main()
