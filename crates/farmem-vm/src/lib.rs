//! `farmem vm`: a small KVM VMM whose guest RAM is a farmem region.
//!
//! The guest's physical memory is one far region of an [`Engine`], handed to KVM as a
//! memory slot. When the guest touches a page that is not resident, KVM faults on the
//! region in the kernel and waits in userfaultfd until one of the engine's handler
//! threads brings the page in (so the engine must run in [`FaultMode::Thread`]: KVM's
//! kernel-mode faults cannot take the in-thread SIGBUS path). Eviction unmaps the page
//! from the region, and KVM's MMU notifier drops the guest's mapping with it.
//!
//! This first cut runs the project's own minimal guest (`guest/guest.c`, built by
//! `build.rs`): a freestanding long-mode payload that runs one workload (`sort`,
//! `random`, `kv`) and reports through ports. Guest physical layout, the one description
//! of it (guest.c restates `PARAMS_ADDR` and the heap start):
//!
//! ```text
//!  0x1000   GDT (null, 64-bit code, data)
//!  0x2000   PML4            0x3000  PDPT          0x10000..  page directories (2 MiB pages)
//!  0x9000   struct params (magic, workload, size, seed, ops, mem_end)
//!  0x80000  top of the stack (grows down)
//!  1 MiB    the guest's code      4 MiB..  the workload's memory
//! ```
//!
//! Ports: a byte written to 0x3f8 goes to the console; a byte written to 0xf4 is the
//! guest's exit code.
//!
//! The guest runs in ring 3 (code and stack segments of privilege 3, user pages, IOPL 3
//! for its port writes). On this project's machine, whose nested hypervisor (kvm_pvm)
//! runs a guest's ring 0 through KVM's instruction emulator, the same guest at ring 0 took
//! 1.65 s to sort 64 KiB (every instruction emulated, `kvm:kvm_emulate_insn`) and 70 s to
//! sort 2 MiB; at ring 3 it runs natively (0.03 s for 2 MiB). On a host with hardware
//! virtualisation it makes no difference.

use farmem::sys::mem::Mapping;
use farmem::{Engine, FaultMode, Region};
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use std::io::Write;

/// The guest payload, built from `guest/guest.c`.
pub const GUEST_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.bin"));

const GDT_ADDR: u64 = 0x1000;
const PML4_ADDR: u64 = 0x2000;
const PDPT_ADDR: u64 = 0x3000;
const PARAMS_ADDR: u64 = 0x9000;
const PD_ADDR: u64 = 0x10000;
const STACK_TOP: u64 = 0x80000;
const LOAD_ADDR: u64 = 0x10_0000;
/// Where the workloads' memory starts.
pub const HEAP_START: u64 = 4 << 20;
/// Page directories fit between `PD_ADDR` and the stack's lowest use: 16 of them map
/// 16 GiB.
const MAX_MEMORY: u64 = 16 << 30;
const PARAMS_MAGIC: u64 = 0x6661_726d_656d_766d;
const PORT_CONSOLE: u16 = 0x3f8;
const PORT_EXIT: u16 = 0xf4;

/// A workload of the minimal guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Fill `size` bytes with random numbers, quicksort them, check order and sum.
    Sort,
    /// `ops` random read-modify-writes over `size` bytes, each checked, then a full check.
    Random,
    /// A hash table of values of 64 B to 4 KiB filling `size`; `ops` random gets, each
    /// value checked byte for byte.
    Kv,
}

impl Workload {
    /// Every workload, with a line on what it does (for `--guest list`).
    pub const ALL: [(&'static str, Workload, &'static str); 3] = [
        (
            "sort",
            Workload::Sort,
            "fill SIZE bytes with random numbers, quicksort them in place, verify",
        ),
        (
            "random",
            Workload::Random,
            "OPS random read-modify-writes over SIZE bytes, each checked, then a full check",
        ),
        (
            "kv",
            Workload::Kv,
            "a hash table of 64 B-4 KiB values filling SIZE, OPS random gets, every byte checked",
        ),
    ];

