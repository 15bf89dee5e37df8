//! Running the vCPUs: one thread each, their port I/O, the console, and stopping them
//! all when one fails, the guest reports an error, or the time limit passes.
//!
//! A vCPU thread spends its life in KVM_RUN (or blocked in the kernel on a guest page
//! that a fault handler thread is bringing in). To stop it, the VMM sets `stop` and sends
//! the thread a signal whose handler does nothing: KVM_RUN returns EINTR and the loop
//! sees `stop`. A signal sent just before the thread enters KVM_RUN would be lost, so
//! the kick repeats until the thread has returned.

use crate::{Machine, VmError};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Mutex, Once, mpsc};
use std::time::{Duration, Instant};

const PORT_CONSOLE: u16 = 0x3f8;
const PORT_EXIT: u16 = 0xf4;
const PORT_YIELD: u16 = 0xf5;
/// How long a vCPU that asked to yield (it waits at a barrier) stays off its CPU.
const YIELD: Duration = Duration::from_micros(100);
/// How much of the guest's console an error report quotes.
const TAIL_BYTES: usize = 2048;
const KICK_EVERY: Duration = Duration::from_millis(5);

/// The guest's console: each vCPU's bytes gathered into lines (so that lines of different
/// vCPUs do not mix), written out whole, and the last `TAIL_BYTES` kept for error reports.
struct Console<'a> {
    out: Mutex<(&'a mut (dyn Write + Send), VecDeque<u8>)>,
}

impl Console<'_> {
    fn line(&self, bytes: &[u8]) {
        let mut g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = g.0.write_all(bytes);
        g.1.extend(bytes);
        let excess = g.1.len().saturating_sub(TAIL_BYTES);
        g.1.drain(..excess);
    }

    /// The last lines the guest wrote, for an error message.
    fn tail(&self) -> String {
        let mut g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(g.1.make_contiguous()).into_owned();
        if text.trim().is_empty() {
            return "; it wrote nothing to its console".into();
        }
        let mut s = String::from("; its last console output:");
        for l in text.lines() {
            s.push_str("\n  | ");
            s.push_str(l);
        }
        s
    }
}

/// The devices behind the vCPUs' port I/O.
pub(crate) enum Board {
    /// The minimal guest's ports: console 0x3f8 (write only), exit code 0xf4, yield 0xf5;
    /// any other port is the guest's error.
    Minimal,
    /// A PC for Linux: a 16550 UART at 0x3f8-0x3ff (KVM's in-kernel PIC, IOAPIC and PIT
    /// do the rest), the exit code port 0xf4, the keyboard controller's reset; other ports
    /// read as all ones and ignore writes, as on a PC with nothing there.
    Pc(Mutex<crate::linux::Uart>),
}

/// What the vCPU threads share.
struct Shared<'a> {
    console: Console<'a>,
    stop: AtomicBool,
    /// Each vCPU thread's pthread id (0 until it runs), for kicks.
    threads: Vec<AtomicU64>,
    memory: u64,
    board: &'a Board,
}

/// How one vCPU ended.
enum End {
    Exit(u8),
    Stopped,
    Failed(String),
    Kvm(kvm_ioctls::Error),
}

