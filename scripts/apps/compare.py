#!/usr/bin/env python3
"""Compares farmem's figures in two application-suite result directories.

    scripts/apps/compare.py BEFORE_DIR AFTER_DIR

Each directory holds apps-*.jsonl from scripts/bench-apps.sh (e.g. one run with
FARMEM=an older build SYSTEMS=farmem,all-local). Prints one Markdown table: per row and
budget, farmem's median before and after, the ratio (above 1: after is better, for times
and rates alike), and the faults behind each, with all-local's medians beside them as a
measure of how much the machine itself moved between the two sittings.
"""
import glob
import json
import os
import statistics
import sys


def key_of(rec):
    """(workload, metric name, budget fraction) of one record, bench-cmd or bench-redis."""
    if "metric_name" in rec:
        return rec["label"], rec["metric_name"], rec.get("local_frac"), rec["higher_is_better"]
    return "redis " + rec["workload"], "ops/s", rec.get("footprint_frac"), True


def value_of(rec):
    return rec["metric"] if "metric" in rec else rec["ops_per_sec"]


def faults_of(rec):
    extra = rec.get("extra") or {}
    minor = rec.get("farmem_minor_faults", extra.get("farmem_minor_faults"))
    major = rec.get("farmem_major_faults", extra.get("farmem_major_faults"))
    return minor, major


def load(d):
    out = {}
    for path in sorted(glob.glob(os.path.join(d, "apps-*.jsonl"))):
        for line in open(path):
            rec = json.loads(line)
            if rec.get("outcome", "ok") != "ok" or rec.get("oom_killed") or value_of(rec) is None:
                continue
            wl, metric, frac, hib = key_of(rec)
            k = (wl, metric, frac if rec["system"] == "farmem" else None, rec["system"])
            out.setdefault(k, {"hib": hib, "v": [], "minor": [], "major": []})
            out[k]["v"].append(value_of(rec))
            mi, ma = faults_of(rec)
            if mi is not None:
                out[k]["minor"].append(mi)
                out[k]["major"].append(ma)
    return out


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, int) or x == 0 or (float(x).is_integer() and x >= 10):
        return f"{x:,.0f}"
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare.py BEFORE_DIR AFTER_DIR")
    before, after = load(sys.argv[1]), load(sys.argv[2])
    print("| workload | local % | farmem before | farmem after | after/before | faults before (minor / major) | faults after (minor / major) |")
    print("|---|---|---|---|---|---|---|")
    rows = sorted(k for k in after if k[3] == "farmem" and k in before)
    for wl, metric, frac, _ in rows:
        b, a = before[(wl, metric, frac, "farmem")], after[(wl, metric, frac, "farmem")]
        bv, av = med(b["v"]), med(a["v"])
        ratio = av / bv if a["hib"] else bv / av
        fb = f"{fmt(med(b['minor']))} / {fmt(med(b['major']))}"
        fa = f"{fmt(med(a['minor']))} / {fmt(med(a['major']))}"
        print(f"| {wl}: {metric} | {frac * 100:.0f}% | {fmt(bv)} | {fmt(av)} | {ratio:.2f}x | {fb} | {fa} |")
    print()
    print("| workload | all-local before | all-local after |")
    print("|---|---|---|")
    for wl, metric, _, _ in sorted(k for k in after if k[3] == "all-local" and k in before):
        b, a = before[(wl, metric, None, "all-local")], after[(wl, metric, None, "all-local")]
        print(f"| {wl}: {metric} | {fmt(med(b['v']))} | {fmt(med(a['v']))} |")


if __name__ == "__main__":
    main()
