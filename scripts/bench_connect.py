#!/usr/bin/env python3
"""Helper for scripts/bench-connect.sh (issue 11): file -> topic shippers, timed by the topic.

  gen    write --lines lines of exactly 100 bytes each (99 printable bytes + '\\n'), each line
         distinct (its number leads), to --out.
  run    start a shipper (the command after `--`), poll the topic's end offset (the sum of the
         partitions' high watermarks, through confluent-kafka's get_watermark_offsets) every
         --poll-ms until it reaches --lines, then read the shipper's peak RSS (VmHWM) and CPU time
         from /proc/PID, stop it (SIGTERM, then SIGKILL after 15 s) and append one JSON result to
         --results. The clock starts when the shipper is spawned, so its start-up (a Connect
         worker's group join, rsyslog's config load) is in `wall_s`; `steady_s` runs from the first
         record seen on the topic to the last.
  table  print the results file as a table.

Only the shipper's own process is measured (all its threads); the broker's CPU time over the same
interval is reported beside it when --broker-pid is given, since broker and shipper share the box.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

LINE_BYTES = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def gen(args):
    # 99 bytes before the newline: a 10-digit line number, a space, then filler that shifts with
    # the line so the values are not all alike (nothing here compresses them; it keeps them honest).
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    filler = (alphabet * 4)[: 88 + len(alphabet)]
    chunk_lines = 100_000
    with open(args.out, "w", encoding="ascii") as f:
        for start in range(0, args.lines, chunk_lines):
            end = min(start + chunk_lines, args.lines)
            f.write("".join(
                f"{i:010d} {filler[i % len(alphabet):i % len(alphabet) + 88]}\n" for i in range(start, end)
            ))
    size = os.path.getsize(args.out)
    if size != args.lines * LINE_BYTES:
        sys.exit(f"gen: {args.out} has {size} bytes, expected {args.lines * LINE_BYTES}")


def proc_status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid):
    """utime + stime of every thread of PID, in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" the fields start at field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def end_offset(consumer, topic, partitions):
    from confluent_kafka import TopicPartition

    total = 0
    for p in partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
        total += high
    return total


LINE_RE = re.compile(rb"^[0-9]{10} [A-Za-z0-9]{88}$")


def first_record(consumer, topic, partition):
    """The first record of the topic's first partition, checked to be one whole line of the file
    (a trailing "!" allowed: the Rhai run's transform appends it), so a shipper that mangles or
    re-frames lines shows up next to its figures."""
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, partition, 0)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        value = msg.value() or b""
        line = value[:-1] if value.endswith(b"!") else value
        return {"first_value": value[:120].decode("ascii", "replace"),
                "first_value_ok": bool(LINE_RE.match(line)),
                "first_headers": sorted(k for k, _ in (msg.headers() or []))}
    return {"first_value_ok": False, "first_value": None}


