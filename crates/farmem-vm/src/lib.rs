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
//! `random`, `kv`) on one or more vCPUs and reports through ports; `layout.rs` describes
//! its memory, `vcpu.rs` runs its vCPUs.

mod layout;
mod linux;
mod vcpu;

pub use layout::{GUEST_IMAGE, HEAP_START, MAX_CPUS, MAX_MEMORY};
pub use linux::{DEFAULT_CMDLINE, Kernel};

use farmem::sys::mem::Mapping;
use farmem::{Engine, FaultMode, Region};
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::Kvm;
use layout::Ram;
use std::io::Write;
use std::time::Duration;

/// A workload of the minimal guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Fill `size` bytes with random numbers, quicksort them, check order and sum (each
    /// vCPU its own slice).
    Sort,
    /// `ops` random read-modify-writes over `size` bytes, shared by every vCPU, each
    /// checked; then a full check, and the updates must all be there.
    Random,
    /// A hash table of values of 64 B to 4 KiB filling `size`; `ops` random gets from
    /// every vCPU, each value checked byte for byte.
    Kv,
    /// Executes an undefined instruction with no interrupt table: a triple fault (shows
    /// how the VMM reports a crashed guest).
    Crash,
    /// Loops forever (shows `--timeout`).
    Hang,
    /// Writes every page of `size`, then times `ops` reads of random pages with the TSC:
    /// the cost of a vCPU's access (a fault, where the page is not local) as the guest
    /// sees it; prints the 50th, 90th and 99th percentiles.
    Latency,
}

impl Workload {
    /// Every workload, with a line on what it does (for `--guest list`).
    pub const ALL: [(&'static str, Workload, &'static str); 6] = [
        (
            "sort",
            Workload::Sort,
            "fill SIZE bytes with random numbers, quicksort them in place (each vCPU a slice), verify",
        ),
        (
            "random",
            Workload::Random,
            "OPS random read-modify-writes over SIZE bytes shared by all vCPUs, each checked, then a full check",
        ),
        (
            "kv",
            Workload::Kv,
            "a hash table of 64 B-4 KiB values filling SIZE, OPS random gets, every byte checked",
        ),
        (
            "latency",
            Workload::Latency,
            "writes every page of SIZE, then times OPS reads of random pages: p50/p90/p99 of an access (vCPU 0)",
        ),
        (
            "crash",
            Workload::Crash,
            "triple-faults at once (to see how a crashed guest is reported)",
        ),
        (
            "hang",
            Workload::Hang,
            "loops forever (to see --timeout stop a guest)",
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
            Workload::Crash => 4,
            Workload::Hang => 5,
            Workload::Latency => 6,
        }
    }
}

/// What the guest runs.
#[derive(Clone, Copy, Debug)]
pub struct GuestSpec {
    pub workload: Workload,
    /// Bytes of guest memory the workload uses, from `HEAP_START`.
    pub size: u64,
    /// Operations (random, kv), all vCPUs together.
    pub ops: u64,
    pub seed: u64,
}

/// The virtual machine: its RAM, its vCPUs, and how long it may run.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Bytes of guest RAM: a multiple of 2 MiB, from 8 MiB to `MAX_MEMORY`.
    pub memory: u64,
    /// vCPUs, 1 to `MAX_CPUS`.
    pub cpus: u32,
    /// Stop the guest, as a failure, if it has not finished by then.
    pub timeout: Option<Duration>,
    /// vCPU `i` runs on CPU `pin_cpus[i % len]` (see [`vcpu_cpus`]); empty: wherever the
    /// scheduler puts it.
    pub pin_cpus: Vec<usize>,
}

/// The CPUs for `cpus` vCPUs, one each, from those this process may run on (so that
/// `taskset` gives each VM its own): pin vCPU `i` and the engine's handler thread `i`
/// (`Builder::handler_cpus`) to entry `i`. A vCPU's fault then wakes a handler on its own
/// CPU; on this project's machine, a cross-CPU wake-up costs 20-70 us.
pub fn vcpu_cpus(cpus: u32) -> Result<Vec<usize>, VmError> {
    cpus_from(cpus, 0)
}

/// The CPUs for `cpus` busy-polling handler threads: the ones after the vCPUs' (see
/// [`vcpu_cpus`]), so that a spinning handler does not take its vCPU's CPU.
pub fn poller_cpus(cpus: u32) -> Result<Vec<usize>, VmError> {
    cpus_from(cpus, cpus as usize)
}

