#!/usr/bin/env python3
"""Pools the journals of edgesim JSON reports and prints timeline lag by action verb.

Usage: lagstats.py LABEL REPORT.json...   (called by bench/lag.sh)

lag_ms   = applied - scheduled: how late the change had taken effect.
apply_ms = time spent applying it.
start late = lag_ms - apply_ms: how late applying began (timer wake-up, scheduling,
             a previous action still running).
Percentiles are nearest-rank, as the report's own `lag` block computes them.
"""
import collections
import json
import math
import sys

GOAL_P99_MS = 5.0


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[max(1, math.ceil(p * len(v))) - 1]


def main():
    label, files = sys.argv[1], sys.argv[2:]
    rows = collections.defaultdict(lambda: {"lag": [], "apply": [], "late": [], "err": 0})
    pooled, per_run = [], []
    for f in files:
        with open(f) as fh:
            r = json.load(fh)
        per_run.append(r.get("lag", {}))
        for j in r["journal"]:
            if j.get("lag_ms") is None:
                continue
            row = rows[j["verb"] + (" (revert)" if j["revert"] else "")]
            row["lag"].append(j["lag_ms"])
            row["apply"].append(j["apply_ms"])
            row["late"].append(j["lag_ms"] - j["apply_ms"])
            row["err"] += 0 if j["ok"] else 1
            pooled.append(j["lag_ms"])

    print(f"\ntimeline lag [{label}], {len(files)} run(s) pooled; milliseconds")
    print(f"{'verb':<20} {'n':>4} {'lag p50':>8} {'lag p99':>8} {'lag max':>8}"
          f" {'apply p50':>10} {'apply max':>10} {'start late max':>15} {'errors':>6}")
    for k in sorted(rows):
        r = rows[k]
        print(f"{k:<20} {len(r['lag']):>4} {pct(r['lag'], .5):>8.3f} {pct(r['lag'], .99):>8.3f}"
              f" {max(r['lag']):>8.3f} {pct(r['apply'], .5):>10.3f} {max(r['apply']):>10.3f}"
              f" {max(r['late']):>15.3f} {r['err']:>6}")
    p99 = pct(pooled, .99)
    print(f"{'all':<20} {len(pooled):>4} {pct(pooled, .5):>8.3f} {p99:>8.3f} {max(pooled):>8.3f}")
    print("per run (the report's lag block): " + "; ".join(
        f"p99 {l.get('p99_ms') or float('nan'):.2f} max {l.get('max_ms') or float('nan'):.2f}"
        for l in per_run))
    verdict = "met" if p99 <= GOAL_P99_MS else "MISSED"
    print(f"goal p99 <= {GOAL_P99_MS:g} ms: {verdict} (pooled p99 {p99:.3f} ms over {len(pooled)} actions)")


if __name__ == "__main__":
    main()
