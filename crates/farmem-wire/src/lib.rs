//! The wire protocol between farmem's remote tier (`tcp://HOST:PORT`) and its memory node
//! (`farmem serve`).
//!
//! # Frames
//! Every message is one frame: a 24-byte header, then `len` bytes of payload.
//!
//! | bytes | field | |
//! |---|---|---|
//! | 0..4 | magic | `FMEM` |
//! | 4..6 | version | [`VERSION`], little-endian like every integer here |
//! | 6 | kind | the message ([`Kind`]) |
//! | 7 | flags | 0 (reserved; a frame with others set is rejected) |
//! | 8..16 | id | chosen by the client; a reply carries its request's |
//! | 16..20 | len | payload bytes, at most [`MAX_PAYLOAD`] |
//! | 20..24 | crc | CRC-32C of the header (this field as 0) and the payload |
//!
//! The CRC catches a frame damaged on the way: a frame whose CRC does not match is never
//! applied, and the connection it came on is dropped (the client retries on a new one).
//! Page content is also checked end to end by the engine, against the xxh3-128 it keeps
//! for every page it stores, so a node that returns the wrong page is caught too.
//!
//! # Sessions
//! A connection starts with [`Message::Hello`] (the node's token, and either a new
//! session, or joining an existing one with its secret, or cloning one for a forked
//! child), answered by [`Message::Welcome`] or [`Message::Error`]. Page keys are the
//! session's own: a client can name no other session's pages, so one client never reads
//! another's. A process may open several connections to the same session (a fetch never
//! queues behind a write-back batch).
//!
//! # Decoding
//! [`Header::decode`] and [`Message::decode`] take untrusted bytes and never panic: every
//! length is checked against what is there before it is used (the fuzz target in
//! `fuzz/` holds them to that).

use std::io::{self, Read, Write};

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"FMEM";
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 24;
/// Bytes in a page.
pub const PAGE: usize = 4096;
/// Most pages in one store or fetch.
pub const MAX_BATCH: usize = 256;
/// Largest payload: a full store batch (keys and pages) with room to spare.
pub const MAX_PAYLOAD: usize = 4 + MAX_BATCH * (8 + PAGE) + 4096;
/// Longest token, name or message.
pub const MAX_TEXT: usize = 4096;

/// What went wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a farmem frame.
    #[error("not a farmem frame (magic {0:02x?}): is this a farmem memory node?")]
    Magic([u8; 4]),
    /// The peer speaks another version.
    #[error("protocol version {theirs}, but this build speaks version {ours}")]
    Version {
        /// The peer's.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// A frame's checksum does not match: it was damaged on the way.
    #[error("corrupt frame: checksum {got:08x}, expected {want:08x}")]
    Checksum {
        /// Computed over what arrived.
        got: u32,
        /// What the header says.
        want: u32,
    },
    /// A frame that is well formed at the byte level but means nothing.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The connection ended in the middle of a frame.
    #[error("truncated frame: the connection ended after {got} of {want} bytes")]
    Truncated {
        /// Bytes that arrived.
        got: usize,
        /// Bytes the frame needed.
        want: usize,
    },
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn malformed(what: impl Into<String>) -> WireError {
    WireError::Malformed(what.into())
}

/// Message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`Message::Hello`]
    Hello = 1,
    /// [`Message::Welcome`]
    Welcome = 2,
    /// [`Message::Store`]
    Store = 3,
    /// [`Message::Fetch`]
    Fetch = 4,
    /// [`Message::Pages`]
    Pages = 5,
    /// [`Message::Discard`]
    Discard = 6,
    /// [`Message::Done`]
    Done = 7,
    /// [`Message::Status`]
    Status = 8,
    /// [`Message::StatusReply`]
    StatusReply = 9,
    /// [`Message::Error`]
    Error = 10,
    /// [`Message::Bye`]
    Bye = 11,
}

