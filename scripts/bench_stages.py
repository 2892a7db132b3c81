#!/usr/bin/env python3
"""Where durable end-to-end latency goes (issue 16): `spate bench e2e` beside the broker's own
stage histograms.

Starts a release `spate broker` (127.0.0.1, a port chosen at run time, a temporary data
directory, `metrics.listener` on another free port), runs `spate bench e2e --acks all
--fsync-probe-dir DATA` against it, and reads the broker's Prometheus histograms before and after
the run. Prints, per stage, the mean (exact: sum / count) and p50/p99 interpolated inside the
exporter's buckets (50 µs, 100 µs, 250 µs, 500 µs, 1 ms, 2.5 ms, … so only a rough quantile):

  disk floor      4 KiB append + fdatasync in the data directory (the bench's probe)
  flush wait      a partition's first unflushed append → its fdatasync starts (flusher queueing)
  fdatasync       one partition's fdatasync by the flusher
  produce         request read → response ready (append, flush wait, fdatasync, HW advance)
  e2e / ack       the bench's own figures: scheduled send → consumed / → acknowledged

  .venv/bin/python scripts/bench_stages.py --spate target/release/spate [--rate 5000] [--duration-s 10]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_peer import free_port, wait_port  # same directory

STAGES = {
    "flush wait": ("spate_log_flush_wait_seconds", None),
    "fdatasync": ("kafka_log_logflushstats_logflush_seconds", None),
    "produce request": ("kafka_network_requestmetrics_totaltime_seconds", 'request="Produce"'),
}


def scrape(url):
    """{(name, labels): {"buckets": [(le, count)], "sum": s, "count": n}} of every histogram."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+?)(_bucket|_sum|_count)(?:\{(.*)\})? ([0-9.eE+-]+|NaN)$", line)
        if not m:
            continue
        name, kind, labels, value = m.group(1), m.group(2), m.group(3) or "", float(m.group(4))
        le = None
        if kind == "_bucket":
            le_m = re.search(r'le="([^"]+)"', labels)
            le = float("inf") if le_m.group(1) == "+Inf" else float(le_m.group(1))
            labels = re.sub(r',?le="[^"]+"', "", labels).strip(",")
        h = out.setdefault((name, labels), {"buckets": [], "sum": 0.0, "count": 0.0})
        if kind == "_bucket":
            h["buckets"].append((le, value))
        elif kind == "_sum":
            h["sum"] = value
        else:
            h["count"] = value
    return out


def delta(after, before):
    b_buckets = dict(before["buckets"]) if before else {}
    return {
        "buckets": sorted((le, c - b_buckets.get(le, 0.0)) for le, c in after["buckets"]),
        "sum": after["sum"] - (before["sum"] if before else 0.0),
        "count": after["count"] - (before["count"] if before else 0.0),
    }


def quantile(h, q):
    """Linear interpolation inside the cumulative bucket holding quantile q (seconds)."""
    total = h["count"]
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le, cum in h["buckets"]:
        if cum >= rank:
            if le == float("inf"):
                return lower
            width = cum - below
            return lower + (le - lower) * ((rank - below) / width if width else 1.0)
        lower, below = le, cum
    return lower


def find(hists, name, label):
    for (n, labels), h in hists.items():
        if n == name and (label is None or label in labels):
            return (n, labels), h
    return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spate", default="target/release/spate")
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--duration-s", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], help="extra `spate broker --set k=v`")
    opts = ap.parse_args()
    spate = os.path.abspath(opts.spate)
    work = tempfile.mkdtemp(prefix="bench-stages-")
    port, mport = free_port(), free_port()
    data = os.path.join(work, "data")
    argv = [spate, "broker", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
            "--set", f"metrics.listener=127.0.0.1:{mport}"]
    for kv in opts.set:
        argv += ["--set", kv]
    log = open(os.path.join(work, "broker.log"), "wb")
    broker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, broker)
        wait_port(mport, broker)
        url = f"http://127.0.0.1:{mport}/metrics"
        boot = ["--bootstrap-server", f"127.0.0.1:{port}"]
        topic = "stages"
        subprocess.run([spate, "topics", "--create", *boot, "--topic", topic, "--partitions", str(opts.partitions)],
                       check=True, stdout=subprocess.DEVNULL)
        # The exporter drains histograms every 5 s: wait one upkeep on both sides of the run.
        time.sleep(6)
        before = scrape(url)
        out = os.path.join(work, "e2e.json")
        subprocess.run([spate, "bench", "e2e", *boot, "--topic", topic, "--rate", str(opts.rate),
                        "--duration-s", str(opts.duration_s), "--acks", "all", "--fsync-probe-dir", data,
                        "--json", out], check=True, stdout=subprocess.DEVNULL)
        time.sleep(6)
        after = scrape(url)
        with open(out) as f:
            e2e = json.load(f)
    finally:
        broker.kill()
        broker.wait()
        log.close()

    print(f"{'stage':<18} {'mean ms':>9} {'p50 ms':>9} {'p99 ms':>9}  (count)")
    floor = e2e.get("fsync_floor") or {}
    print(f"{'disk floor':<18} {'':>9} {floor.get('ms_p50', float('nan')):>9.3f} {floor.get('ms_p99', float('nan')):>9.3f}"
          "  (bench probe, exact)")
    for stage, (name, label) in STAGES.items():
        key, h = find(after, name, label)
        if h is None:
            print(f"{stage:<18} (no {name} in the scrape)")
            continue
        d = delta(h, before.get(key))
        mean = d["sum"] / d["count"] * 1e3 if d["count"] else float("nan")
        print(f"{stage:<18} {mean:>9.3f} {quantile(d, 0.5) * 1e3:>9.3f} {quantile(d, 0.99) * 1e3:>9.3f}  ({d['count']:.0f})")
    for stage, key in (("ack (bench)", "ack_latency"), ("e2e (bench)", "e2e_latency")):
        lat = e2e[key]
        print(f"{stage:<18} {'':>9} {lat['ms_p50']:>9.3f} {lat['ms_p99']:>9.3f}  (exact)")
    steal = e2e.get("cpu_steal_percent")
    if steal is not None:
        print(f"CPU steal while sending: {steal:.1f}%")
    print("(mean: exact; histogram p50/p99: interpolated inside 50 µs/100 µs/250 µs/500 µs/1 ms/2.5 ms… buckets)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
