#!/usr/bin/env python3
"""A large dict in an interpreted program, for `farmem bench-cmd` (scripts/bench-apps.sh).

Builds a dict of N entries (str keys -> small tuples of ints), then looks up N random
keys, and prints each phase's seconds and a checksum of what the lookups read. The
checksum is recomputed from the keys alone (every value is a function of its key's
number), so a wrong byte anywhere in what was read makes the program exit with status 1.

    python3 pydict.py [N] [SEED]        # N defaults to 3,000,000
"""

import random
import sys
import time


def value(i):
    # Small ints (below 256) are shared objects in CPython; these are not, so every
    # entry owns its tuple and its ints, as in a real program's records.
    return (i * 7 + 1000, (i * 31) % 1000003 + 1000, i ^ 0x5A5A5A)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    if n <= 0:
        print("pydict: N must be positive", file=sys.stderr)
        return 2
    print(f"pydict: {n} entries, {n} random lookups, seed {seed}", flush=True)

    t = time.perf_counter()
    d = {}
    for i in range(n):
        d[f"key:{i:012d}"] = value(i)
    build = time.perf_counter() - t
    print(f"pydict: build {build:.3f} s", flush=True)

    rng = random.Random(seed)
    got = 0
    want = 0
    t = time.perf_counter()
    for _ in range(n):
        i = rng.randrange(n)
        a, b, c = d[f"key:{i:012d}"]
        got = (got + a * 3 + b * 5 + c) & 0xFFFFFFFFFFFF
    lookup = time.perf_counter() - t
    print(f"pydict: lookup {lookup:.3f} s ({n / lookup:.0f} lookups/s)", flush=True)

    # The same keys again, with the values computed rather than read.
    rng = random.Random(seed)
    for _ in range(n):
        a, b, c = value(rng.randrange(n))
        want = (want + a * 3 + b * 5 + c) & 0xFFFFFFFFFFFF
    if len(d) != n or got != want:
        print(
            f"pydict: WRONG: {len(d)} entries (want {n}), checksum {got:#x} (want {want:#x})",
            file=sys.stderr,
        )
        return 1
    print(f"pydict: checksum {got:#x} ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
