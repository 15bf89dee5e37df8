#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, and every unit,
# integration, property and end-to-end test. Installs what it needs itself.
#
# Needs: Linux with userfaultfd (5.13+), root (userfaultfd, and the Linux-swap baseline's
# memory cgroup and zram), the Rust toolchain, and redis-server (installed here with
# apt-get if missing). The tests use real userfaultfd, real memfd page caches, a real
# Redis and, for the baseline, the real cgroup v1 memory controller and zram.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "scripts/test.sh: cargo is not installed; install Rust from your distribution or rustup" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: warning: not root; userfaultfd and the Linux-swap tests may be refused" >&2
fi

# The Redis tests (crates/farmem-cli/tests/redis.rs) run a real redis-server; the
# memcached tests (crates/farmem-cli/tests/memcached.rs) run Debian's memcached and its
# stock protocol conformance tests (memccapable, in libmemcached-tools).
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v memcached >/dev/null || need+=(memcached)
command -v memccapable >/dev/null || need+=(libmemcached-tools)
# farmem vm's Linux boot test (crates/farmem-cli/tests/cli.rs) boots Debian's cloud kernel
# with an initramfs built from busybox-static (scripts/vm-initramfs.sh).
# The QEMU test runs Debian's qemu-system-x86 (software emulation) under farmem run.
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-cloud-amd64)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
if [ ${#need[@]} -gt 0 ]; then
    echo "scripts/test.sh: installing ${need[*]} for the Redis, memcached and VM tests" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" ||
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"; } ||
        echo "scripts/test.sh: warning: could not install ${need[*]}; the tests that need them will say they were skipped" >&2
fi

# redis-tools (redis-benchmark, the application suite's client, scripts/bench-apps.sh) is
# not installed here: no test needs it. bench-cmd's server-mode tests
# (crates/farmem-cli/tests/bench_cmd.rs) bring their own tiny server and client
# (tests/support/countserver.c, built with gcc), and bench-apps.sh installs what it uses.

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# cargo test builds only what tests link; the cdylibs (libfarmem_capi.so, and
# libfarmem_preload.so that `farmem run` preloads) must be built beside the binary.
cargo build --workspace
# --no-fail-fast: one run shows every failing test binary, not only the first.
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line with the totals of every test binary (the last binary cargo runs is a
# doc-test run that may hold no test, which would otherwise be the closing line).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