impl Kind {
    fn from_u8(k: u8) -> Option<Kind> {
        Some(match k {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Store,
            4 => Kind::Fetch,
            5 => Kind::Pages,
            6 => Kind::Discard,
            7 => Kind::Done,
            8 => Kind::Status,
            9 => Kind::StatusReply,
            10 => Kind::Error,
            11 => Kind::Bye,
            _ => return None,
        })
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message kind.
    pub kind: Kind,
    /// Request id (echoed by the reply).
    pub id: u64,
    /// Payload bytes.
    pub len: u32,
    /// CRC-32C of header and payload.
    pub crc: u32,
}

impl Header {
    /// Decodes a header. Checks magic, version, flags, kind and length; the CRC is
    /// checked with the payload ([`Header::check`]).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let magic: [u8; 4] = b[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(WireError::Version {
                theirs: version,
                ours: VERSION,
            });
        }
        let kind =
            Kind::from_u8(b[6]).ok_or_else(|| malformed(format!("unknown kind {}", b[6])))?;
        if b[7] != 0 {
            return Err(malformed(format!("unknown flags {:#x}", b[7])));
        }
        let id = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        if len as usize > MAX_PAYLOAD {
            return Err(malformed(format!(
                "payload of {len} bytes (at most {MAX_PAYLOAD})"
            )));
        }
        let crc = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
        Ok(Header { kind, id, len, crc })
    }

    /// Encodes the header with `crc` as given.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = self.kind as u8;
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// The CRC of this header (crc field as 0) followed by `parts` of payload.
    pub fn compute_crc(&self, parts: &[&[u8]]) -> u32 {
        let mut h = Header { crc: 0, ..*self }.encode();
        h[20..24].fill(0);
        let mut c = crc32c::crc32c(&h);
        for p in parts {
            c = crc32c::crc32c_append(c, p);
        }
        c
    }

    /// Checks the CRC against the payload `parts`.
    pub fn check(&self, parts: &[&[u8]]) -> Result<(), WireError> {
        let got = self.compute_crc(parts);
        if got != self.crc {
            return Err(WireError::Checksum {
                got,
                want: self.crc,
            });
        }
        Ok(())
    }
}

/// How a [`Message::Hello`] attaches to the node's pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A new, empty session.
    New,
    /// Another connection of an existing session (its id and secret).
    Join {
        /// Session id.
        session: u64,
        /// The secret [`Message::Welcome`] gave.
        secret: u64,
    },
    /// A new session holding a copy of an existing one's pages (a forked child).
    Clone {
        /// Session id.
        session: u64,
        /// Its secret.
        secret: u64,
    },
}

/// Error codes of [`Message::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    /// The token is wrong.
    BadToken = 1,
    /// The node cannot take the pages.
    Full = 2,
    /// A fetched page is not there.
    Missing = 3,
    /// The session does not exist (the node restarted?) or its secret is wrong.
    NoSession = 4,
    /// Version mismatch.
    Version = 5,
    /// A frame the node could not accept.
    Protocol = 6,
    /// The node is shutting down.
    ShuttingDown = 7,
    /// Anything else.
    Other = 8,
}

impl Code {
    fn from_u16(c: u16) -> Option<Code> {
        Some(match c {
            1 => Code::BadToken,
            2 => Code::Full,
            3 => Code::Missing,
            4 => Code::NoSession,
            5 => Code::Version,
            6 => Code::Protocol,
            7 => Code::ShuttingDown,
            8 => Code::Other,
            _ => return None,
        })
    }
}

/// A protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → node, first on every connection.
    Hello {
        /// The node's token (empty for a node started with `--insecure`).
        token: Vec<u8>,
        /// Who is asking (program name and pid), for the node's status.
        name: String,
        /// Which pages the connection works on.
        attach: Attach,
    },
    /// Node → client: the connection is accepted.
    Welcome {
        /// The session's id.
        session: u64,
        /// The secret that lets more connections join it.
        secret: u64,
        /// The node's capacity in bytes.
        capacity: u64,
        /// Bytes in use on the node.
        used: u64,
    },
    /// Client → node: store pages (overwriting). Answered by `Done` or `Error(Full)`.
    Store {
        /// Page keys.
        keys: Vec<u64>,
        /// The pages, back to back.
        data: Vec<u8>,
    },
    /// Client → node: fetch pages. Answered by `Pages` or `Error(Missing)`.
    Fetch {
        /// Page keys.
        keys: Vec<u64>,
    },
    /// Node → client: the fetched pages, back to back, in the order asked.
    Pages {
        /// The pages.
        data: Vec<u8>,
    },
    /// Client → node: forget pages. Answered by `Done`.
    Discard {
        /// Page keys.
        keys: Vec<u64>,
    },
    /// Node → client: done.
    Done,
    /// Anyone → node: what is your state? (Needs the token, no session.)
    Status {
        /// The node's token.
        token: Vec<u8>,
    },
    /// Node → asker: the state, as JSON text.
    StatusReply {
        /// JSON.
        json: String,
    },
    /// Node → client: the request failed.
    Error {
        /// What kind of failure.
        code: Code,
        /// For the message the user sees.
        message: String,
    },
    /// Client → node: closing (the session's pages are freed when its last
    /// connection says so).
    Bye {
        /// Free the session's pages.
        free: bool,
    },
}

