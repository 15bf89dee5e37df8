#!/usr/bin/env bash
# Unmodified C programs under farmem (`farmem run`), under Linux swap (a memory cgroup
# capped at the same budget, swapping to zram) and all-local, by `farmem bench-cmd`:
#
#   quicksort: sorts 1 GiB of 64-bit numbers with 256 MiB local; metric: the sort's
#              seconds (lower is better).
#   skewed:    10 s of random read-modify-write updates over 1 GiB, 90% of them to a hot
#              10% of the pages (about 102 MiB, so the hot set fits in the 256 MiB
#              budget); metric: updates per second (higher is better).
#
# Medians of 3 runs, the systems taking turns in each run. Needs root for the Linux-swap
# baseline (cgroup v1 memory controller, /dev/zram0) and gcc. Output:
# bench-results/cmd-*.jsonl, one JSON line per run (`farmem summarize < FILE` prints the
# medians again), and bench-results/cmd-*.txt, the summaries.
#
# About 15 minutes on the 2-vCPU test machine. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p farmem-cli -p farmem-preload
F=target/release/farmem
mkdir -p target/c bench-results
for p in quicksort skewed; do
    gcc -O2 -Wall -Wextra -Werror -pthread "tests/c/$p.c" -o "target/c/$p"
done
out=bench-results
status=0
run() {
    local name=$1
    shift
    echo "== $name: farmem $*"
    # A failed run makes bench-cmd exit 1 after all its runs: keep its records and go on.
    # --json goes right after the subcommand: everything after `--` is the program's.
    "$F" "$1" --json "${@:2}" >"$out/$name.jsonl" || status=1
    "$F" summarize <"$out/$name.jsonl" | tee "$out/$name.txt"
}
run cmd-quicksort-1g-256m bench-cmd --local-mem 256M --backend compressed: --runs 3 --timeout 900 \
    --metric 'sort ([0-9.]+) s' --metric-name 'sort s' \
    -- target/c/quicksort --size 1G
run cmd-skewed-1g-256m bench-cmd --local-mem 256M --backend compressed: --runs 3 --timeout 900 \
    --metric '([0-9.]+) updates/s' --higher-is-better --metric-name 'updates/s' \
    -- target/c/skewed --size 1G --seconds 10
exit $status
