#!/usr/bin/env bash
# Every figure in BENCHMARKS.md, measured in one go (release build, medians of 3 runs,
# each beside the all-local and Linux-swap runs of the same invocation). Needs root for
# the Linux-swap baseline. Output: one JSON line per system run in bench-results/*.jsonl,
# and the human summaries on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p farmem-cli
F=target/release/farmem
out=bench-results
mkdir -p "$out"
run() {
    local name=$1
    shift
    echo "== $name: farmem $*"
    "$F" "$@" --json | tee "$out/$name.jsonl" >/dev/null
    "$F" summarize < "$out/$name.jsonl"
}
"$F" floor --runs 5 | tee "$out/floor.txt"
run random-compressed bench --size 1G --local-mem 256M --backend compressed --pattern random --baseline --runs 3
run random-mem bench --size 1G --local-mem 256M --backend mem --pattern random --baseline --runs 3
run skewed-compressed bench --size 1G --local-mem 256M --backend compressed --pattern skewed --baseline --runs 3
run skewed-fifo bench --size 1G --local-mem 256M --backend compressed --pattern skewed --evict fifo --runs 3
run seq-readahead bench --size 1G --local-mem 256M --backend compressed --pattern seq --prefetch readahead --baseline --runs 3
run seq-none bench --size 1G --local-mem 256M --backend compressed --pattern seq --prefetch none --runs 3
run random-2threads bench --size 1G --local-mem 256M --backend compressed --pattern random --threads 2 --baseline --runs 3
run random-thread-mode bench --size 1G --local-mem 256M --backend compressed --pattern random --fault-mode thread --runs 3