/// Runs every vCPU until the guest's exit port says it is done: returns the first
/// non-zero exit code of any vCPU, or 0 when all wrote 0. A vCPU that fails, or a
/// non-zero exit code, stops the others; so does `timeout`.
pub(crate) fn run_all(
    vcpus: Vec<VcpuFd>,
    machine: &Machine,
    board: &Board,
    console: &mut (dyn Write + Send),
) -> Result<u8, VmError> {
    let (memory, timeout) = (machine.memory, machine.timeout);
    install_kick_handler();
    let n = vcpus.len();
    let shared = Shared {
        console: Console {
            out: Mutex::new((console, VecDeque::new())),
        },
        stop: AtomicBool::new(false),
        threads: (0..n).map(|_| AtomicU64::new(0)).collect(),
        memory,
        board,
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let (tx, rx) = mpsc::channel();
    let result = std::thread::scope(|s| {
        let mut running = vec![true; n];
        for (i, mut vcpu) in vcpus.into_iter().enumerate() {
            let tx = tx.clone();
            let shared = &shared;
            let pins = &machine.pin_cpus;
            std::thread::Builder::new()
                .name(format!("farmem-vcpu-{i}"))
                .spawn_scoped(s, move || {
                    if !pins.is_empty() {
                        // Best effort: a CPU the process may not use leaves it unpinned.
                        let _ = farmem::sys::sched::pin_current_thread(pins[i % pins.len()]);
                    }
                    // SAFETY: pthread_self has no preconditions.
                    shared.threads[i].store(unsafe { libc::pthread_self() } as u64, SeqCst);
                    let end = vcpu_loop(&mut vcpu, i, shared);
                    let _ = tx.send((i, end));
                })
                .map_err(|e| VmError::Config(format!("cannot start a vCPU thread: {e}")))?;
        }
        drop(tx);
        let mut code = 0u8;
        let mut failure = None;
        let mut stopping = false;
        while running.iter().any(|r| *r) {
            // Once stopping, kick the vCPUs still running every KICK_EVERY until they
            // return: a kick that lands just before KVM_RUN is lost.
            let wait = match (stopping, deadline) {
                (true, _) => Some(KICK_EVERY),
                (false, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
                (false, None) => None,
            };
            let got = match wait {
                Some(w) => rx.recv_timeout(w),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            let (i, end) = match got {
                Ok(x) => x,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !stopping {
                        failure = Some(format!(
                            "did not finish within {:.1} s and was stopped",
                            timeout.unwrap_or_default().as_secs_f64()
                        ));
                        stopping = true;
                        shared.stop.store(true, SeqCst);
                    }
                    kick(&shared, &running);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            running[i] = false;
            let fail = match end {
                End::Exit(0) | End::Stopped => continue,
                End::Exit(c) => {
                    if code == 0 {
                        code = c;
                    }
                    None
                }
                End::Failed(what) => Some(what),
                End::Kvm(err) => Some(format!("could not run (vCPU {i}): KVM_RUN failed: {err}")),
            };
            if failure.is_none() {
                failure = fail;
            }
            if !stopping {
                stopping = true;
                shared.stop.store(true, SeqCst);
                kick(&shared, &running);
            }
        }
        match failure {
            Some(what) => Err(VmError::Guest(format!("{what}{}", shared.console.tail()))),
            None => Ok(code),
        }
    });
    let _ = shared.console.out.lock().map(|mut g| g.0.flush());
    result
}

/// Kicks every vCPU thread still running out of KVM_RUN (or out of a wait for a guest
/// page: the kernel's userfaultfd wait ends on a signal, and KVM_RUN returns EINTR).
fn kick(shared: &Shared<'_>, running: &[bool]) {
    for (t, r) in shared.threads.iter().zip(running) {
        let t = t.load(SeqCst);
        if *r && t != 0 {
            // SAFETY: `t` is the pthread id of a vCPU thread of the scope we are in, so it
            // has not been joined and the id is valid (a thread that has already ended
            // but is not yet joined gets ESRCH, or nothing happens).
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}

/// One vCPU's life: runs it, serves its port I/O, until it exits, fails or is stopped.
fn vcpu_loop(vcpu: &mut VcpuFd, index: usize, shared: &Shared<'_>) -> End {
    let mut line = Vec::new();
    let flush = |line: &mut Vec<u8>| {
        if !line.is_empty() {
            shared.console.line(line);
            line.clear();
        }
    };
    loop {
        if shared.stop.load(SeqCst) {
            flush(&mut line);
            return End::Stopped;
        }
        let pc = match shared.board {
            Board::Pc(uart) => Some(uart),
            Board::Minimal => None,
        };
        let end = match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_EXIT, data)) => End::Exit(data.first().copied().unwrap_or(0)),
            Ok(VcpuExit::IoOut(port, data)) if pc.is_some() => {
                let uart = pc.expect("checked");
                if crate::linux::UART_PORTS.contains(&port) {
                    let mut u = uart.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = u.write((port - 0x3f8) as u8, data.first().copied().unwrap_or(0));
                    for b in u.writer_mut().drain(..) {
                        line.push(b);
                        if b == b'\n' || line.len() >= 1024 {
                            flush(&mut line);
                        }
                    }
                    continue;
                }
                if port == 0x64 && data.first() == Some(&0xfe) {
                    End::Failed(format!(
                        "(vCPU {index}) reset the machine without writing an exit code (a reboot, or a panic with panic=N)"
                    ))
                } else {
                    continue;
                }
            }
            Ok(VcpuExit::IoIn(port, data)) if pc.is_some() => {
                let uart = pc.expect("checked");
                if crate::linux::UART_PORTS.contains(&port) && !data.is_empty() {
                    data[0] = uart
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .read((port - 0x3f8) as u8);
                } else {
                    data.fill(0xff);
                }
                continue;
            }
            Ok(VcpuExit::MmioRead(_, data)) if pc.is_some() => {
                data.fill(0xff);
                continue;
            }
            Ok(VcpuExit::MmioWrite(..)) if pc.is_some() => continue,
            Ok(VcpuExit::IoOut(PORT_CONSOLE, data)) => {
                line.extend_from_slice(data);
                if line.ends_with(b"\n") || line.len() >= 1024 {
                    flush(&mut line);
                }
                continue;
            }
            Ok(VcpuExit::IoOut(PORT_YIELD, _)) => {
                std::thread::sleep(YIELD);
                continue;
            }
            Ok(VcpuExit::IoOut(port, _)) | Ok(VcpuExit::IoIn(port, _)) => End::Failed(format!(
                "(vCPU {index}) used I/O port {port:#x}, which this VMM does not have"
            )),
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                End::Failed(format!(
                    "(vCPU {index}) touched guest physical address {addr:#x}, outside its {} bytes of RAM",
                    shared.memory
                ))
            }
            Ok(VcpuExit::Hlt) => End::Failed(format!(
                "(vCPU {index}) halted without writing an exit code"
            )),
            Ok(VcpuExit::Shutdown) => End::Failed(format!(
                "(vCPU {index}) shut down: a triple fault (an exception it could not handle; its code or page tables are broken)"
            )),
            Ok(VcpuExit::InternalError) => {
                let sub = internal_suberror(vcpu);
                End::Failed(if sub == 1 {
                    format!(
                        "(vCPU {index}) stopped: KVM could not emulate an instruction it ran (KVM_EXIT_INTERNAL_ERROR, emulation failure). A nested hypervisor that emulates the guest's ring 0 (as this project's test machine's does) stops Linux guests this way"
                    )
                } else {
                    format!("(vCPU {index}) stopped: KVM internal error, suberror {sub}")
                })
            }
            Ok(exit) => End::Failed(format!("(vCPU {index}) stopped with {exit:?}")),
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => End::Kvm(e),
        };
        flush(&mut line);
        return end;
    }
}

/// KVM's reason for a KVM_EXIT_INTERNAL_ERROR (1: emulation failure).
fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kvm_run union holds `internal`.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

extern "C" fn on_kick(_: libc::c_int) {}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler that does nothing (async-signal-safe)
        // and no SA_RESTART, so that KVM_RUN returns EINTR; the signal is ours alone.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}
