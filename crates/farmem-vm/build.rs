//! Builds the minimal guest (guest/guest.c) into a flat binary with the system's C
//! compiler: freestanding, no SSE, loaded at 1 MiB (guest/guest.ld).

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e} (install gcc and binutils)"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let elf = out.join("guest.elf");
    println!("cargo:rerun-if-changed=guest/guest.c");
    println!("cargo:rerun-if-changed=guest/guest.ld");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    run(Command::new(cc)
        .args([
            "-ffreestanding",
            "-fno-pic",
            "-fno-pie",
            "-no-pie",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-nostdlib",
            "-static",
            "-O2",
            "-Wall",
            "-Werror",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
            "-T",
            "guest/guest.ld",
            "-o",
        ])
        .arg(&elf)
        .arg("guest/guest.c"));
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(out.join("guest.bin")));
}
