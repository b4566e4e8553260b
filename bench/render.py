"""Rewrites the results block of BENCHMARKS.md from `danmaku bench --json` outputs.

Usage: python3 bench/render.py DIR BENCHMARKS.md
DIR holds NAME.json (one report) and NAME.args (the bench arguments) per scenario.
"""
import datetime
import json
import os
import platform
import subprocess
import sys

START, END = "<!-- results:start -->", "<!-- results:end -->"

# name -> (what the target asks, a function telling whether the report meets it)
TARGETS = {
    "fanout-10k": ("≥ 3,000,000 deliveries/s, p99 ≤ 150 ms, 0 lost, 0 duplicated",
                   lambda r: r["delivered_per_s"] >= 3e6 and r["p99_ms"] <= 150 and r["lost"] == 0 and r["duplicated"] == 0),
    "fanout-1k": ("p99 ≤ 30 ms, 0 lost", lambda r: r["p99_ms"] <= 30 and r["lost"] == 0),
    "rooms": ("p99 ≤ 50 ms, 0 lost", lambda r: r["p99_ms"] <= 50 and r["lost"] == 0),
    "ingest": ("≥ 40,000 acknowledged/s, p99 ≤ 25 ms", lambda r: r["acked_per_s"] >= 40000 and r["p99_ms"] <= 25),
    "connect": ("≥ 5,000 connects/s, ≤ 6 KiB server RSS per connection",
                lambda r: r["connects_per_s"] >= 5000 and r["server_rss_per_conn_bytes"] <= 6144),
}


def fmt(v, digits=1):
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({model}){mem}, Linux {platform.release()}"


def commit():
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    # BENCHMARKS.md itself is the output: its own edits do not make the measured tree differ.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"],
                           capture_output=True, text=True).stdout.strip()
    return rev + (" (with uncommitted changes)" if dirty else "")


def main(directory, path):
    rows = []
    commands = []
    for name in TARGETS:
        report_path = os.path.join(directory, name + ".json")
        if not os.path.exists(report_path):
            continue
        with open(report_path) as f:
            r = json.load(f)
        with open(os.path.join(directory, name + ".args")) as f:
            args = f.read().strip()
        target, check = TARGETS[name]
        try:
            verdict = "met" if check(r) else "not met"
        except (TypeError, KeyError):
            verdict = "not measured"
        throughput = r.get("delivered_per_s") or r.get("acked_per_s") or r.get("connects_per_s")
        rows.append(
            f"| {name} | {fmt(throughput, 0)} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} | {fmt(r.get('max_ms'))} "
            f"| {fmt(r.get('lost'))} | {fmt(r.get('duplicated'))} | {fmt(r.get('server_cpu_s'))} "
            f"| {fmt((r.get('server_rss_bytes') or 0) / 1048576) if r.get('server_rss_bytes') else 'null'} "
            f"| {fmt(r.get('server_rss_per_conn_bytes'), 0)} | {target} | {verdict} |"
        )
        commands.append(f"- {name}: `danmaku bench --json {args}` → `{json.dumps(r, separators=(',', ':'))}`")
    block = "\n".join([
        START,
        f"Machine: {machine()}. Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Commit: {commit()}.",
        "Server and load generator share the machine. Produced by `bash bench/run.sh`.",
        "",
        "| scenario | per second (deliveries, acks or connects) | p50 ms | p99 ms | max ms | lost | dup | server CPU s | server RSS MiB | RSS/conn B | target | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Exact commands and full reports:",
        "",
        *commands,
        END,
    ])
    with open(path) as f:
        text = f.read()
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