/// `n` of the CPUs this process may run on, from the `skip`-th on, round the list.
fn cpus_from(n: u32, skip: usize) -> Result<Vec<usize>, VmError> {
    let allowed = farmem::sys::sched::allowed_cpus()
        .map_err(|e| VmError::Config(format!("cannot read this process's CPUs: {e}")))?;
    if allowed.is_empty() {
        return Ok(Vec::new());
    }
    Ok((0..n as usize)
        .map(|i| allowed[(skip + i) % allowed.len()])
        .collect())
}

impl Machine {
    /// One vCPU, no time limit.
    pub fn new(memory: u64) -> Machine {
        Machine {
            memory,
            cpus: 1,
            timeout: None,
            pin_cpus: Vec::new(),
        }
    }
}

/// Why a VM could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "this machine has no /dev/kvm: KVM needs a CPU with virtualisation turned on and the kvm_intel or kvm_amd module loaded (in a VM, nested virtualisation)"
    )]
    NoKvm,
    #[error(
        "no permission to use /dev/kvm: run as root, or add the user to the group that owns /dev/kvm (usually `kvm`) and log in again"
    )]
    KvmDenied,
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

/// Opens /dev/kvm (or the device FARMEM_KVM_DEVICE names, for tests of the error paths),
/// telling a missing device from a forbidden one.
fn open_kvm() -> Result<Kvm, VmError> {
    let path = std::env::var("FARMEM_KVM_DEVICE").unwrap_or_else(|_| "/dev/kvm".into());
    let c = std::ffi::CString::new(path)
        .map_err(|_| VmError::Config("FARMEM_KVM_DEVICE has a NUL byte".into()))?;
    Kvm::new_with_path(&c).map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmDenied,
        _ => VmError::Kvm {
            what: "to open /dev/kvm",
            err: e,
        },
    })
}

/// Checks that KVM is there and this process may use it (one clear error if not).
pub fn check_kvm() -> Result<(), VmError> {
    open_kvm().map(drop)
}

/// Checks that `machine` can run `spec`.
pub fn check(machine: &Machine, spec: &GuestSpec) -> Result<(), VmError> {
    check_machine(machine)?;
    let memory = machine.memory;
    if spec.size < 4096 || HEAP_START + spec.size > memory {
        return Err(VmError::Config(format!(
            "the workload's size must be from 4 KiB to --memory minus 4 MiB ({} bytes here; got {})",
            memory - HEAP_START,
            spec.size
        )));
    }
    Ok(())
}

/// Checks the machine's RAM and vCPUs.
pub fn check_machine(machine: &Machine) -> Result<(), VmError> {
    let memory = machine.memory;
    if !memory.is_multiple_of(2 << 20) || !((8 << 20)..=MAX_MEMORY).contains(&memory) {
        return Err(VmError::Config(format!(
            "--memory must be a multiple of 2 MiB from 8 MiB to {} GiB (got {memory} bytes)",
            MAX_MEMORY >> 30
        )));
    }
    if !(1..=MAX_CPUS).contains(&machine.cpus) {
        return Err(VmError::Config(format!(
            "--cpus must be from 1 to {MAX_CPUS} (got {})",
            machine.cpus
        )));
    }
    Ok(())
}

/// What a finished guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The first non-zero byte a vCPU wrote to the exit port, or 0.
    pub exit_code: u8,
}

/// Runs `spec` in `machine`, whose RAM is a new region of `engine`; the guest's console
/// goes to `console`.
pub fn run(
    engine: &Engine,
    machine: &Machine,
    spec: &GuestSpec,
    console: &mut (dyn Write + Send),
) -> Result<Outcome, VmError> {
    check(machine, spec)?;
    run_far(engine, machine, Boot::Minimal(spec), console)
}

/// Boots `kernel` in `machine`, whose RAM is a new region of `engine` (one vCPU); the
/// serial console goes to `console`. The guest's exit code is what it writes to port
/// 0xf4 (`init` can do so as root), and a reset without one is an error.
pub fn run_kernel(
    engine: &Engine,
    machine: &Machine,
    kernel: &Kernel,
    console: &mut (dyn Write + Send),
) -> Result<Outcome, VmError> {
    check_machine(machine)?;
    if machine.cpus != 1 {
        return Err(VmError::Config(
            "--kernel boots one vCPU (there is no ACPI or MP table for more); leave out --cpus"
                .into(),
        ));
    }
    run_far(engine, machine, Boot::Linux(kernel), console)
}

/// Boots `kernel` as `run_kernel` does, with plain local RAM: the baseline.
pub fn run_kernel_all_local(
    machine: &Machine,
    kernel: &Kernel,
    console: &mut (dyn Write + Send),
) -> Result<Outcome, VmError> {
    check_machine(machine)?;
    run_local(machine, Boot::Linux(kernel), console)
}

