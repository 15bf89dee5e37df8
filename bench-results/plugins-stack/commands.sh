#!/bin/bash
F=/work/main/target/release/farmem
G=/tmp/bench/redis_guide.so
R=tcp://127.0.0.1:7077
cd /tmp/bench3
$F bench-redis --workload lrange --dataset 512M --local 0.125,0.25,0.5 --systems farmem --runs 3 --duration 8 --run-arg=--plugin=$G > G1.log 2>&1
$F bench-redis --workload lrange --dataset 512M --local 0.125,0.25,0.5 --systems farmem --runs 3 --duration 8 --backend $R --run-arg=--no-object-prefetch > R1.log 2>&1
$F bench-redis --workload lrange --dataset 512M --local 0.125,0.25,0.5 --systems farmem --runs 3 --duration 8 --backend $R > R2.log 2>&1
$F bench-redis --workload lrange --dataset 512M --local 0.125,0.25,0.5 --systems farmem --runs 3 --duration 8 --backend $R --run-arg=--plugin=$G > R3.log 2>&1
echo done > done
