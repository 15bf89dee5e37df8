//! Booting a Linux kernel (`farmem vm --kernel`): rust-vmm's linux-loader puts a bzImage,
//! its command line and boot parameters into guest RAM (through vm-memory, over the same
//! mapping the memory slot uses), and the vCPU enters the kernel's 64-bit entry point the
//! way the x86 boot protocol describes, as Firecracker and Cloud Hypervisor do. The board
//! is KVM's in-kernel PIC, IOAPIC and PIT, and one 16550 UART (rust-vmm's vm-superio) at
//! 0x3f8 on IRQ 4 for the console. One vCPU: there is no ACPI or MP table for more.
//!
//! Guest physical layout (below 1 MiB, then the kernel):
//!
//! ```text
//!  0x500    GDT (null, null, 64-bit code 0x10, data 0x18)     0x520  IDT (empty)
//!  0x7000   boot_params (the "zero page")
//!  0x9000   PML4   0xa000  PDPT   0xb000..  page directories (2 MiB pages, the first 4 GiB)
//!  0x8ff0   the stack at entry          0x20000  the command line
//!  1 MiB    the kernel (protected-mode part of the bzImage)
//!  top      the initrd, page-aligned, below 896 MiB
//! ```
//!
//! On this project's machine the nested hypervisor (kvm_pvm) runs a guest's ring 0 in
//! KVM's instruction emulator, and Debian's kernel stops in its early boot on an
//! instruction the emulator lacks (`lock cmpxchg16b`): `farmem vm` then reports KVM's
//! emulation failure with the console's last lines. See DESIGN.md, "Virtual machines".

use crate::VmError;
use kvm_bindings::{kvm_fpu, kvm_pit_config, kvm_regs, kvm_sregs};
use kvm_ioctls::{VcpuFd, VmFd};
use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{KernelLoader, bzimage::BzImage, load_cmdline};
use std::path::PathBuf;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const GDT_ADDR: u64 = 0x500;
const IDT_ADDR: u64 = 0x520;
const ZERO_PAGE: u64 = 0x7000;
const STACK: u64 = 0x8ff0;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
const PD: u64 = 0xb000;
const CMDLINE_ADDR: u64 = 0x20000;
const CMDLINE_MAX: usize = 4096;
const HIGH_MEMORY: u64 = 0x10_0000;
/// Where the low RAM the kernel may use ends (the EBDA and BIOS area above it).
const EBDA_START: u64 = 0x9_fc00;
/// The highest address an initrd may end at for old kernels (`initrd_addr_max` default).
const INITRD_MAX: u64 = 0x3800_0000;
const MAPPED_GIGS: u64 = 4;
/// The UART's interrupt line.
pub(crate) const SERIAL_IRQ: u32 = 4;
/// What the command line holds unless the user says otherwise.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 earlyprintk=serial reboot=k panic=1 pci=off nomodule i8042.noaux";

/// A Linux kernel to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// A bzImage (Debian's `/boot/vmlinuz-*`).
    pub image: PathBuf,
    /// An initramfs (a newc cpio archive, compressed or not).
    pub initrd: Option<PathBuf>,
    /// The kernel's command line.
    pub cmdline: String,
}