/// A little-endian reader over a payload that fails instead of panicking.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(malformed(format!(
                "{what}: {n} bytes needed, {} left",
                self.b.len()
            )));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, WireError> {
        let n = self.u32(what)? as usize;
        if n > MAX_TEXT {
            return Err(malformed(format!("{what}: {n} bytes (at most {MAX_TEXT})")));
        }
        Ok(self.take(n, what)?.to_vec())
    }
    fn text(&mut self, what: &str) -> Result<String, WireError> {
        String::from_utf8(self.bytes(what)?).map_err(|_| malformed(format!("{what}: not UTF-8")))
    }
    fn keys(&mut self) -> Result<Vec<u64>, WireError> {
        let n = self.u32("key count")? as usize;
        if n == 0 || n > MAX_BATCH {
            return Err(malformed(format!("{n} keys in a batch (1 to {MAX_BATCH})")));
        }
        let raw = self.take(n * 8, "keys")?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect())
    }
    fn end(&self, what: &str) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{what}: {} bytes left over",
                self.b.len()
            )))
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_keys(out: &mut Vec<u8>, keys: &[u64]) {
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for k in keys {
        out.extend_from_slice(&k.to_le_bytes());
    }
}

impl Message {
    /// This message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello { .. } => Kind::Hello,
            Message::Welcome { .. } => Kind::Welcome,
            Message::Store { .. } => Kind::Store,
            Message::Fetch { .. } => Kind::Fetch,
            Message::Pages { .. } => Kind::Pages,
            Message::Discard { .. } => Kind::Discard,
            Message::Done => Kind::Done,
            Message::Status { .. } => Kind::Status,
            Message::StatusReply { .. } => Kind::StatusReply,
            Message::Error { .. } => Kind::Error,
            Message::Bye { .. } => Kind::Bye,
        }
    }

    /// Appends the payload of this message to `out`.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello {
                token,
                name,
                attach,
            } => {
                put_bytes(out, token);
                put_bytes(out, name.as_bytes());
                match attach {
                    Attach::New => out.push(0),
                    Attach::Join { session, secret } | Attach::Clone { session, secret } => {
                        out.push(if matches!(attach, Attach::Join { .. }) {
                            1
                        } else {
                            2
                        });
                        out.extend_from_slice(&session.to_le_bytes());
                        out.extend_from_slice(&secret.to_le_bytes());
                    }
                }
            }
            Message::Welcome {
                session,
                secret,
                capacity,
                used,
            } => {
                for v in [session, secret, capacity, used] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Message::Store { keys, data } => {
                put_keys(out, keys);
                out.extend_from_slice(data);
            }
            Message::Fetch { keys } | Message::Discard { keys } => put_keys(out, keys),
            Message::Pages { data } => out.extend_from_slice(data),
            Message::Done => {}
            Message::Status { token } => put_bytes(out, token),
            Message::StatusReply { json } => out.extend_from_slice(json.as_bytes()),
            Message::Error { code, message } => {
                out.extend_from_slice(&(*code as u16).to_le_bytes());
                put_bytes(out, message.as_bytes());
            }
            Message::Bye { free } => out.push(*free as u8),
        }
    }

    /// The whole frame for this message with request id `id`.
    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN];
        self.encode_payload(&mut out);
        let len = (out.len() - HEADER_LEN) as u32;
        let mut h = Header {
            kind: self.kind(),
            id,
            len,
            crc: 0,
        };
        h.crc = h.compute_crc(&[&out[HEADER_LEN..]]);
        out[..HEADER_LEN].copy_from_slice(&h.encode());
        out
    }

    /// Decodes the payload of a frame whose header is `h` (CRC already checked).
    pub fn decode(h: &Header, p: &[u8]) -> Result<Message, WireError> {
        if p.len() != h.len as usize {
            return Err(malformed(format!(
                "payload of {} bytes, header says {}",
                p.len(),
                h.len
            )));
        }
        let mut c = Cursor { b: p };
        let m = match h.kind {
            Kind::Hello => {
                let token = c.bytes("token")?;
                let name = c.text("name")?;
                let attach = match c.u8("attach")? {
                    0 => Attach::New,
                    a @ (1 | 2) => {
                        let session = c.u64("session")?;
                        let secret = c.u64("secret")?;
                        if a == 1 {
                            Attach::Join { session, secret }
                        } else {
                            Attach::Clone { session, secret }
                        }
                    }
                    a => return Err(malformed(format!("unknown attach mode {a}"))),
                };
                Message::Hello {
                    token,
                    name,
                    attach,
                }
            }
            Kind::Welcome => Message::Welcome {
                session: c.u64("session")?,
                secret: c.u64("secret")?,
                capacity: c.u64("capacity")?,
                used: c.u64("used")?,
            },
            Kind::Store => {
                let keys = c.keys()?;
                let data = c.take(keys.len() * PAGE, "pages")?.to_vec();
                Message::Store { keys, data }
            }
            Kind::Fetch => Message::Fetch { keys: c.keys()? },
            Kind::Discard => Message::Discard { keys: c.keys()? },
            Kind::Pages => {
                if !p.len().is_multiple_of(PAGE) || p.len() > MAX_BATCH * PAGE {
                    return Err(malformed(format!(
                        "{} bytes of pages is not a whole number of pages",
                        p.len()
                    )));
                }
                c.b = &[];
                Message::Pages { data: p.to_vec() }
            }
            Kind::Done => Message::Done,
            Kind::Status => Message::Status {
                token: c.bytes("token")?,
            },
            Kind::StatusReply => {
                let json =
                    String::from_utf8(p.to_vec()).map_err(|_| malformed("status: not UTF-8"))?;
                c.b = &[];
                Message::StatusReply { json }
            }
            Kind::Error => Message::Error {
                code: {
                    let code = c.u16("code")?;
                    Code::from_u16(code)
                        .ok_or_else(|| malformed(format!("unknown error code {code}")))?
                },
                message: c.text("message")?,
            },
            Kind::Bye => Message::Bye {
                free: match c.u8("free")? {
                    0 => false,
                    1 => true,
                    f => return Err(malformed(format!("bye: free is {f}, not 0 or 1"))),
                },
            },
        };
        c.end(&format!("{:?}", h.kind))?;
        Ok(m)
    }
}

