//! The minimal guest's physical memory and entry state: the one description of it
//! (guest/guest.c restates `PARAMS_ADDR` and the heap start).
//!
//! ```text
//!  0x1000   GDT (null, 64-bit code, data; privilege 3)
//!  0x2000   PML4            0x3000  PDPT          0x10000..0x20000  page directories
//!  0x9000   struct params (magic, workload, size, seed, ops, mem_end, cpus, tsc_khz)
//!  0x20000..0x80000  the vCPUs' stacks, 48 KiB each, vCPU 0's at the top
//!  1 MiB    the guest's code      4 MiB..  the workload's memory
//! ```
//!
//! The guest runs in ring 3 (code and stack segments of privilege 3, user pages, IOPL 3
//! for its port writes). On this project's machine, whose nested hypervisor (kvm_pvm)
//! runs a guest's ring 0 through KVM's instruction emulator, the same guest at ring 0 took
//! 1.65 s to sort 64 KiB (every instruction emulated, `kvm:kvm_emulate_insn`) and 70 s to
//! sort 2 MiB; at ring 3 it runs natively (0.03 s for 2 MiB). On a host with hardware
//! virtualisation it makes no difference.

use crate::{GuestSpec, VmError};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

const GDT_ADDR: u64 = 0x1000;
const PML4_ADDR: u64 = 0x2000;
const PDPT_ADDR: u64 = 0x3000;
const PARAMS_ADDR: u64 = 0x9000;
const PD_ADDR: u64 = 0x10000;
const STACKS_TOP: u64 = 0x80000;
const STACK_BYTES: u64 = 48 << 10;
const LOAD_ADDR: u64 = 0x10_0000;
/// Where the workloads' memory starts.
pub const HEAP_START: u64 = 4 << 20;
/// The page directories between `PD_ADDR` and the stacks map 16 GiB.
pub const MAX_MEMORY: u64 = 16 << 30;
/// The stacks between 0x20000 and `STACKS_TOP` hold eight.
pub const MAX_CPUS: u32 = 8;
const PARAMS_MAGIC: u64 = 0x6661_726d_656d_766d;

/// The minimal guest, built from `guest/guest.c`.
pub const GUEST_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.bin"));

/// Writes `bytes` at a guest physical address.
pub(crate) trait Ram {
    fn put(&self, addr: u64, bytes: &[u8]) -> Result<(), VmError>;
}

/// Writes the GDT, the identity-mapping page tables, the parameters and the guest's
/// code into guest RAM of `memory` bytes.
pub(crate) fn lay_out(
    ram: &dyn Ram,
    memory: u64,
    cpus: u32,
    tsc_khz: u64,
    spec: &GuestSpec,
) -> Result<(), VmError> {
    debug_assert!(cpus <= MAX_CPUS && memory <= MAX_MEMORY);
    let put = |addr: u64, bytes: &[u8]| ram.put(addr, bytes);
    let gdt: [u64; 3] = [0, 0x00af_fb00_0000_ffff, 0x00cf_f300_0000_ffff];
    put(GDT_ADDR, &words(&gdt))?;
    put(PML4_ADDR, &(PDPT_ADDR | 0x27).to_le_bytes())?;
    let gigs = memory.div_ceil(1 << 30);
    for g in 0..gigs {
        let pd = PD_ADDR + g * 0x1000;
        put(PDPT_ADDR + g * 8, &(pd | 0x27).to_le_bytes())?;
        let entries: Vec<u64> = (0..512)
            .map(|i| ((g * 512 + i) << 21) | 0xe7) // present, writable, user, accessed, dirty, 2 MiB
            .collect();
        put(pd, &words(&entries))?;
    }
    let params = [
        PARAMS_MAGIC,
        spec.workload.code(),
        spec.size,
        spec.seed,
        spec.ops,
        memory,
        cpus as u64,
        tsc_khz,
    ];
    put(PARAMS_ADDR, &words(&params))?;
    put(LOAD_ADDR, GUEST_IMAGE)?;
    Ok(())
}

fn words(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// vCPU `index`'s registers at entry: the guest's first instruction, its own stack, its
/// index as `guest_main`'s argument, IOPL 3 for its port writes from ring 3.
pub(crate) fn entry_regs(regs: &mut kvm_regs, index: u32) {
    regs.rip = LOAD_ADDR;
    regs.rsp = STACKS_TOP - index as u64 * STACK_BYTES;
    regs.rdi = index as u64;
    regs.rflags = 0x3002;
}

/// 64-bit mode from the first instruction, in ring 3: paging with the tables `lay_out`
/// wrote (user pages), flat privilege-3 segments from the GDT, no interrupts.
pub(crate) fn long_mode(sregs: &mut kvm_sregs) {
    flat_long_mode(sregs, 3, (0x8, 0x10), (GDT_ADDR, 3), PML4_ADDR);
}

/// Paging on with the page tables at `cr3`, 64-bit mode, and flat code and data
/// segments of privilege `dpl` at GDT selectors `code` and `data` (the GDT at
/// `gdt.0`, `gdt.1` entries long). Shared by the minimal guest and Linux's entry state.
pub(crate) fn flat_long_mode(
    sregs: &mut kvm_sregs,
    dpl: u8,
    (code, data): (u16, u16),
    gdt: (u64, u16),
    cr3: u64,
) {
    let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: selector | dpl as u16,
        type_,
        present: 1,
        dpl,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = seg(code, 0xb, 1, 0);
    let data = seg(data, 0x3, 0, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = gdt.0;
    sregs.gdt.limit = gdt.1 * 8 - 1;
    sregs.cr3 = cr3;
    sregs.cr4 |= 1 << 5; // PAE
    sregs.cr0 |= 1 | (1 << 4) | (1 << 31); // PE, ET, PG
    sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
}
