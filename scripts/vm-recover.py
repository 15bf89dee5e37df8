#!/usr/bin/env python3
"""How long a guest's throughput takes to recover after its budget is raised.

Runs `farmem vm --guest random SIZE OPS` with LOW of local memory and a control socket,
timestamps the guest's progress lines ("random: N updates", every 16384 updates), raises
the budget to HIGH through `farmem ctl` after --raise-after seconds, and reports the
update rate before the raise, the steady rate at the end, and the time from the raise
until an interval first reaches 90% of the steady rate. Medians of --runs runs.

    scripts/vm-recover.py [--farmem target/release/farmem] [--memory 68M] [--size 64M]
                          [--low 17M] [--high 68M] [--ops 3000000] [--raise-after 4]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def one(a, sock):
    cmd = [a.farmem, "vm", "--memory", a.memory, "--local-mem", a.low, "--control", sock,
           "--guest", "random", a.size, str(a.ops)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    points = []  # (seconds, updates)
    raised = {}

    def raise_later():
        time.sleep(a.raise_after)
        raised["t"] = time.monotonic() - t0
        subprocess.run([a.farmem, "ctl", sock, "budget", a.high], check=True,
                       stdout=subprocess.DEVNULL)
        raised["done"] = time.monotonic() - t0

    threading.Thread(target=raise_later, daemon=True).start()
    for line in p.stdout:
        w = line.split()
        if len(w) >= 3 and w[0] == "random:" and w[2] == "updates":
            points.append((time.monotonic() - t0, int(w[1])))
    if p.wait() != 0 or "t" not in raised:
        sys.exit(f"the run failed or ended before the raise (exit {p.returncode})")
    rates = [((t1 + t0_) / 2, (n1 - n0) / (t1 - t0_))
             for (t0_, n0), (t1, n1) in zip(points, points[1:]) if t1 > t0_]
    before = [r for t, r in rates if t < raised["t"]]
    after = [(t, r) for t, r in rates if t > raised["t"]]
    steady = statistics.median(r for _, r in after[-max(3, len(after) // 4):])
    recovered = next((t for t, r in after if r >= 0.9 * steady), None)
    return {
        "before": statistics.median(before) if before else float("nan"),
        "steady": steady,
        "recover_s": (recovered - raised["t"]) if recovered else float("nan"),
        "ctl_s": raised["done"] - raised["t"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--farmem", default="target/release/farmem")
    ap.add_argument("--memory", default="68M")
    ap.add_argument("--size", default="64M")
    ap.add_argument("--low", default="17M")
    ap.add_argument("--high", default="68M")
    ap.add_argument("--ops", type=int, default=3_000_000)
    ap.add_argument("--raise-after", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.runs):
            r = one(a, os.path.join(d, f"vm{i}.sock"))
            print(f"run {i + 1}: {r['before']:,.0f} updates/s at {a.low}, "
                  f"{r['steady']:,.0f}/s steady at {a.high}, 90% of it "
                  f"{r['recover_s']:.2f} s after the raise (ctl returned in {r['ctl_s']:.3f} s)")
            runs.append(r)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median: {med['before']:,.0f} updates/s at {a.low} -> {med['steady']:,.0f}/s "
          f"at {a.high}; recovered to 90% in {med['recover_s']:.2f} s")


if __name__ == "__main__":
    main()
