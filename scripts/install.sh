#!/usr/bin/env bash
# Builds farmem and installs it under a prefix (default /usr/local):
#
#   bin/farmem                         the command
#   lib/libfarmem.so, libfarmem.so.0   the C API's no-op library (SONAME libfarmem.so.0)
#   lib/farmem/libfarmem_preload.so    what `farmem run` preloads into a program
#   include/farmem.h                   the C API
#   include/farmem_plugin.h            the ABI of policy plug-ins (farmem run --plugin)
#   share/farmem/plugins/minimal.c     a plug-in to start from
#   lib/pkgconfig/farmem.pc            `pkg-config --cflags --libs farmem`
#
# Usage: scripts/install.sh [--prefix DIR] [--debug]
#   --debug installs an unoptimised build (cargo's dev profile) instead of release.
# Running it again replaces the installed files (each one atomically, so programs that
# are running keep the copy they loaded).
set -euo pipefail
started_in=$PWD
cd "$(dirname "$0")/.."

prefix=/usr/local
profile=release
usage() {
    if [ "${1:-0}" = 0 ]; then
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    else
        echo "usage: scripts/install.sh [--prefix DIR] [--debug]" >&2
    fi
    exit "${1:-0}"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage 2; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --debug) profile=debug; shift ;;
        -h | --help) usage 0 ;;
        *) echo "scripts/install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done

if ! command -v cargo >/dev/null; then
    echo "scripts/install.sh: cargo is not installed; install Rust from your distribution or rustup" >&2
    exit 1
fi
case "$prefix" in
    /*) ;;
    *) prefix="$started_in/$prefix" ;;
esac

echo "scripts/install.sh: building ($profile)"
if [ "$profile" = release ]; then
    cargo build --workspace --release
else
    cargo build --workspace
fi

meta=$(cargo metadata --format-version 1 --no-deps)
target_dir=$(printf '%s' "$meta" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
version=$(printf '%s' "$meta" | sed -n 's/.*"name":"farmem-capi","version":"\([^"]*\)".*/\1/p')
out="${target_dir:-target}/$profile"
[ -n "$version" ] || version=0.0.0

# Copies to a temporary name beside the destination, then renames over it.
put() { # mode src dst
    local tmp
    tmp="$(dirname "$3")/.$(basename "$3").tmp.$$"
    install -m "$1" "$2" "$tmp"
    mv -f "$tmp" "$3"
    echo "installed $3"
}

install -d "$prefix/bin" "$prefix/lib/farmem" "$prefix/lib/pkgconfig" "$prefix/include" "$prefix/share/farmem/plugins"

put 755 "$out/farmem" "$prefix/bin/farmem"

# The stub's debug info is nearly all std's: stripped, it is 0.4 MB instead of 4.3.
stub=$(mktemp)
trap 'rm -f "$stub"' EXIT
cp "$out/libfarmem_capi.so" "$stub"
if command -v strip >/dev/null; then
    strip --strip-debug "$stub"
fi
put 755 "$stub" "$prefix/lib/libfarmem.so"
ln -sfn libfarmem.so "$prefix/lib/libfarmem.so.0"
echo "installed $prefix/lib/libfarmem.so.0 -> libfarmem.so"

if [ -f "$out/libfarmem_preload.so" ]; then
    put 755 "$out/libfarmem_preload.so" "$prefix/lib/farmem/libfarmem_preload.so"
else
    echo "scripts/install.sh: warning: $out/libfarmem_preload.so was not built" \
        "(no crates/farmem-preload?); farmem run will not work from this install" >&2
fi

put 644 include/farmem.h "$prefix/include/farmem.h"
put 644 include/farmem_plugin.h "$prefix/include/farmem_plugin.h"
put 644 plugins/minimal.c "$prefix/share/farmem/plugins/minimal.c"

pc=$(mktemp)
trap 'rm -f "$stub" "$pc"' EXIT
# The prefix goes into a sed replacement: escape \, & and the | delimiter.
esc=$(printf '%s' "$prefix" | sed 's/[\\&|]/\\&/g')
sed -e "s|@PREFIX@|$esc|g" -e "s|@VERSION@|$version|g" farmem.pc.in >"$pc"
put 644 "$pc" "$prefix/lib/pkgconfig/farmem.pc"

if [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null &&
    { [ "$prefix" = /usr/local ] || [ "$prefix" = /usr ]; }; then
    ldconfig
    echo "ran ldconfig"
fi

echo
echo "farmem $version installed under $prefix"
case ":${PATH}:" in
    *":$prefix/bin:"*) ;;
    *) echo "  add $prefix/bin to PATH to run farmem" ;;
esac
echo "  C programs: cc prog.c \$(pkg-config --cflags --libs farmem)"
if [ "$prefix" != /usr/local ] && [ "$prefix" != /usr ]; then
    echo "  with PKG_CONFIG_PATH=$prefix/lib/pkgconfig, and -Wl,-rpath,$prefix/lib or"
    echo "  LD_LIBRARY_PATH=$prefix/lib so the loader finds libfarmem.so.0"
fi