/// Loads the kernel, its initrd and command line, the boot parameters, the GDT and the
/// page tables into guest RAM of `memory` bytes at `host` (mapped with `mmap_flags`);
/// returns the entry point.
pub(crate) fn load(
    host: *mut u8,
    memory: u64,
    mmap_flags: i32,
    k: &Kernel,
) -> Result<u64, VmError> {
    let cfg = |what: String| VmError::Config(what);
    // SAFETY: `host` is the start of a live read-write shared or private mapping of
    // `memory` bytes that outlives this function (the caller's guest RAM); vm-memory
    // only reads and writes inside it.
    let region = unsafe {
        MmapRegion::<()>::build_raw(
            host,
            memory as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            mmap_flags,
        )
    }
    .map_err(|e| cfg(format!("cannot describe guest RAM to vm-memory: {e}")))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| cfg("guest RAM does not fit vm-memory".into()))?;
    let mem = GuestMemoryMmap::from_regions(vec![region])
        .map_err(|e| cfg(format!("cannot describe guest RAM to vm-memory: {e}")))?;

    let mut image = std::fs::File::open(&k.image)
        .map_err(|e| cfg(format!("--kernel {}: {e}", k.image.display())))?;
    let loaded = BzImage::load(&mem, None, &mut image, Some(GuestAddress(HIGH_MEMORY)))
        .map_err(|e| {
            cfg(format!(
                "--kernel {}: not a bzImage this VMM can load ({e}); give a bzImage such as Debian's /boot/vmlinuz-*",
                k.image.display()
            ))
        })?;
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| cfg(format!("{e}")))?;
    cmdline
        .insert_str(&k.cmdline)
        .map_err(|e| cfg(format!("--cmdline: {e}")))?;
    load_cmdline(&mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| cfg(format!("--cmdline: {e}")))?;

    let mut params = boot_params::default();
    if let Some(h) = loaded.setup_header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = k.cmdline.len() as u32 + 1;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some(path) = &k.initrd {
        let bytes =
            std::fs::read(path).map_err(|e| cfg(format!("--initrd {}: {e}", path.display())))?;
        let top = memory.min(INITRD_MAX);
        let at = top.saturating_sub(bytes.len() as u64) & !0xfff;
        if at <= loaded.kernel_end {
            return Err(cfg(format!(
                "--initrd {} ({} bytes) does not fit between the kernel and {} MiB of RAM; give more --memory",
                path.display(),
                bytes.len(),
                top >> 20
            )));
        }
        mem.write_slice(&bytes, GuestAddress(at))
            .map_err(|e| cfg(format!("cannot write the initrd: {e}")))?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = bytes.len() as u32;
    }
    let ram = |addr: u64, size: u64| boot_e820_entry {
        addr,
        size,
        r#type: 1,
    };
    params.e820_table[0] = ram(0, EBDA_START);
    params.e820_table[1] = ram(HIGH_MEMORY, memory - HIGH_MEMORY);
    params.e820_entries = 2;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        &mem,
    )
    .map_err(|e| cfg(format!("cannot write the boot parameters: {e}")))?;

    let gdt: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let put = |addr: u64, v: u64| {
        mem.write_obj(v, GuestAddress(addr))
            .map_err(|e| cfg(format!("cannot write the boot page tables: {e}")))
    };
    for (i, e) in gdt.iter().enumerate() {
        put(GDT_ADDR + i as u64 * 8, *e)?;
    }
    put(IDT_ADDR, 0)?;
    put(PML4, PDPT | 0x3)?;
    for g in 0..MAPPED_GIGS {
        put(PDPT + g * 8, (PD + g * 0x1000) | 0x3)?;
        for i in 0..512 {
            put(PD + g * 0x1000 + i * 8, ((g * 512 + i) << 21) | 0x83)?;
        }
    }
    // The 64-bit entry point is 0x200 past the start of the protected-mode kernel.
    Ok(loaded.kernel_load.0 + 0x200)
}

/// KVM's in-kernel interrupt controllers and timer, and the UART's interrupt line; the
/// event that raises IRQ 4 is returned for the UART.
pub(crate) fn set_up_board(vm: &VmFd) -> Result<vmm_sys_util::eventfd::EventFd, VmError> {
    let kvm = |what: &'static str| move |err| VmError::Kvm { what, err };
    vm.set_tss_address(0xfffb_d000)
        .map_err(kvm("the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm("to create the interrupt controllers"))?;
    vm.create_pit2(kvm_pit_config::default())
        .map_err(kvm("to create the timer"))?;
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| VmError::Config(format!("cannot create an eventfd: {e}")))?;
    vm.register_irqfd(&irq, SERIAL_IRQ)
        .map_err(kvm("the UART's interrupt"))?;
    Ok(irq)
}

/// The boot protocol's entry state: 64-bit mode in ring 0 with the tables `load` wrote,
/// `rsi` at the boot parameters.
pub(crate) fn set_up_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), VmError> {
    let kvm = |what: &'static str| move |err| VmError::Kvm { what, err };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("to read sregs"))?;
    crate::layout::flat_long_mode(&mut sregs, 0, (0x10, 0x18), (GDT_ADDR, 4), PML4);
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    vcpu.set_sregs(&sregs).map_err(kvm("long mode"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("the FPU state"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: STACK,
        rbp: STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("the entry registers"))?;
    Ok(())
}

/// The UART's interrupt line: vm-superio raises it by writing to the eventfd KVM reads
/// as IRQ 4.
#[derive(Debug)]
pub(crate) struct IrqLine(pub vmm_sys_util::eventfd::EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The console UART; what the guest writes gathers in the Vec until the vCPU loop takes it.
pub(crate) type Uart = vm_superio::Serial<IrqLine, vm_superio::serial::NoEvents, Vec<u8>>;

/// The UART's eight ports.
pub(crate) const UART_PORTS: std::ops::RangeInclusive<u16> = 0x3f8..=0x3ff;