fn run_far(
    engine: &Engine,
    machine: &Machine,
    boot: Boot<'_>,
    console: &mut (dyn Write + Send),
) -> Result<Outcome, VmError> {
    if engine.fault_mode() != FaultMode::Thread {
        return Err(VmError::Config(
            "guest RAM needs the engine in thread fault mode (KVM faults on it in the kernel)"
                .into(),
        ));
    }
    let kvm = open_kvm()?;
    let ram = engine.map(machine.memory as usize)?;
    let out = run_on(
        kvm,
        &ram,
        ram.as_ptr(),
        libc::MAP_SHARED,
        machine,
        boot,
        console,
    );
    drop(ram);
    out
}

fn run_local(
    machine: &Machine,
    boot: Boot<'_>,
    console: &mut (dyn Write + Send),
) -> Result<Outcome, VmError> {
    let kvm = open_kvm()?;
    let memory = machine.memory;
    let ram = Mapping::anon(memory as usize)
        .map_err(|e| VmError::Config(format!("could not map {memory} bytes of guest RAM: {e}")))?;
    run_on(
        kvm,
        &ram,
        ram.ptr(),
        libc::MAP_PRIVATE,
        machine,
        boot,
        console,
    )
}

/// What the VM starts.
#[derive(Clone, Copy)]
enum Boot<'a> {
    /// The project's minimal guest.
    Minimal(&'a GuestSpec),
    /// A Linux kernel.
    Linux(&'a Kernel),
}

/// Runs `spec` as `run` does, with the guest's RAM plain anonymous memory of this
/// process, all local: the baseline the far runs are measured against.
pub fn run_all_local(
    machine: &Machine,
    spec: &GuestSpec,
    console: &mut (dyn Write + Send),
) -> Result<Outcome, VmError> {
    check(machine, spec)?;
    run_local(machine, Boot::Minimal(spec), console)
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

/// Sets up and runs the VM on guest RAM at `host` (`machine.memory` bytes mapped with
/// `mmap_flags`, owned by `ram`, which outlives the VM).
fn run_on(
    kvm: Kvm,
    ram: &dyn Ram,
    host: *mut u8,
    mmap_flags: i32,
    machine: &Machine,
    boot: Boot<'_>,
    console: &mut (dyn Write + Send),
) -> Result<Outcome, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("to create a VM"))?;
    let (entry, board) = match boot {
        Boot::Minimal(_) => (0, vcpu::Board::Minimal),
        Boot::Linux(kernel) => {
            let entry = linux::load(host, machine.memory, mmap_flags, kernel)?;
            let irq = linux::set_up_board(&vm)?;
            let uart = linux::Uart::new(linux::IrqLine(irq), Vec::new());
            (entry, vcpu::Board::Pc(std::sync::Mutex::new(uart)))
        }
    };
    let slot = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: machine.memory,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the slot is the whole of the guest RAM mapping, which the caller keeps alive
    // until after this function (and with it the VM and its vCPUs) has returned.
    unsafe { vm.set_user_memory_region(slot) }.map_err(kvm_err("the guest's memory slot"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("to report CPUID"))?;
    let mut vcpus = Vec::new();
    for i in 0..machine.cpus {
        let vcpu = vm
            .create_vcpu(i as u64)
            .map_err(kvm_err("to create a vCPU"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(kvm_err("the vCPU's CPUID"))?;
        match boot {
            Boot::Minimal(_) => {
                let mut sregs = vcpu.get_sregs().map_err(kvm_err("to read sregs"))?;
                layout::long_mode(&mut sregs);
                vcpu.set_sregs(&sregs).map_err(kvm_err("long mode"))?;
                let mut regs = vcpu.get_regs().map_err(kvm_err("to read registers"))?;
                layout::entry_regs(&mut regs, i);
                vcpu.set_regs(&regs)
                    .map_err(kvm_err("the entry registers"))?;
            }
            Boot::Linux(_) => linux::set_up_vcpu(&vcpu, entry)?,
        }
        vcpus.push(vcpu);
    }
    if let Boot::Minimal(spec) = boot {
        // The TSC's rate, for the guest's latencies (0 if KVM cannot say).
        let tsc_khz = vcpus[0].get_tsc_khz().unwrap_or(0) as u64;
        layout::lay_out(ram, machine.memory, machine.cpus, tsc_khz, spec)?;
    }
    let exit_code = vcpu::run_all(vcpus, machine, &board, console)?;
    Ok(Outcome { exit_code })
}
