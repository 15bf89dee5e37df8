#!/usr/bin/env bash
# The Redis figures: a real redis-server under farmem (`farmem run`), in a memory cgroup
# capped at the same budget swapping to zram (Linux swap), and all-local, with 1/8, 1/4,
# 1/2 and all of the dataset local; medians of 3 runs, every reply checked byte for byte.
#
# Needs root (the Linux-swap baseline: cgroup v1 memory controller, /dev/zram0),
# redis-server (installed with apt-get if missing) and a farmem with the `run` command.
# Output: bench-results/redis-*.jsonl, one JSON line per measurement (read them with
# `farmem summarize < FILE`), and the summaries on stdout.
#
# 1 GiB of values (Redis's heap is about 1.25 GiB of it) keeps each measurement near
# 15 s on the 2-vCPU test machine (load, 1 s warm-up, 10 s of reads, every key read back):
# 36 measurements per workload, about 20 minutes for both.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi
cargo build --release -q -p farmem-cli -p farmem-preload
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
run redis-get-mix bench-redis --workload get-mix --dataset 1G --local 0.125,0.25,0.5,1 --systems farmem,linux-swap,all-local --backend compressed --duration 10 --runs 3 --clients 4 --pipeline 1
run redis-lrange bench-redis --workload lrange --dataset 1G --local 0.125,0.25,0.5,1 --systems farmem,linux-swap,all-local --backend compressed --duration 10 --runs 3 --clients 4 --pipeline 1