/// Reads exactly `buf.len()` bytes; a clean end of stream before the first byte is
/// `Ok(false)` when `eof_ok`.
fn read_full(r: &mut impl Read, buf: &mut [u8], eof_ok: bool) -> Result<bool, WireError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && eof_ok => return Ok(false),
            Ok(0) => {
                return Err(WireError::Truncated {
                    got,
                    want: buf.len(),
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Reads one whole frame: `Ok(None)` at a clean end of stream. The CRC is checked
/// before anything is decoded.
pub fn read_message(r: &mut impl Read) -> Result<Option<(u64, Message)>, WireError> {
    let mut hb = [0u8; HEADER_LEN];
    if !read_full(r, &mut hb, true)? {
        return Ok(None);
    }
    let h = Header::decode(&hb)?;
    let mut p = vec![0u8; h.len as usize];
    read_full(r, &mut p, false)?;
    h.check(&[&p])?;
    Ok(Some((h.id, Message::decode(&h, &p)?)))
}

/// Writes one frame.
pub fn write_message(w: &mut impl Write, id: u64, m: &Message) -> Result<(), WireError> {
    w.write_all(&m.encode(id))?;
    Ok(())
}

/// Decodes a whole frame held in `b` (for the fuzz target and tests): header, CRC, then
/// payload; trailing bytes are an error.
pub fn decode_frame(b: &[u8]) -> Result<(u64, Message), WireError> {
    let Some(hb) = b.get(..HEADER_LEN) else {
        return Err(WireError::Truncated {
            got: b.len(),
            want: HEADER_LEN,
        });
    };
    let h = Header::decode(hb.try_into().expect("24 bytes"))?;
    let p = &b[HEADER_LEN..];
    if p.len() < h.len as usize {
        return Err(WireError::Truncated {
            got: b.len(),
            want: HEADER_LEN + h.len as usize,
        });
    }
    if p.len() > h.len as usize {
        return Err(malformed("bytes after the frame"));
    }
    h.check(&[p])?;
    Ok((h.id, Message::decode(&h, p)?))
}

/// What the fuzz target and its corpus replay check on untrusted bytes `b`: decoding a
/// frame never panics; a frame that decodes encodes back to exactly `b`; and reading `b`
/// as a stream of frames never panics either.
pub fn check_untrusted(b: &[u8]) {
    if let Ok((id, m)) = decode_frame(b) {
        assert_eq!(
            m.encode(id),
            b,
            "a decoded frame must encode back to its bytes"
        );
    }
    let mut r = b;
    while let Ok(Some(_)) = read_message(&mut r) {}
    // Every kind's payload decoder on the raw bytes, as if a header had vouched for them.
    for k in 1..=11u8 {
        if let Some(kind) = Kind::from_u8(k) {
            let h = Header {
                kind,
                id: 0,
                len: b.len() as u32,
                crc: 0,
            };
            let _ = Message::decode(&h, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                token: b"s3cret".to_vec(),
                name: "redis-server[42]".into(),
                attach: Attach::New,
            },
            Message::Hello {
                token: vec![],
                name: String::new(),
                attach: Attach::Clone {
                    session: 7,
                    secret: 99,
                },
            },
            Message::Welcome {
                session: 1,
                secret: 2,
                capacity: 3 << 30,
                used: 4096,
            },
            Message::Store {
                keys: vec![1, 2],
                data: (0..2 * PAGE).map(|i| i as u8).collect(),
            },
            Message::Fetch { keys: vec![5] },
            Message::Pages {
                data: vec![7; PAGE],
            },
            Message::Discard { keys: vec![1, 9] },
            Message::Done,
            Message::Status {
                token: b"t".to_vec(),
            },
            Message::StatusReply {
                json: "{\"clients\":1}".into(),
            },
            Message::Error {
                code: Code::Full,
                message: "full".into(),
            },
            Message::Bye { free: true },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let f = m.encode(42);
            assert_eq!(decode_frame(&f).unwrap(), (42, m.clone()));
            let mut r = &f[..];
            assert_eq!(read_message(&mut r).unwrap(), Some((42, m)));
            assert_eq!(read_message(&mut r).unwrap(), None, "clean end of stream");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_caught() {
        for m in samples() {
            let f = m.encode(1);
            for i in 0..f.len() {
                let mut g = f.clone();
                g[i] ^= 0x10;
                assert!(
                    decode_frame(&g).is_err(),
                    "{m:?}: byte {i} flipped went through"
                );
            }
        }
    }

    #[test]
    fn truncation_is_reported() {
        let f = Message::Fetch {
            keys: vec![1, 2, 3],
        }
        .encode(1);
        for n in 1..f.len() {
            let mut r = &f[..n];
            assert!(
                matches!(read_message(&mut r), Err(WireError::Truncated { .. })),
                "cut at {n}"
            );
        }
    }

    #[test]
    fn another_version_is_named() {
        let mut f = Message::Done.encode(1);
        f[4] = 9;
        match decode_frame(&f) {
            Err(WireError::Version { theirs: 9, ours }) => assert_eq!(ours, VERSION),
            other => panic!("{other:?}"),
        }
        let mut g = Message::Done.encode(1);
        g[0] = b'G';
        assert!(matches!(decode_frame(&g), Err(WireError::Magic(_))));
    }

    #[test]
    fn batches_are_bounded() {
        let keys: Vec<u64> = (0..MAX_BATCH as u64 + 1).collect();
        let f = Message::Fetch { keys }.encode(1);
        assert!(matches!(decode_frame(&f), Err(WireError::Malformed(_))));
        let f = Message::Fetch { keys: vec![] }.encode(1);
        assert!(matches!(decode_frame(&f), Err(WireError::Malformed(_))));
    }

    /// Replays the fuzz corpus (fuzz/corpus/wire_decode), so every input the fuzzer kept
    /// is checked on every CI run, without cargo-fuzz or a nightly toolchain.
    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire_decode");
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the fuzz corpus {} is missing: {e}", dir.display()));
        let mut n = 0;
        for e in entries {
            let path = e.unwrap().path();
            let b = std::fs::read(&path).unwrap();
            check_untrusted(&b);
            n += 1;
        }
        assert!(
            n >= samples().len(),
            "only {n} corpus inputs in {}",
            dir.display()
        );
    }

    /// Writes the seed inputs (one encoded frame per message kind) into the corpus:
    /// `FARMEM_WRITE_SEEDS=1 cargo test -p farmem-wire write_seeds`.
    #[test]
    fn write_seeds() {
        if std::env::var_os("FARMEM_WRITE_SEEDS").is_none() {
            return;
        }
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire_decode");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, m) in samples().iter().enumerate() {
            std::fs::write(
                dir.join(format!("seed-{i:02}-{:?}", m.kind())),
                m.encode(i as u64),
            )
            .unwrap();
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_frame(&b);
            // With a valid header in front, the payload decoder sees them too.
            for k in 1..=11u8 {
                let h = Header { kind: Kind::from_u8(k).unwrap(), id: 0, len: b.len() as u32, crc: 0 };
                let _ = Message::decode(&h, &b);
            }
        }
    }
}
