#!/bin/bash
F=/work/main/target/release/farmem
cd /tmp/bench
$F bench-redis --workload lrange --dataset 512M --local 0.125,0.25,0.5 --systems farmem,linux-swap,all-local --runs 3 --duration 8 > A1.log 2>&1
$F bench-redis --workload lrange --dataset 512M --local 0.125,0.25,0.5 --systems farmem --runs 3 --duration 8 --run-arg=--prefetch=readahead,pointer > A2.log 2>&1
$F bench-redis --workload lrange --dataset 512M --local 0.125,0.25,0.5 --systems farmem --runs 3 --duration 8 --run-arg=--no-object-prefetch > A3.log 2>&1
$F bench-redis --workload get-mix --dataset 512M --local 0.25 --systems farmem --runs 3 --duration 8 > B1.log 2>&1
$F bench-redis --workload get-mix --dataset 512M --local 0.25 --systems farmem --runs 3 --duration 8 --run-arg=--prefetch=readahead,pointer > B2.log 2>&1
for i in 1 2 3; do for A in readahead readahead,pointer; do echo "== $A run $i"; $F run --local-mem 64M --prefetch $A --stats -- /tmp/quicksort --size 256M 2>&1 | grep -E 'quicksort: sort|faults:|fetched|pointer chase'; done; done > C.log 2>&1
for i in 1 2 3; do for A in readahead readahead,pointer; do echo "== $A run $i"; $F run --local-mem 25M --prefetch $A --stats -- /tmp/listwalk --nodes 100000 --passes 3 2>&1 | grep -E 'listwalk: list|faults:|fetched|pointer chase'; done; done > D.log 2>&1
echo done > done
