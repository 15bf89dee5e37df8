//! The userfaultfd ioctls, by hand.
//!
//! The `userfaultfd` crate lacks MOVE, POISON and WP_ASYNC and needs libclang for its
//! bindings; the ABI is small and stable (linux/userfaultfd.h), so it is spelled out here.
//! Every other module reaches userfaultfd only through [`Uffd`].

use crate::sys::mem::CHUNK_BYTES;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const UFFDIO: u64 = 0xAA;
const UFFD_API: u64 = 0xAA;

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioContinue {
    range: UffdioRange,
    mode: u64,
    mapped: i64,
}

const UFFDIO_API_IOC: u64 = iowr(0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ior(0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ior(0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = iowr(0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = iowr(0x04, std::mem::size_of::<UffdioZeropage>());
const UFFDIO_CONTINUE: u64 = iowr(0x07, std::mem::size_of::<UffdioContinue>());
/// `_IO(0xAA, 0x00)` on /dev/userfaultfd.
const USERFAULTFD_IOC_NEW: u64 = 0xAA00;

/// Registration mode bits.
pub const REGISTER_MODE_MISSING: u64 = 1;
/// Minor faults: the page is in the page cache but not mapped (shmem, hugetlbfs).
pub const REGISTER_MODE_MINOR: u64 = 4;

/// Feature bits of `UFFDIO_API`.
pub mod feature {
    /// Shared memory (memfd) may be registered for missing faults.
    pub const MISSING_SHMEM: u64 = 1 << 5;
    /// Faults raise SIGBUS in the faulting thread instead of queueing a message.
    pub const SIGBUS: u64 = 1 << 7;
    /// Minor faults on shared memory.
    pub const MINOR_SHMEM: u64 = 1 << 10;
    /// hugetlbfs may be registered for missing faults.
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    /// Minor faults on hugetlbfs.
    pub const MINOR_HUGETLBFS: u64 = 1 << 9;
    /// Report the exact faulting address, not the page-aligned one.
    pub const EXACT_ADDRESS: u64 = 1 << 11;
}

/// `uffd_msg.event` for a page fault.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `pagefault.flags`: the access was a write.
pub const PAGEFAULT_FLAG_WRITE: u64 = 1;
/// `pagefault.flags`: a minor fault (page cache hit, not mapped).
pub const PAGEFAULT_FLAG_MINOR: u64 = 4;

/// A message read from a userfaultfd (`struct uffd_msg`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    /// For page faults: `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
    /// For page faults: the faulting address.
    pub address: u64,
    _feat: u64,
}

/// How a page operation ended when it did not simply succeed.
#[derive(Debug)]
pub enum FillError {
    /// The page is already mapped (another thread filled it): benign.
    Exists,
    /// The mm is changing (fork, mremap): try again.
    Again,
    /// Anything else: a real error.
    Os(io::Error),
}

/// An owned userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: u64,
}

/// Features the running kernel offers, probed once with a throw-away userfaultfd.
pub fn probe_features() -> io::Result<u64> {
    let fd = open_raw(false)?;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: fd is a fresh userfaultfd, `api` is a valid uffdio_api the kernel fills in.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API_IOC as _, &mut api) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(api.features)
}

fn open_raw(nonblock: bool) -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | if nonblock { libc::O_NONBLOCK } else { 0 };
    // SAFETY: plain syscall with integer flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as RawFd;
    if fd >= 0 {
        // SAFETY: the kernel just returned this descriptor; we own it.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let sys_err = io::Error::last_os_error();
    // Unprivileged users may be refused the syscall but allowed /dev/userfaultfd.
    let path = c"/dev/userfaultfd";
    // SAFETY: path is a valid NUL-terminated string.
    let dev = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        return Err(sys_err);
    }
    // SAFETY: dev was just opened by us.
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value and returns a new descriptor.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
    if fd < 0 {
        return Err(sys_err);
    }
    // SAFETY: the ioctl returned a descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The length of the part of `[at, at+len)` that lies in the chunk of `at`: a fill
/// ioctl's range must lie inside one mapping, and a region's 2 MiB chunks may be
/// mappings of their own (`sys::mem::split_mapping`).
fn piece(at: usize, len: usize) -> usize {
    let chunk_end = (at / CHUNK_BYTES + 1) * CHUNK_BYTES;
    len.min(chunk_end - at)
}

/// Runs a fill ioctl over `[at, at+len)` until all of it is done: one call per chunk's
/// part (`piece`), going on from where a call stopped part-way. `op(dst, len)` makes one
/// call and returns its result and the kernel's progress field (bytes done, or a negative
/// errno). A call that did part of its range returns EAGAIN with the bytes done: redoing
/// those would meet them as EEXIST. EAGAIN with nothing done (the mm is changing) is
/// retried here too; any other error is returned.
fn fill_range(
    at: usize,
    len: usize,
    mut op: impl FnMut(usize, usize) -> (Result<(), FillError>, i64),
) -> Result<(), FillError> {
    let mut done = 0;
    while done < len {
        let n = piece(at + done, len - done);
        let (r, progress) = op(at + done, n);
        if r.is_ok() {
            done += n;
            continue;
        }
        if progress > 0 {
            done += (progress as usize).min(n);
        }
        match r {
            Err(FillError::Again) if progress <= 0 => std::thread::yield_now(),
            Err(FillError::Again) => {}
            Err(e) => return Err(e),
            Ok(()) => unreachable!(),
        }
    }
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fill_result(rc: libc::c_int) -> Result<(), FillError> {
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Err(FillError::Exists),
        Some(libc::EAGAIN) => Err(FillError::Again),
        _ => Err(FillError::Os(err)),
    }
}

impl Uffd {
    /// Opens a userfaultfd and enables `features` (all must be offered by the kernel).
    /// Non-blocking when `nonblock`, so handler threads can poll it.
    pub fn new(features: u64, nonblock: bool) -> io::Result<Uffd> {
        let fd = open_raw(nonblock)?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: fd is a fresh userfaultfd, `api` is a valid uffdio_api.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API_IOC as _, &mut api) })?;
        // The kernel answers with every feature it offers; keep what was asked for (a
        // forked child opens its descriptor again with these).
        let _offered = api.features;
        Ok(Uffd { fd, features })
    }

    /// The features this descriptor was opened with (asked for, not all that are offered).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The raw descriptor, for poll(2).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes this descriptor number name `other`'s userfaultfd instead (a forked child
    /// takes its own under the number the parent's code knows).
    pub fn replace_with(&self, other: &Uffd) -> io::Result<()> {
        crate::sys::mem::dup_over(other.raw(), self.raw())
    }

    /// Registers `[start, start+len)` for the given `REGISTER_MODE_*` bits.
    pub fn register(&self, start: usize, len: usize, mode: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode,
            ioctls: 0,
        };
        // SAFETY: `reg` is a valid uffdio_register; the kernel validates the range.
        check(unsafe { libc::ioctl(self.raw(), UFFDIO_REGISTER as _, &mut reg) })
    }

    /// Unregisters a range (on region drop).
    pub fn unregister(&self, start: usize, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: `range` is a valid uffdio_range.
        check(unsafe { libc::ioctl(self.raw(), UFFDIO_UNREGISTER as _, &mut range) })
    }

    /// Atomically copies `len` bytes from `src` into the missing range at `dst`.
    ///
    /// # Safety
    /// `src..src+len` must be readable memory of this process that is not in a
    /// userfaultfd-registered range.
    pub unsafe fn copy(&self, dst: usize, src: *const u8, len: usize) -> Result<(), FillError> {
        fill_range(dst, len, |d, n| {
            let mut c = UffdioCopy {
                dst: d as u64,
                src: src as u64 + (d - dst) as u64,
                len: n as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: the caller vouches for `src..src+len`, of which this is a part; the
            // kernel validates `dst`.
            let rc = unsafe { libc::ioctl(self.raw(), UFFDIO_COPY as _, &mut c) };
            (fill_result(rc), c.copy)
        })
    }

    /// Maps zeros into the missing range at `dst`.
    pub fn zeropage(&self, dst: usize, len: usize) -> Result<(), FillError> {
        fill_range(dst, len, |d, n| {
            let mut z = UffdioZeropage {
                range: UffdioRange {
                    start: d as u64,
                    len: n as u64,
                },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: `z` is a valid uffdio_zeropage; the kernel validates the range.
            let rc = unsafe { libc::ioctl(self.raw(), UFFDIO_ZEROPAGE as _, &mut z) };
            (fill_result(rc), z.zeropage)
        })
    }

    /// Maps the page-cache pages already present behind `[dst, dst+len)` (minor faults).
    pub fn cont(&self, dst: usize, len: usize) -> Result<(), FillError> {
        fill_range(dst, len, |d, n| {
            let mut c = UffdioContinue {
                range: UffdioRange {
                    start: d as u64,
                    len: n as u64,
                },
                mode: 0,
                mapped: 0,
            };
            // SAFETY: `c` is a valid uffdio_continue; the kernel validates the range.
            let rc = unsafe { libc::ioctl(self.raw(), UFFDIO_CONTINUE as _, &mut c) };
            (fill_result(rc), c.mapped)
        })
    }

    /// Wakes threads blocked on faults in `[start, start+len)` (handler-thread mode,
    /// when the page was filled by someone else).
    pub fn wake(&self, start: usize, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: `range` is a valid uffdio_range.
        check(unsafe { libc::ioctl(self.raw(), UFFDIO_WAKE as _, &mut range) })
    }

    /// Reads up to `buf.len()` messages; returns how many (0 when none are queued).
    pub fn read_msgs(&self, buf: &mut [UffdMsg]) -> io::Result<usize> {
        let bytes = std::mem::size_of_val(buf);
        // SAFETY: `buf` is valid for `bytes` bytes of writes and UffdMsg is plain data.
        let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => Ok(0),
                _ => Err(err),
            };
        }
        Ok(n as usize / std::mem::size_of::<UffdMsg>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
        assert_eq!(UFFDIO_API_IOC, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(UFFDIO_CONTINUE, 0xc020_aa07);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
    }
}
