//! Memory objects: the memfd behind a region, its shared mapping, batched zapping.
//!
//! A region is a memfd mapped `MAP_SHARED`. Its pages live in the memfd's page cache,
//! so three cheap operations exist that anonymous memory lacks:
//! - *zap*: drop the page-table entry but keep the data (`MADV_DONTNEED` on a shared
//!   mapping); the next touch is a minor fault resolved by `UFFDIO_CONTINUE`;
//! - *read out*: `pread` the page from the memfd without mapping it;
//! - *free*: punch a hole, which returns the page to the kernel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// An owned memfd.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
}

impl Memfd {
    /// Creates a memfd of `len` bytes (sparse: no memory is used until pages are filled).
    pub fn new(name: &std::ffi::CStr, len: usize) -> io::Result<Memfd> {
        Self::create(name, len, libc::MFD_CLOEXEC)
    }

    /// Creates a hugetlbfs memfd of `len` bytes (a multiple of 2 MiB) in 2 MiB pages, taken
    /// from the kernel's huge-page pool as they are filled. It can be read with `read_at`
    /// and punched, but not written with `write_at` (hugetlbfs has no write(2)): write
    /// through a mapping.
    pub fn new_huge(name: &std::ffi::CStr, len: usize) -> io::Result<Memfd> {
        // MFD_HUGE_2MB: log2(2 MiB) in the flag's size field.
        Self::create(
            name,
            len,
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB | (21 << 26),
        )
    }

    fn create(name: &std::ffi::CStr, len: usize, flags: libc::c_uint) -> io::Result<Memfd> {
        // SAFETY: name is NUL-terminated; flags are plain integers.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Memfd { fd })
    }

    /// The descriptor.
    pub fn raw(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Copies the page at byte `offset` out of the page cache into `buf`, without mapping it.
    pub fn read_at(&self, buf: &mut [u8], offset: usize) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        all_of(buf.len(), |done| {
            // SAFETY: buf[done..] is valid for writes of the remaining length.
            unsafe {
                super::raw::pread(
                    fd,
                    buf[done..].as_mut_ptr(),
                    buf.len() - done,
                    (offset + done) as i64,
                )
            }
        })
    }

