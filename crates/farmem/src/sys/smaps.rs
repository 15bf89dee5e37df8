//! Reading `/proc/self/smaps` for the hardware's accessed bits, one mapping at a time.
//!
//! For each mapping (VMA) the kernel reports `Rss:` (pages mapped) and `Referenced:`
//! (mapped pages whose accessed bit is set), both in kB. `MADV_COLD` clears the bits
//! ([`crate::sys::mem::cold`]). With a region split into one VMA per 2 MiB chunk, this is
//! an exact count, per chunk, of the pages touched since the chunk was last cleared:
//! userspace's only view of the accessed bits on kernels without idle page tracking.
//!
//! The file is a seq_file: each `read` makes the kernel generate records until it has
//! at least as many bytes as asked for, walking each mapping's page table as it goes
//! (about 60 ns per mapped page here). Reading in small steps (a few records) keeps
//! every count fresh when the caller asks for it; [`Smaps::rewind`] starts over at the
//! lowest address.
//!
//! No allocation after [`Smaps::open`], and the calls are made with the `syscall`
//! instruction (`sys::raw`), so that a preloaded C library wrapper never sees them.

use std::io;

/// One mapping's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaCounts {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Pages mapped (`Rss:`).
    pub rss_pages: u64,
    /// Mapped pages with the accessed bit set (`Referenced:`).
    pub referenced_pages: u64,
}

/// Bytes asked for per `read`: a record is about 1.1 KiB, so each read makes the kernel
/// generate one or two.
const STEP: usize = 2048;
/// The longest line kept (a header line with a long path is cut; only its addresses
/// matter).
const BUF: usize = 8192;

/// An open `/proc/self/smaps`, read forward in address order.
#[derive(Debug)]
pub struct Smaps {
    fd: i32,
    buf: Box<[u8; BUF]>,
    /// Unparsed bytes are `buf[at..len]`.
    at: usize,
    len: usize,
    eof: bool,
    /// The record being parsed.
    cur: Option<VmaCounts>,
}

