//! System calls made directly, not through the C library's wrappers.
//!
//! When the engine runs inside `farmem run`'s preload library, that library replaces the
//! C library's `mmap`, `munmap` and `madvise` for the program (large anonymous mappings
//! become far memory), and wraps the socket calls (to pin far buffers). The engine's own
//! mappings must not take that path, and the remote tier's socket I/O on the fault path
//! (often a signal handler) should not either, so they make these calls with the
//! `syscall` instruction itself. Return values follow the C functions: -1 (or
//! `MAP_FAILED`) with errno set on failure.

#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn syscall6(n: i64, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller's contract; the syscall instruction clobbers rcx and r11 only.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    if (-4095..0).contains(&ret) {
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = -ret as i32 };
        return -1;
    }
    ret
}

/// Any system call, with the kernel's raw result (`-errno` on failure); errno untouched.
///
/// # Safety
/// The system call's own contract.
#[cfg(target_arch = "x86_64")]
pub unsafe fn syscall_raw(n: i64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract; the syscall instruction clobbers rcx and r11 only.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// mmap(2).
///
/// # Safety
/// As mmap.
pub unsafe fn mmap(
    addr: *mut libc::c_void,
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    off: i64,
) -> *mut libc::c_void {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: forwarded.
        let r = unsafe {
            syscall6(
                libc::SYS_mmap,
                addr as usize,
                len,
                prot as usize,
                flags as usize,
                fd as usize,
                off as usize,
            )
        };
        if r == -1 {
            libc::MAP_FAILED
        } else {
            r as *mut libc::c_void
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::mmap(addr, len, prot, flags, fd, off)
    }
}

/// munmap(2).
///
/// # Safety
/// As munmap.
pub unsafe fn munmap(addr: *mut libc::c_void, len: usize) -> i32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(libc::SYS_munmap, addr as usize, len, 0, 0, 0, 0) as i32
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::munmap(addr, len)
    }
}

/// madvise(2).
///
/// # Safety
/// As madvise.
pub unsafe fn madvise(addr: *mut libc::c_void, len: usize, advice: i32) -> i32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(
            libc::SYS_madvise,
            addr as usize,
            len,
            advice as usize,
            0,
            0,
            0,
        ) as i32
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::madvise(addr, len, advice)
    }
}

/// recvfrom(2) without an address: `recv(fd, buf, len, flags)`.
///
/// # Safety
/// As recv: `buf` is writable for `len` bytes.
pub unsafe fn recv(fd: i32, buf: *mut u8, len: usize, flags: i32) -> isize {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(
            libc::SYS_recvfrom,
            fd as usize,
            buf as usize,
            len,
            flags as usize,
            0,
            0,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::recv(fd, buf.cast(), len, flags)
    }
}

/// sendmsg(2).
///
/// # Safety
/// As sendmsg: `msg` and the buffers it names are valid.
pub unsafe fn sendmsg(fd: i32, msg: *const libc::msghdr, flags: i32) -> isize {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(
            libc::SYS_sendmsg,
            fd as usize,
            msg as usize,
            flags as usize,
            0,
            0,
            0,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::sendmsg(fd, msg, flags)
    }
}

/// close(2).
///
/// # Safety
/// `fd` is the caller's own descriptor, not used again.
pub unsafe fn close(fd: i32) -> i32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(libc::SYS_close, fd as usize, 0, 0, 0, 0, 0) as i32
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::close(fd)
    }
}

/// openat(AT_FDCWD, path, flags): opens a file without the C library's `open`, which a
/// preload may wrap.
///
/// # Safety
/// `path` is NUL-terminated.
pub unsafe fn open(path: &std::ffi::CStr, flags: i32) -> i32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded; the path is NUL-terminated (CStr).
    unsafe {
        syscall6(
            libc::SYS_openat,
            libc::AT_FDCWD as usize,
            path.as_ptr() as usize,
            flags as usize,
            0,
            0,
            0,
        ) as i32
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::open(path.as_ptr(), flags)
    }
}

/// read(2).
///
/// # Safety
/// As read: `buf` is writable for `len` bytes.
pub unsafe fn read(fd: i32, buf: *mut u8, len: usize) -> isize {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(libc::SYS_read, fd as usize, buf as usize, len, 0, 0, 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::read(fd, buf.cast(), len)
    }
}

/// lseek(2).
///
/// # Safety
/// `fd` is the caller's own descriptor.
pub unsafe fn lseek(fd: i32, off: i64, whence: i32) -> i64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(
            libc::SYS_lseek,
            fd as usize,
            off as usize,
            whence as usize,
            0,
            0,
            0,
        ) as i64
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::lseek(fd, off, whence)
    }
}

/// pread(2).
///
/// # Safety
/// As pread: `buf` is writable for `len` bytes.
pub unsafe fn pread(fd: i32, buf: *mut u8, len: usize, off: i64) -> isize {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(
            libc::SYS_pread64,
            fd as usize,
            buf as usize,
            len,
            off as usize,
            0,
            0,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::pread(fd, buf.cast(), len, off)
    }
}

/// pwrite(2).
///
/// # Safety
/// As pwrite: `buf` is readable for `len` bytes.
pub unsafe fn pwrite(fd: i32, buf: *const u8, len: usize, off: i64) -> isize {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        syscall6(
            libc::SYS_pwrite64,
            fd as usize,
            buf as usize,
            len,
            off as usize,
            0,
            0,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        libc::pwrite(fd, buf.cast(), len, off)
    }
}