def stop(proc):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(args):
    from confluent_kafka import Consumer

    cmd = args.command[1:] if args.command and args.command[0] == "--" else args.command
    if not cmd:
        sys.exit("run: give the shipper's command after --")
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": "bench-connect-watch",
                         "enable.auto.commit": False})
    md = consumer.list_topics(args.topic, timeout=10)
    tmd = md.topics.get(args.topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        sys.exit(f"run: topic {args.topic} is missing on {args.bootstrap} (create it first)")
    partitions = sorted(tmd.partitions)
    base = end_offset(consumer, args.topic, partitions)
    if base != 0:
        sys.exit(f"run: topic {args.topic} already holds {base} records; use a fresh topic")

    broker_cpu0 = proc_cpu_s(args.broker_pid) if args.broker_pid else None
    log = open(args.log, "wb") if args.log else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t_first = None
    reached = 0
    hwm_kib = cpu_s = None
    result = {"tool": args.label, "lines": args.lines, "bytes": args.lines * LINE_BYTES}
    try:
        deadline = t0 + args.timeout_s
        while True:
            reached = end_offset(consumer, args.topic, partitions)
            now = time.monotonic()
            if reached > 0 and t_first is None:
                t_first = now
            if reached >= args.lines:
                t_end = now
                break
            if proc.poll() is not None:
                result["error"] = f"shipper exited with {proc.returncode} after {now - t0:.1f} s at {reached} records"
                break
            if now > deadline:
                result["error"] = f"timed out after {args.timeout_s} s at {reached} of {args.lines} records"
                break
            time.sleep(args.poll_ms / 1000)
        # Read before stopping: VmHWM is the peak over the process's life so far.
        hwm_kib = proc_status_kib(proc.pid, "VmHWM")
        cpu_s = proc_cpu_s(proc.pid)
    finally:
        stop(proc)
    try:
        result.update(first_record(consumer, args.topic, partitions[0]))
    finally:
        consumer.close()
    result["records"] = reached
    if "error" not in result:
        wall = t_end - t0
        steady = t_end - t_first
        result.update({
            "wall_s": round(wall, 3),
            "steady_s": round(steady, 3),
            "mib_s": round(result["bytes"] / MIB / wall, 1),
            "lines_s": round(args.lines / wall),
            "steady_mib_s": round(result["bytes"] / MIB / steady, 1) if steady > 0 else None,
            "steady_lines_s": round(args.lines / steady) if steady > 0 else None,
        })
    if reached > args.lines:
        result["extra_records"] = reached - args.lines
    result["peak_rss_mib"] = round(hwm_kib / 1024, 1) if hwm_kib is not None else None
    result["cpu_s"] = round(cpu_s, 2) if cpu_s is not None else None
    if cpu_s:
        result["lines_per_cpu_s"] = round(args.lines / cpu_s)
    if broker_cpu0 is not None:
        broker_cpu1 = proc_cpu_s(args.broker_pid)
        if broker_cpu1 is not None:
            result["broker_cpu_s"] = round(broker_cpu1 - broker_cpu0, 2)
    line = json.dumps(result)
    print(line)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    if "error" in result:
        sys.exit(1)


def table(args):
    rows = []
    with open(args.results, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    head = ["tool", "lines", "MiB/s", "lines/s", "peak RSS MiB", "wall s", "steady MiB/s", "steady lines/s",
            "steady s", "CPU s", "lines/CPU-s", "broker CPU s"]
    out = [head]
    for r in rows:
        if "error" in r:
            out.append([r["tool"], str(r["lines"]), "FAILED: " + r["error"]] + [""] * (len(head) - 3))
            continue
        def f(key, fmt="{}"):
            v = r.get(key)
            return "-" if v is None else fmt.format(v)
        out.append([r["tool"], f"{r['lines']:,}", f("mib_s", "{:.1f}"), f("lines_s", "{:,}"),
                    f("peak_rss_mib", "{:.1f}"), f("wall_s", "{:.2f}"), f("steady_mib_s", "{:.1f}"),
                    f("steady_lines_s", "{:,}"), f("steady_s", "{:.2f}"), f("cpu_s", "{:.2f}"),
                    f("lines_per_cpu_s", "{:,}"), f("broker_cpu_s", "{:.2f}")])
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for row in out[1:]:
        print("| " + " | ".join(row) + " |")
    for r in rows:
        if "first_value_ok" in r:
            verdict = "a whole line of the file" if r["first_value_ok"] else "NOT a line of the file"
            print(f"{r['tool']}: first record {r.get('first_value')!r}, headers {r.get('first_headers', [])}: {verdict}")
        if r.get("extra_records"):
            print(f"{r['tool']}: {r['extra_records']} records more than lines (duplicates or stray messages)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--lines", type=int, required=True)
    g.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bootstrap", required=True)
    r.add_argument("--topic", required=True)
    r.add_argument("--lines", type=int, required=True)
    r.add_argument("--label", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("--log")
    r.add_argument("--broker-pid", type=int)
    r.add_argument("--timeout-s", type=float, default=600)
    r.add_argument("--poll-ms", type=float, default=10)
    r.add_argument("command", nargs=argparse.REMAINDER)
    t = sub.add_parser("table")
    t.add_argument("--results", required=True)
    args = ap.parse_args()
    # A SIGTERM (the shell script's trap) unwinds through `finally`, so the shipper is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    {"gen": gen, "run": run, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
