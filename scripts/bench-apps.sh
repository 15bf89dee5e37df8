#!/usr/bin/env bash
# The application suite: unmodified programs with stock clients, each under farmem
# (`farmem run`, compressed tier), under Linux swap (a memory cgroup capped at the same
# budget, swapping to zram) and all-local, taking turns in one invocation; medians of 3.
# Budgets are 25%, 50%, 100% and 200% of each program's footprint: all-local's maximum RSS
# in the first run (`bench-cmd --local-frac`, `bench-redis --local-of footprint`).
#
#   redis      Debian's redis-server driven by redis-benchmark: every key loaded first
#              (scripts/apps/redis-load.sh, through redis-cli --pipe), then a SET and a
#              GET phase (-c 8, random keys) over a key space 4x the 25% budget, at 64 B,
#              1 KiB and 4 KiB values. One server run gives both phases' figures.
#   memcached  memcached -t 4 driven by memcaslap (Debian's memaslap, libmemcached-tools):
#              4 KiB values, 16-32 B keys, 90% get / 10% set (scripts/apps/memaslap.cnf),
#              every get verified (-v 1); a run with a miss or a failed verification
#              fails (--reject). Each set is a new key, so the footprint grows to
#              sets x ~4.2 KiB; gets read keys already set, from windows that hold
#              every key the run sets.
#   python     scripts/apps/pydict.py: builds a dict of N entries, then N random
#              lookups, checksum checked; build and lookup seconds.
#   get-mix    farmem bench-redis's GET mix (4-128 KiB strings, every reply checked).
#   lrange     farmem bench-redis's LRANGE over lists of 200 elements.
#   quicksort  tests/c/quicksort.c: sort seconds.
#
# Footprints, measured all-local on the 2-vCPU test machine (max RSS): redis 64 B x 3M
# keys 515 MiB, 1 KiB x 500k keys 673 MiB, 4 KiB x 120k keys 613 MiB; memcached after
# 100k sets 442 MiB; python 2M entries 527 MiB; bench-redis's 512 MiB of values 631 MiB
# (get-mix) and 568 MiB (lrange); quicksort 512 MiB.
#
# Time: about 70 minutes on the 2-vCPU test machine, estimated as 30 times a run at
# SCALE=0.1 RUNS=1 (3.6 minutes; per row at full size: the three redis rows 26 minutes,
# memcached 12, python 15, get-mix 6, lrange 6, quicksort 4). The 25% and 50% budgets
# take most of it; should they grow worse than linearly with the size, it stays under 2
# hours. Run it on an otherwise idle machine.
#
# Needs root (the Linux-swap baseline: cgroup v1 memory controller, /dev/zram0), gcc,
# python3, and Debian's redis-server, redis-tools, memcached and libmemcached-tools
# (installed here with apt-get if missing).
#
# Environment:
#   FARMEM=path/to/farmem   the farmem whose `run` is measured (e.g. an older build);
#                           the harness itself is this tree's release build.
#   ROWS=redis,memcached    only these rows (default: redis,memcached,python,get-mix,
#                           lrange,quicksort).
#   RUNS=3                  runs per system; figures are medians.
#   FRACS=0.25,0.5,1,2      budgets, as fractions of the footprint.
#   SYSTEMS=farmem,linux-swap,all-local
#                           the systems to run (all-local is needed for the footprint);
#                           e.g. SYSTEMS=farmem,all-local with FARMEM= to measure an
#                           older build without running Linux swap again.
#   SCALE=1                 multiplies every dataset (e.g. SCALE=0.05 for a quick try).
#   REDIS_VALUES=64,1024,4096
#                           the redis row's value sizes (bytes).
#   FARMEM_ALLOCATOR=NAME   the heap's allocator under farmem (`farmem run --allocator`).
#   OUT=bench-results       where the records go (e.g. OUT=/tmp/try for a quick try).
#
# Output: $OUT/apps-ROW.jsonl (one JSON line per run and metric; `farmem summarize FILE`
# prints the medians again) and $OUT/apps-table.md, the one table of every row that ran,
# which is also printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-redis,memcached,python,get-mix,lrange,quicksort}
RUNS=${RUNS:-3}
SYSTEMS=${SYSTEMS:-farmem,linux-swap,all-local}
FRACS=${FRACS:-0.25,0.5,1,2}
SCALE=${SCALE:-1}
for r in ${ROWS//,/ }; do
    case $r in
    redis | memcached | python | get-mix | lrange | quicksort) ;;
    *)
        echo "bench-apps.sh: unknown row $r in ROWS; use redis, memcached, python, get-mix, lrange, quicksort" >&2
        exit 2
        ;;
    esac
done
want() { [[ ",$ROWS," == *",$1,"* ]]; }
# N x SCALE, at least 1.
scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s); print (v < 1 ? 1 : v) }'; }