    /// Writes `buf` into the page cache at byte `offset` without mapping it (installs a
    /// prefetched page unmapped: its first touch is a minor fault).
    pub fn write_at(&self, buf: &[u8], offset: usize) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        all_of(buf.len(), |done| {
            // SAFETY: buf[done..] is valid for reads of the remaining length.
            unsafe {
                super::raw::pwrite(
                    fd,
                    buf[done..].as_ptr(),
                    buf.len() - done,
                    (offset + done) as i64,
                )
            }
        })
    }

    /// Frees `[offset, offset+len)`: the pages go back to the kernel, reads see zeros.
    pub fn punch(&self, offset: usize, len: usize) -> io::Result<()> {
        // SAFETY: fallocate on our own descriptor with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Copies every data extent of `[0, end)` (holes stay holes) into `dst` at the same
    /// offsets: SEEK_DATA / SEEK_HOLE find the extents, copy_file_range moves them inside
    /// the kernel.
    pub fn copy_data_to(&self, dst: &Memfd, end: usize) -> io::Result<()> {
        let (src_fd, dst_fd) = (self.fd.as_raw_fd(), dst.fd.as_raw_fd());
        let mut off: i64 = 0;
        while (off as usize) < end {
            // SAFETY: lseek on our own descriptor.
            let data = unsafe { libc::lseek(src_fd, off, libc::SEEK_DATA) };
            if data < 0 {
                break; // ENXIO: no data past `off`
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(src_fd, data, libc::SEEK_HOLE) };
            let hole = if hole < 0 { end as i64 } else { hole };
            let (mut s, mut d) = (data, data);
            while s < hole {
                // SAFETY: copying between two memfds of ours, with our own offsets.
                let n = unsafe {
                    libc::copy_file_range(src_fd, &mut s, dst_fd, &mut d, (hole - s) as usize, 0)
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    break;
                }
            }
            off = hole;
        }
        Ok(())
    }

    /// Makes this memfd's descriptor number name `other`'s file instead (dup3): code
    /// holding the number now reaches `other`. `other` may be dropped afterwards.
    pub fn replace_with(&self, other: &Memfd) -> io::Result<()> {
        dup_over(other.fd.as_raw_fd(), self.fd.as_raw_fd())
    }

    /// Maps `[0, len)` of the memfd shared, read-write, at exactly `addr`, replacing what
    /// is there, and keeps it out of forked children (`MADV_DONTFORK`).
    ///
    /// # Safety
    /// `[addr, addr+len)` must be an address range the caller owns and that nothing else
    /// uses: whatever was mapped there is gone.
    pub unsafe fn map_fixed(&self, addr: usize, len: usize) -> io::Result<()> {
        // SAFETY: the caller owns the range; MAP_FIXED replaces only it.
        let p = unsafe {
            crate::sys::raw::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                // NORESERVE: a hugetlbfs file would otherwise reserve huge pages for all
                // of `len` at once.
                libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping just made.
        if unsafe { crate::sys::raw::madvise(p, len, libc::MADV_DONTFORK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Maps the whole memfd shared, read-write, at an address that is a multiple of
    /// [`CHUNK_BYTES`], so that the region's 2 MiB chunks are whole page-table pages and
    /// each can be a mapping of its own.
    pub fn map(&self, len: usize) -> io::Result<Mapping> {
        // Reserve room for an aligned start, then map over the aligned part and give the
        // slack back.
        let room = len + CHUNK_BYTES;
        // SAFETY: a fresh reservation chosen by the kernel; the result is checked.
        let res = unsafe {
            crate::sys::raw::mmap(
                std::ptr::null_mut(),
                room,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if res == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let res = res as usize;
        let at = res.next_multiple_of(CHUNK_BYTES);
        // SAFETY: [at, at+len) lies inside the reservation just made, which nothing else
        // uses; MAP_FIXED replaces that part of it.
        let ptr = unsafe {
            crate::sys::raw::mmap(
                at as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE | libc::MAP_FIXED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        let failed = ptr == libc::MAP_FAILED;
        let err = io::Error::last_os_error();
        // SAFETY: the slack on either side of [at, at+len) is ours (the reservation);
        // on failure the whole reservation goes.
        unsafe {
            if failed {
                crate::sys::raw::munmap(res as *mut libc::c_void, room);
            } else {
                if at > res {
                    crate::sys::raw::munmap(res as *mut libc::c_void, at - res);
                }
                let tail = res + room - (at + len);
                if tail > 0 {
                    crate::sys::raw::munmap((at + len) as *mut libc::c_void, tail);
                }
            }
        }
        if failed {
            return Err(err);
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?,
            len,
        })
    }
}

/// The alignment of region mappings, and the span no userfaultfd range may cross (a
/// region's 2 MiB chunks may be mappings of their own).
pub const CHUNK_BYTES: usize = 2 << 20;

/// Repeats a positional read or write (`op(done)` returns what the system call did) until
/// `len` bytes are done, retrying EINTR; the memfd never ends early, so 0 is an error.
fn all_of(len: usize, mut op: impl FnMut(usize) -> isize) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let n = op(done);
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "memfd shorter than the region",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// A mapping owned by this value; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is an address range; it holds no thread-affine state.
unsafe impl Send for Mapping {}
// SAFETY: as above; access to the bytes is the owner's concern, through raw pointers.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// An anonymous private read-write mapping (scratch buffers outside any region).
    pub fn anon(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping chosen by the kernel; the result is checked.
        let ptr = unsafe {
            crate::sys::raw::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?,
            len,
        })
    }

    /// Keeps the mapping out of children created by `fork(2)`.
    pub fn dont_fork(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this mapping.
        if unsafe {
            crate::sys::raw::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_DONTFORK)
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// First byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own exactly this range, mapped by mmap above.
        let rc = unsafe { crate::sys::raw::munmap(self.ptr.as_ptr().cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap failed: {}", io::Error::last_os_error());
    }
}

/// Drops the page-table entries of many scattered ranges with one system call and one TLB
/// flush, through `process_madvise(2)` on ourselves (any advice is allowed for the calling
/// process since Linux 6.13; TLB flushes are batched since 6.16). Falls back to one
/// `madvise` per range on older kernels.
#[derive(Debug)]
pub struct Zapper {
    pidfd: Option<OwnedFd>,
    /// Set once the kernel refused MADV_DONTNEED through process_madvise.
    fallback: std::sync::atomic::AtomicBool,
}

/// Ranges per `process_madvise` call (`UIO_MAXIOV`).
pub const ZAP_BATCH: usize = 1024;

impl Zapper {
    /// Opens a pidfd on ourselves if the kernel has one to give.
    pub fn new() -> Zapper {
        // SAFETY: pidfd_open on our own pid with no flags; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as i32;
        // SAFETY: a descriptor the kernel just gave us.
        let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
        Zapper {
            pidfd,
            fallback: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// In a forked child: the inherited pidfd names the parent, so zapping through it would
    /// unmap the parent's pages. Opens one on the child under the same descriptor number.
    pub fn after_fork(&self) -> io::Result<()> {
        let Some(old) = &self.pidfd else {
            return Ok(());
        };
        // SAFETY: pidfd_open on our own pid with no flags; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as i32;
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: replacing our own descriptor number, then closing the spare.
        let rc = unsafe { libc::dup3(fd, old.as_raw_fd(), libc::O_CLOEXEC) };
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Zaps every `(addr, len)` range (page aligned, inside shared mappings we own).
    pub fn zap(&self, ranges: &[libc::iovec]) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        for chunk in ranges.chunks(ZAP_BATCH) {
            if let (Some(pidfd), false) = (&self.pidfd, self.fallback.load(Relaxed)) {
                let total: usize = chunk.iter().map(|v| v.iov_len).sum();
                // SAFETY: `chunk` is a valid iovec array; the ranges are our own mappings.
                let n = unsafe {
                    libc::syscall(
                        libc::SYS_process_madvise,
                        pidfd.as_raw_fd(),
                        chunk.as_ptr(),
                        chunk.len(),
                        libc::MADV_DONTNEED,
                        0,
                    )
                };
                if n >= 0 && n as usize == total {
                    continue;
                }
                if n >= 0 {
                    // Partial progress: finish the rest one by one below.
                } else {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EINVAL) {
                        return Err(err);
                    }
                    // An older kernel refuses MADV_DONTNEED here: use madvise from now on.
                    self.fallback.store(true, Relaxed);
                }
            }
            for v in chunk {
                // SAFETY: the range is page aligned and inside a mapping we own.
                if unsafe { crate::sys::raw::madvise(v.iov_base, v.iov_len, libc::MADV_DONTNEED) }
                    < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

impl Default for Zapper {
    fn default() -> Self {
        Self::new()
    }
}

/// Clears the accessed bits of the pages mapped in `[addr, addr+len)` (`MADV_COLD`; it
/// also moves them to the kernel's inactive list, which matters only if the kernel itself
/// must reclaim). One TLB flush for the range.
pub fn cold(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: MADV_COLD changes no content and no mapping; the kernel checks the range.
    if unsafe { crate::sys::raw::madvise(addr as *mut libc::c_void, len, libc::MADV_COLD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `[addr, addr+len)` a mapping (VMA) of its own, so that `/proc/self/smaps` counts
/// its pages apart from its neighbours'. It sets `VM_NOHUGEPAGE` (`MADV_NOHUGEPAGE`),
/// which the kernel does not merge with an unmarked neighbour: marking every other 2 MiB
/// chunk of a region splits all of them. The flag only says "no transparent huge pages",
/// which a region (4 KiB pages filled by userfaultfd) never uses anyway.
pub fn split_mapping(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: MADV_NOHUGEPAGE changes no content and no mapping; the kernel checks the
    // range.
    if unsafe { crate::sys::raw::madvise(addr as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) }
        < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The most mappings a process may have (`vm.max_map_count`; 65530 if unreadable).
pub fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65530)
}

/// Makes descriptor number `dst` name what `src` names (dup3, close-on-exec).
pub fn dup_over(src: RawFd, dst: RawFd) -> io::Result<()> {
    // SAFETY: dup3 on descriptor numbers; the kernel checks them.
    if unsafe { libc::dup3(src, dst, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Whether the running kernel is at least `major.minor` (from
/// /proc/sys/kernel/osrelease; false if it cannot be read).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(r) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = r
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}
