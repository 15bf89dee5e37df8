/* farmem-exit CODE: writes CODE to port 0xf4, which `farmem vm` takes as the guest's exit
 * code (and stops the VM). Static, for the initramfs scripts/vm-initramfs.sh builds; the
 * guest's init runs it as root (ioperm needs CAP_SYS_RAWIO). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 0;
    if (ioperm(0xf4, 1, 1) != 0) {
        perror("farmem-exit: ioperm(0xf4)");
        return 1;
    }
    outb((unsigned char)code, 0xf4);
    return 0; /* not reached: the VMM stops the VM at the write */
}