# The packages the rows need, from Debian, if missing.
pkgs=()
want redis && ! command -v redis-benchmark >/dev/null && pkgs+=(redis-server redis-tools)
{ want get-mix || want lrange; } && ! command -v redis-server >/dev/null && pkgs+=(redis-server)
want memcached && ! command -v memcached >/dev/null && pkgs+=(memcached)
want memcached && ! command -v memcaslap >/dev/null && pkgs+=(libmemcached-tools)
if [ ${#pkgs[@]} -gt 0 ]; then
    echo "bench-apps.sh: installing ${pkgs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" ||
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"; }
    # The packages start their services; the benchmark starts its own servers.
    for s in redis-server memcached; do
        service "$s" stop >/dev/null 2>&1 || true
    done
fi

cargo build --release -q -p farmem-cli -p farmem-preload
H=target/release/farmem
measured=()
if [ -n "${FARMEM:-}" ]; then
    measured=(--farmem "$FARMEM")
fi
PY=$(command -v /usr/bin/python3 || command -v python3)
out=${OUT:-bench-results}
mkdir -p "$out" target/c
files=()
status=0

# One row: `farmem bench-cmd|bench-redis ARGS`, its records into apps-NAME.jsonl. A failed
# run makes the command exit 1 after all its runs: keep its records and go on.
row() {
    local name=$1
    shift
    echo "== $name: farmem $*" >&2
    local t0=$SECONDS
    "$H" "$@" >"$out/apps-$name.jsonl" || status=1
    files+=("$out/apps-$name.jsonl")
    echo "== $name: $((SECONDS - t0)) s" >&2
}
# bench-cmd's options shared by every row.
cmd=(bench-cmd --json --local-frac "$FRACS" --runs "$RUNS" --systems "$SYSTEMS" --backend compressed: --timeout 1200 "${measured[@]}")

if want redis; then
    port=7311
    # value bytes, keys, label
    for spec in "64 3000000 64 B" "1024 500000 1 KiB" "4096 120000 4 KiB"; do
        set -- $spec
        [[ ",${REDIS_VALUES:-64,1024,4096}," == *",$1,"* ]] || continue
        d=$1 k=$(scaled "$2") label="$3 $4"
        n=$(scaled 200000)
        client="scripts/apps/redis-load.sh $port $k $d"
        client+=" && redis-benchmark -p $port -t set -r $k -n $n -d $d -c 8 -q"
        client+=" && redis-benchmark -p $port -t get -r $k -n $n -d $d -c 8 -q"
        row "redis-${label// /}" "${cmd[@]}" --label "redis $label" \
            --port $port --client "$client" --higher-is-better \
            --metric 'SET: ([0-9.]+) requests per second' --metric-name 'SET req/s' \
            --metric 'GET: ([0-9.]+) requests per second' --metric-name 'GET req/s' \
            -- redis-server --port $port --save '' --appendonly no
    done
fi

if want memcached; then
    port=11311
    x=$(scaled 1000000)
    # Windows of 16 x w keys (w in units of 1024) hold every key set (x / 10), so gets
    # reach all of them.
    w=$(awk -v s="$SCALE" 'BEGIN { v = int(8 * s + 0.999); print (v < 1 ? 1 : v) }')k
    row memcached "${cmd[@]}" --label "memcached 4 KiB" \
        --port $port --higher-is-better \
        --client "memcaslap -s 127.0.0.1:$port -F scripts/apps/memaslap.cnf -T 2 -c 16 -w $w -x $x -v 1" \
        --metric 'TPS: ([0-9]+)' --metric-name 'ops/s' \
        --reject '(get_misses|verify_misses|verify_failed): [1-9]' \
        -- memcached -u "$(id -un)" -t 4 -m 2048 -p $port -U 0
fi

if want python; then
    n=$(scaled 2000000)
    row python "${cmd[@]}" --label "python dict" \
        --metric 'build ([0-9.]+) s' --metric-name 'build s' \
        --metric 'lookup ([0-9.]+) s' --metric-name 'lookup s' \
        -- "$PY" scripts/apps/pydict.py "$n"
fi

redis_mix=(--local "$FRACS" --local-of footprint --systems "$SYSTEMS" --backend compressed --duration 5 --runs "$RUNS" --json "${measured[@]}")
if want get-mix; then
    row redis-get-mix bench-redis --workload get-mix --dataset "$(scaled 512)M" "${redis_mix[@]}"
fi
if want lrange; then
    row redis-lrange bench-redis --workload lrange --dataset "$(scaled 512)M" "${redis_mix[@]}"
fi

if want quicksort; then
    gcc -O2 -Wall -Wextra -Werror -pthread tests/c/quicksort.c -o target/c/quicksort
    size=$(scaled 512)M
    row quicksort "${cmd[@]}" --label "quicksort $size" \
        --metric 'sort ([0-9.]+) s' --metric-name 'sort s' \
        -- target/c/quicksort --size "$size"
fi

echo >&2
"$H" summarize --table "${files[@]}" | tee "$out/apps-table.md"
exit $status
