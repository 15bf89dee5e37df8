#!/usr/bin/env python3
"""The allocator table: farmem's figures under each allocator, beside Linux swap and all-local.

    scripts/apps/allocators.py NAME=DIR [NAME=DIR ...]

Each DIR holds apps-*.jsonl from one scripts/bench-apps.sh run with FARMEM_ALLOCATOR=NAME
(the first one with SYSTEMS=farmem,linux-swap,all-local, the others may leave Linux swap
out). Prints two Markdown tables: per workload, metric and budget, each allocator's median
with its minor / major faults, Linux swap's (or how many of its runs the OOM killer
stopped) and all-local's, and the best allocator over Linux swap; then each allocator's
footprint at exit (farmem's resident + far-tier bytes) beside all-local's maximum RSS.
"""
import glob
import json
import os
import sys

from compare import key_of, med, value_of


def load(d):
    """{(workload, metric, frac or None, system): {...}} of one result directory."""
    out = {}
    for path in sorted(glob.glob(os.path.join(d, "apps-*.jsonl"))):
        for line in open(path):
            rec = json.loads(line)
            wl, metric, frac, hib = key_of(rec)
            system = rec["system"]
            k = (wl, metric, frac if system != "all-local" else None, system)
            e = out.setdefault(k, {"hib": hib, "v": [], "minor": [], "major": [], "foot": [], "failed": 0})
            ok = rec.get("outcome", "ok") == "ok" and not rec.get("oom_killed") and value_of(rec) is not None
            if not ok:
                e["failed"] += 1
                continue
            e["v"].append(value_of(rec))
            extra = rec.get("extra") or {}
            minor = rec.get("farmem_minor_faults", extra.get("farmem_minor_faults"))
            major = rec.get("farmem_major_faults", extra.get("farmem_major_faults"))
            if system == "linux-swap":
                major = rec.get("linux_major_faults", extra.get("linux_major_faults"))
            if minor is not None:
                e["minor"].append(minor)
            if major is not None:
                e["major"].append(major)
            if system == "farmem" and "resident_mib" in extra and "far_mib" in extra:
                e["foot"].append(extra["resident_mib"] + extra["far_mib"])
            if system == "all-local":
                rss = rec.get("max_rss_bytes") or extra.get("peak_rss_bytes")
                if rss:
                    e["foot"].append(rss / (1 << 20))
    return out


def fmt(x):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}"


def kfmt(x):
    if x is None:
        return "-"
    return f"{x / 1000:.0f}k" if x >= 1000 else f"{x:.0f}"


def main():
    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit("usage: allocators.py NAME=DIR [NAME=DIR ...]")
    dirs = [a.split("=", 1) for a in sys.argv[1:]]
    data = {name: load(d) for name, d in dirs}
    names = [n for n, _ in dirs]
    base = {}
    for n in names:
        for k, v in data[n].items():
            if k[3] != "farmem" and (k not in base or not base[k]["v"]):
                base[k] = v
    keys = sorted({k[:3] for n in names for k in data[n] if k[3] == "farmem"}, key=lambda k: (k[0], k[1], k[2] or 0))
    head = " | ".join(f"{n} (minor / major)" for n in names)
    print(f"| workload: metric | local | {head} | Linux swap | all-local | best / Linux |")
    print("|---|---|" + "---|" * len(names) + "---|---|---|")
    for wl, metric, frac in keys:
        cells, vals = [], []
        hib = True
        for n in names:
            e = data[n].get((wl, metric, frac, "farmem"))
            if not e or not e["v"]:
                cells.append("-")
                continue
            hib = e["hib"]
            v = med(e["v"])
            vals.append(v)
            cells.append(f"{fmt(v)} ({kfmt(med(e['minor']))} / {kfmt(med(e['major']))})")
        lin = base.get((wl, metric, frac, "linux-swap"))
        loc = base.get((wl, metric, None, "all-local"))
        if lin and lin["v"]:
            lv = med(lin["v"])
            lcell = f"{fmt(lv)} ({kfmt(med(lin['major']))} major)"
            if lin["failed"]:
                lcell += f", {lin['failed']} of {lin['failed'] + len(lin['v'])} OOM"
            best = max(vals) if hib else min(vals)
            ratio = f"{(best / lv if hib else lv / best):.2f}x" if vals else "-"
        elif lin:
            lcell, ratio = f"OOM-killed {lin['failed']} of {lin['failed']}", "Linux did not finish"
        else:
            lcell, ratio = "-", "-"
        lo = fmt(med(loc["v"])) if loc else "-"
        print(f"| {wl}: {metric} | {frac * 100:.0f}% | " + " | ".join(cells) + f" | {lcell} | {lo} | {ratio} |")
    print()
    print("| workload | local | " + " | ".join(f"{n} resident + far MiB" for n in names) + " | all-local max RSS MiB |")
    print("|---|---|" + "---|" * len(names) + "---|")
    seen = set()
    for wl, metric, frac in keys:
        if (wl, frac) in seen:
            continue
        seen.add((wl, frac))
        feet = [med(data[n].get((wl, metric, frac, "farmem"), {}).get("foot", [])) for n in names]
        if all(f is None for f in feet):
            continue
        loc = base.get((wl, metric, None, "all-local"))
        print(f"| {wl} | {frac * 100:.0f}% | " + " | ".join(fmt(f) for f in feet) + f" | {fmt(med(loc['foot'])) if loc else '-'} |")


if __name__ == "__main__":
    main()
