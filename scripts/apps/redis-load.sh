#!/usr/bin/env bash
# Loads KEYS keys of BYTES-byte values into the Redis at 127.0.0.1:PORT, each key once, in
# the names redis-benchmark -r KEYS uses (key:000000000000 to key:KEYS-1, 12 digits), so
# that its SET and GET phases then find every key. One value for every key, of random
# printable characters like redis-benchmark's own. Through `redis-cli --pipe` (Debian's
# redis-tools): far faster than redis-benchmark's random SETs, which reach only 95% of the
# keys with 3 x KEYS requests. Exits non-zero unless every SET was answered OK.
#
#   scripts/apps/redis-load.sh PORT KEYS BYTES
set -euo pipefail
if [ $# -ne 3 ]; then
    echo "usage: $0 PORT KEYS BYTES" >&2
    exit 2
fi
port=$1 keys=$2 bytes=$3
out=$(awk -v k="$keys" -v d="$bytes" 'BEGIN {
    srand(1)
    for (i = 0; i < d; i++) v = v sprintf("%c", 48 + int(rand() * 75))
    for (i = 0; i < k; i++)
        printf "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$%d\r\n%s\r\n", i, d, v
}' | redis-cli -p "$port" --pipe 2>&1) || true
if ! grep -q "errors: 0, replies: $keys\$" <<<"$out"; then
    echo "redis-load.sh: loading $keys keys into 127.0.0.1:$port failed:" >&2
    echo "$out" >&2
    exit 1
fi
echo "redis-load.sh: $keys keys of $bytes bytes loaded"