    /// The workload called `name`.
    pub fn by_name(name: &str) -> Option<Workload> {
        Self::ALL.iter().find(|w| w.0 == name).map(|w| w.1)
    }

    fn code(self) -> u64 {
        match self {
            Workload::Sort => 1,
            Workload::Random => 2,
            Workload::Kv => 3,
        }
    }
}

/// What the guest runs.
#[derive(Clone, Copy, Debug)]
pub struct GuestSpec {
    pub workload: Workload,
    /// Bytes of guest memory the workload uses, from `HEAP_START`.
    pub size: u64,
    /// Operations (random, kv).
    pub ops: u64,
    pub seed: u64,
}

/// Why a VM could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "cannot open /dev/kvm: {0} (KVM needs a CPU with virtualisation, the kvm module loaded, and read-write access to /dev/kvm)"
    )]
    NoKvm(kvm_ioctls::Error),
    #[error("KVM refused {what}: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the engine failed: {0}")]
    Engine(#[from] farmem::Error),
    #[error("the guest {0}")]
    Guest(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |err| VmError::Kvm { what, err }
}

/// Checks that a guest of `memory` bytes can run `spec`; the smallest memory is 8 MiB.
pub fn check(memory: u64, spec: &GuestSpec) -> Result<(), VmError> {
    if !memory.is_multiple_of(2 << 20) || !((8 << 20)..=MAX_MEMORY).contains(&memory) {
        return Err(VmError::Config(format!(
            "--memory must be a multiple of 2 MiB from 8 MiB to {} GiB (got {memory} bytes)",
            MAX_MEMORY >> 30
        )));
    }
    if spec.size < 4096 || HEAP_START + spec.size > memory {
        return Err(VmError::Config(format!(
            "the workload's size must be from 4 KiB to --memory minus 4 MiB ({} bytes here; got {})",
            memory - HEAP_START,
            spec.size
        )));
    }
    Ok(())
}

/// What a finished guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The byte the guest wrote to its exit port.
    pub exit_code: u8,
}

/// Runs `spec` in a one-vCPU guest whose RAM is a new region of `engine`, the size of
/// `memory`; the guest's console goes to `console`.
pub fn run(
    engine: &Engine,
    memory: u64,
    spec: &GuestSpec,
    console: &mut dyn Write,
) -> Result<Outcome, VmError> {
    check(memory, spec)?;
    if engine.fault_mode() != FaultMode::Thread {
        return Err(VmError::Config(
            "guest RAM needs the engine in thread fault mode (KVM faults on it in the kernel)"
                .into(),
        ));
    }
    let ram = engine.map(memory as usize)?;
    let out = run_on(&ram, ram.as_ptr(), memory, spec, console);
    drop(ram);
    out
}

/// Runs `spec` as `run` does, with the guest's RAM plain anonymous memory of this
/// process, all local: the baseline the far runs are measured against.
pub fn run_all_local(
    memory: u64,
    spec: &GuestSpec,
    console: &mut dyn Write,
) -> Result<Outcome, VmError> {
    check(memory, spec)?;
    let ram = Mapping::anon(memory as usize)
        .map_err(|e| VmError::Config(format!("could not map {memory} bytes of guest RAM: {e}")))?;
    run_on(&ram, ram.ptr(), memory, spec, console)
}

/// Guest RAM the VMM can write its layout into.
trait Ram {
    fn put(&self, addr: u64, bytes: &[u8]) -> Result<(), VmError>;
}

impl Ram for Region {
    fn put(&self, addr: u64, bytes: &[u8]) -> Result<(), VmError> {
        Ok(self.write(addr as usize, bytes)?)
    }
}

impl Ram for Mapping {
    fn put(&self, addr: u64, bytes: &[u8]) -> Result<(), VmError> {
        assert!(addr as usize + bytes.len() <= self.len());
        // SAFETY: the range is inside the mapping (checked above) and nothing else holds
        // a reference into it while the VM is being set up.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr().add(addr as usize),
                bytes.len(),
            )
        };
        Ok(())
    }
}

