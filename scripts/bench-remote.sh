#!/usr/bin/env bash
# The memory node's figures for BENCHMARKS.md (issue 4), all on this machine's loopback:
#   1. farmem bench-remote: a plain TCP round trip with a 4 KiB reply beside farmem's
#      remote major faults, one client's pull rate and the node's CPU per page;
#   2. quicksort of 1 GiB with 256 MiB local on the remote tier, beside Linux swap and
#      all-local (farmem bench-cmd);
#   3. Redis's GET mix over 1 GiB at 25% local on the remote tier (farmem bench-redis).
# The node for 2 and 3 is a `farmem serve` started here with a fresh token and stopped
# at the end. Records go to bench-results/remote-*.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi
cargo build --release -q -p farmem-cli -p farmem-preload
F=target/release/farmem
out=bench-results
mkdir -p target/c "$out"
gcc -O2 -Wall -Wextra -Werror -pthread tests/c/quicksort.c -o target/c/quicksort

echo "== remote-floor: farmem bench-remote --runs 3"
"$F" bench-remote --runs 3 --json | tee "$out/remote-floor.jsonl"

dir=$(mktemp -d)
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null; rm -rf "$dir"' EXIT
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/token"
chmod 600 "$dir/token"
port=7077
"$F" serve --listen "127.0.0.1:$port" --capacity 6G --token-file "$dir/token" --quiet &
node=$!
for _ in $(seq 50); do
    "$F" node-status "127.0.0.1:$port" --token-file "$dir/token" >/dev/null 2>&1 && break
    sleep 0.1
done
uri="tcp://127.0.0.1:$port"

echo "== remote-quicksort: farmem bench-cmd --backend $uri"
"$F" bench-cmd --json --local-mem 256M --backend "$uri" --run-arg="--token-file=$dir/token" \
    --runs 3 --timeout 900 --metric 'sort ([0-9.]+) s' --metric-name 'sort s' \
    -- target/c/quicksort --size 1G >"$out/remote-quicksort-1g-256m.jsonl" || true
"$F" summarize <"$out/remote-quicksort-1g-256m.jsonl" | tee "$out/remote-quicksort-1g-256m.txt"

echo "== remote-redis-get-mix: farmem bench-redis --backend $uri"
"$F" bench-redis --json --workload get-mix --dataset 1G --local 0.25 \
    --systems farmem,linux-swap,all-local --backend "$uri" --run-arg="--token-file=$dir/token" \
    --duration 10 --runs 3 --clients 4 --pipeline 1 | tee "$out/remote-redis-get-mix.jsonl" >/dev/null
"$F" summarize <"$out/remote-redis-get-mix.jsonl" | tee "$out/remote-redis-get-mix.txt"
"$F" node-status "127.0.0.1:$port" --token-file "$dir/token"