impl Smaps {
    /// Opens the file. Fails where /proc is not mounted or not readable.
    pub fn open() -> io::Result<Smaps> {
        // SAFETY: a NUL-terminated path; plain flags.
        let fd =
            unsafe { crate::sys::raw::open(c"/proc/self/smaps", libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Smaps {
            fd,
            buf: Box::new([0; BUF]),
            at: 0,
            len: 0,
            eof: false,
            cur: None,
        })
    }

    /// Starts over at the lowest address.
    pub fn rewind(&mut self) -> io::Result<()> {
        // SAFETY: our own descriptor.
        if unsafe { crate::sys::raw::lseek(self.fd, 0, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.at = 0;
        self.len = 0;
        self.eof = false;
        self.cur = None;
        Ok(())
    }

    /// The next mapping's counts, in address order; `None` at the end of the file.
    pub fn next_vma(&mut self) -> io::Result<Option<VmaCounts>> {
        loop {
            let Some(line) = self.next_line()? else {
                return Ok(None);
            };
            let (a, b) = (line.0, line.1);
            if let Some(done) = self.parse_line(a, b) {
                return Ok(Some(done));
            }
        }
    }

    /// The byte range of the next whole line in `buf` (without its newline), reading
    /// more as needed; `None` at the end of the file.
    fn next_line(&mut self) -> io::Result<Option<(usize, usize)>> {
        loop {
            if let Some(nl) = self.buf[self.at..self.len].iter().position(|&c| c == b'\n') {
                let line = (self.at, self.at + nl);
                self.at += nl + 1;
                return Ok(Some(line));
            }
            if self.eof {
                return Ok(None);
            }
            if self.at > 0 {
                self.buf.copy_within(self.at..self.len, 0);
                self.len -= self.at;
                self.at = 0;
            }
            if self.len == BUF {
                // A line longer than the buffer: keep its start (the addresses), drop
                // the rest up to its newline.
                self.len = 64;
            }
            let room = (BUF - self.len).min(STEP);
            // SAFETY: `buf[len..len+room]` is ours to write.
            let n = unsafe {
                crate::sys::raw::read(self.fd, self.buf.as_mut_ptr().add(self.len), room)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                self.eof = true;
                if self.len > 0 && self.buf[self.len - 1] != b'\n' {
                    // A last line without a newline.
                    self.buf[self.len.min(BUF - 1)] = b'\n';
                    self.len = (self.len + 1).min(BUF);
                }
            }
            self.len += n as usize;
        }
    }

    /// Takes in one line; returns the record it completes, if any.
    fn parse_line(&mut self, a: usize, b: usize) -> Option<VmaCounts> {
        let line = &self.buf[a..b];
        if let Some((start, end)) = parse_header(line) {
            self.cur = Some(VmaCounts {
                start,
                end,
                ..VmaCounts::default()
            });
            return None;
        }
        let cur = self.cur.as_mut()?;
        if let Some(kb) = field_kb(line, b"Rss:") {
            cur.rss_pages = kb / 4;
        } else if let Some(kb) = field_kb(line, b"Referenced:") {
            cur.referenced_pages = kb / 4;
        } else if line.starts_with(b"VmFlags:") {
            return self.cur.take();
        }
        None
    }
}

impl Drop for Smaps {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, not used again.
        unsafe { crate::sys::raw::close(self.fd) };
    }
}

/// `start-end perms ...`: the addresses of a record's first line.
fn parse_header(line: &[u8]) -> Option<(usize, usize)> {
    let dash = line.iter().position(|&c| c == b'-')?;
    let space = dash + 1 + line[dash + 1..].iter().position(|&c| c == b' ')?;
    let start = hex(&line[..dash])?;
    let end = hex(&line[dash + 1..space])?;
    Some((start, end))
}

fn hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0usize;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as usize;
    }
    Some(v)
}

/// The number of `Name:   N kB`.
fn field_kb(line: &[u8], name: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(name)?;
    let mut v = 0u64;
    let mut seen = false;
    for &c in rest {
        match c {
            b' ' if !seen => {}
            b'0'..=b'9' => {
                seen = true;
                v = v * 10 + (c - b'0') as u64;
            }
            _ => break,
        }
    }
    seen.then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_fields_parse() {
        assert_eq!(
            parse_header(b"7f00aa000000-7f00aa200000 rw-s 00000000 00:01 42   /memfd:x (deleted)"),
            Some((0x7f00aa000000, 0x7f00aa200000))
        );
        assert_eq!(parse_header(b"Rss:                 8 kB"), None);
        assert_eq!(
            field_kb(b"Referenced:         12 kB", b"Referenced:"),
            Some(12)
        );
        assert_eq!(field_kb(b"Rss:        0 kB", b"Rss:"), Some(0));
        assert_eq!(field_kb(b"RssAnon:        4 kB", b"Rss:"), None);
    }

    #[test]
    fn a_mapping_of_our_own_is_found_with_its_counts() {
        let len = 64 * 4096;
        let m = crate::sys::mem::Mapping::anon(len).unwrap();
        // Touch 5 pages.
        for i in 0..5 {
            // SAFETY: inside our own mapping.
            unsafe { m.ptr().add(i * 4096).write_volatile(1) };
        }
        let mut s = Smaps::open().unwrap();
        let mut found = None;
        while let Some(v) = s.next_vma().unwrap() {
            if v.start <= m.ptr() as usize && (m.ptr() as usize) < v.end {
                found = Some(v);
            }
        }
        let v = found.expect("the mapping is listed");
        assert!(v.rss_pages >= 5 && v.referenced_pages >= 5, "{v:?}");
        s.rewind().unwrap();
        assert!(s.next_vma().unwrap().is_some());
    }
}