/// Sets up and runs the VM on guest RAM at `host` (`memory` bytes, owned by `ram`, which
/// outlives the VM).
fn run_on(
    ram: &dyn Ram,
    host: *mut u8,
    memory: u64,
    spec: &GuestSpec,
    console: &mut dyn Write,
) -> Result<Outcome, VmError> {
    let kvm = Kvm::new().map_err(VmError::NoKvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("to create a VM"))?;
    lay_out(ram, memory, spec)?;

    let slot = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: memory,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the slot is the whole of the guest RAM mapping, which the caller keeps alive
    // until after this function (and with it the VM and its vCPU) has returned.
    unsafe { vm.set_user_memory_region(slot) }.map_err(kvm_err("the guest's memory slot"))?;

    let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("to create a vCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("to report CPUID"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(kvm_err("the vCPU's CPUID"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("to read sregs"))?;
    long_mode(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(kvm_err("long mode"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("to read registers"))?;
    regs.rip = LOAD_ADDR;
    regs.rsp = STACK_TOP;
    regs.rflags = 0x3002; // IOPL 3: the guest's port writes from ring 3
    vcpu.set_regs(&regs)
        .map_err(kvm_err("the entry registers"))?;

    let outcome = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_CONSOLE, data)) => {
                let _ = console.write_all(data);
            }
            Ok(VcpuExit::IoOut(PORT_EXIT, data)) => {
                break Outcome {
                    exit_code: data.first().copied().unwrap_or(0),
                };
            }
            Ok(VcpuExit::IoOut(port, _)) | Ok(VcpuExit::IoIn(port, _)) => {
                return Err(VmError::Guest(format!(
                    "used I/O port {port:#x}, which this VMM does not have"
                )));
            }
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                return Err(VmError::Guest(format!(
                    "touched guest physical address {addr:#x}, outside its {memory} bytes of RAM"
                )));
            }
            Ok(VcpuExit::Hlt) => {
                return Err(VmError::Guest("halted without writing an exit code".into()));
            }
            Ok(VcpuExit::Shutdown) => {
                return Err(VmError::Guest(
                    "shut down (a triple fault: its page tables or code are broken)".into(),
                ));
            }
            Ok(exit) => {
                return Err(VmError::Guest(format!("stopped with {exit:?}")));
            }
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(err) => {
                return Err(VmError::Kvm {
                    what: "to run the vCPU",
                    err,
                });
            }
        }
    };
    let _ = console.flush();
    Ok(outcome)
}

/// Writes the GDT, the identity-mapping page tables, the parameters and the guest's
/// code into guest RAM.
fn lay_out(ram: &dyn Ram, memory: u64, spec: &GuestSpec) -> Result<(), VmError> {
    let put = |addr: u64, bytes: &[u8]| ram.put(addr, bytes);
    let gdt: [u64; 3] = [0, 0x00af_fb00_0000_ffff, 0x00cf_f300_0000_ffff];
    put(GDT_ADDR, &words(&gdt))?;
    put(PML4_ADDR, &(PDPT_ADDR | 0x27).to_le_bytes())?;
    let gigs = memory.div_ceil(1 << 30);
    for g in 0..gigs {
        let pd = PD_ADDR + g * 0x1000;
        put(PDPT_ADDR + g * 8, &(pd | 0x27).to_le_bytes())?;
        let entries: Vec<u64> = (0..512)
            .map(|i| ((g * 512 + i) << 21) | 0xe7) // present, writable, accessed, dirty, 2 MiB
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
    ];
    put(PARAMS_ADDR, &words(&params))?;
    put(LOAD_ADDR, GUEST_IMAGE)?;
    Ok(())
}

fn words(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// 64-bit mode from the first instruction, in ring 3: paging with the tables `lay_out`
/// wrote (user pages), flat privilege-3 segments from the GDT, no interrupts.
fn long_mode(sregs: &mut kvm_bindings::kvm_sregs) {
    let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: selector | 3,
        type_,
        present: 1,
        dpl: 3,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = seg(0x8, 0xb, 1, 0);
    let data = seg(0x10, 0x3, 0, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= 1 << 5; // PAE
    sregs.cr0 |= 1 | (1 << 4) | (1 << 31); // PE, ET, PG
    sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
}
