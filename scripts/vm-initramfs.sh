#!/bin/sh
# Builds an initramfs for `farmem vm --kernel`: busybox-static, the project's quicksort
# (tests/c/quicksort.c) and farmem-exit (scripts/vm/exit.c), both static, and an /init
# that mounts /proc, runs the workload, prints its result on the console (ttyS0) and
# writes its exit status to port 0xf4, which becomes farmem vm's exit code.
#
#   scripts/vm-initramfs.sh OUT.cpio.gz [QUICKSORT_SIZE]     (default size 64M)
#   farmem vm --memory 256M --local-mem 64M --kernel /boot/vmlinuz-* --initrd OUT.cpio.gz
#
# Needs busybox-static and gcc (apt-get install busybox-static gcc).
set -eu
out=${1:?usage: scripts/vm-initramfs.sh OUT.cpio.gz [QUICKSORT_SIZE]}
size=${2:-64M}
here=$(cd "$(dirname "$0")/.." && pwd)
bb=$(command -v busybox) || { echo "vm-initramfs: install busybox-static (apt-get install busybox-static)" >&2; exit 1; }
file -L "$bb" 2>/dev/null | grep -q "statically linked" || ldd "$bb" 2>&1 | grep -q "not a dynamic" || {
    echo "vm-initramfs: $bb is not static; install busybox-static" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev"
cp "$bb" "$root/bin/busybox"
for app in sh mount echo cat; do ln -s busybox "$root/bin/$app"; done
gcc -O2 -static -o "$root/bin/quicksort" "$here/tests/c/quicksort.c"
gcc -O2 -static -o "$root/bin/farmem-exit" "$here/scripts/vm/exit.c"
cat > "$root/init" <<INIT
#!/bin/sh
mount -t proc proc /proc
echo "init: \$(head -1 /proc/meminfo)"
/bin/quicksort --size $size
status=\$?
echo "init: quicksort exited with \$status"
/bin/farmem-exit \$status
INIT
chmod +x "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -9) > "$out"
echo "vm-initramfs: $out ($(wc -c < "$out") bytes): busybox, quicksort --size $size, farmem-exit"
