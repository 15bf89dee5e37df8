//! One connection: reads a frame, answers it, in order, until the client leaves or sends
//! something the node cannot accept.
//!
//! ```text
//!   (start) --Hello ok--> attached --Bye--> Done, closed (session left: freed or kept)
//!      |  \--Status--> (start)    |  \--Store/Fetch/Discard/Status--> attached
//!      |                          |
//!      +--bad frame, wrong token, unknown session, anything else--> Error, closed
//! ```
//!
//! When the node stops, each connection answers what it has read, then sends
//! `Error { ShuttingDown }` (request id 0) and closes.
//!
//! A frame is applied only once all of it has arrived and its CRC matched. A client that
//! vanishes leaves its session like one that closed: the session is kept for the grace
//! period (see `store.rs`).

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use farmem_wire::{Attach, Code, HEADER_LEN, Header, Kind, Message, PAGE, VERSION, WireError};

use crate::Shared;
use crate::store::{AttachError, Missing, Session};

/// What to do after a request.
enum Next {
    Go,
    Close,
}

struct Conn<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    session: Option<Arc<Session>>,
    /// Reused for Pages replies.
    out: Vec<u8>,
}

/// Serves `stream` until it ends; leaves the connection's session (if any) on the way out.
pub(crate) fn serve(shared: &Shared, stream: TcpStream, peer: SocketAddr) {
    let mut r = match stream.try_clone() {
        Ok(s) => BufReader::with_capacity(64 << 10, s),
        Err(_) => return,
    };
    let mut w = &stream;
    let mut c = Conn {
        shared,
        peer,
        session: None,
        out: Vec::new(),
    };
    loop {
        let (id, msg) = match read_frame(&mut r) {
            Ok(Some(f)) => f,
            // The node stopping shut the connection down for reading.
            Ok(None) | Err(_) if shared.stopping() => {
                let msg = error(
                    Code::ShuttingDown,
                    format!("memory node {} is shutting down", shared.addr),
                );
                let _ = reply(&mut w, 0, &msg);
                break;
            }
            Ok(None) => break,
            Err((id, e)) => {
                c.bad_frame(&mut w, id, e);
                break;
            }
        };
        match c.handle(&mut w, id, msg) {
            Ok(Next::Go) => {}
            Ok(Next::Close) | Err(_) => break,
        }
    }
    if let Some(s) = c.session.take() {
        c.leave(&s, false);
    }
}

/// Fills `buf`; `Ok(false)` on a clean end of stream before its first byte when
/// `eof_ok`.
fn fill(r: &mut impl Read, buf: &mut [u8], eof_ok: bool) -> Result<bool, WireError> {
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

/// Reads one frame; on an error, also the request id the header carried (0 if none), to
/// answer it with. Unlike [`farmem_wire::read_message`], the id of a frame from another
/// protocol version is kept.
fn read_frame(r: &mut impl Read) -> Result<Option<(u64, Message)>, (u64, WireError)> {
    let mut hb = [0u8; HEADER_LEN];
    if !fill(r, &mut hb, true).map_err(|e| (0, e))? {
        return Ok(None);
    }
    let id = u64::from_le_bytes(hb[8..16].try_into().expect("8 bytes"));
    let h = Header::decode(&hb).map_err(|e| (id, e))?;
    let mut p = vec![0u8; h.len as usize];
    fill(r, &mut p, false).map_err(|e| {
        let e = match e {
            WireError::Truncated { got, want } => WireError::Truncated {
                got: got + HEADER_LEN,
                want: want + HEADER_LEN,
            },
            e => e,
        };
        (id, e)
    })?;
    h.check(&[&p]).map_err(|e| (id, e))?;
    let m = Message::decode(&h, &p).map_err(|e| (id, e))?;
    Ok(Some((id, m)))
}

/// A client's name as the node shows it: at most 64 characters, control characters
/// (a newline that would forge a log line) replaced.
fn printable(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn error(code: Code, message: String) -> Message {
    Message::Error { code, message }
}

fn reply(w: &mut impl Write, id: u64, m: &Message) -> io::Result<()> {
    w.write_all(&m.encode(id))
}

impl Conn<'_> {
    /// Answers a frame the node cannot accept, and counts and logs it. The caller then
    /// drops the connection.
    fn bad_frame(&mut self, w: &mut impl Write, id: u64, e: WireError) {
        let msg = match &e {
            // The socket failed (reset, timed out): nobody to answer.
            WireError::Io(_) => return,
            WireError::Version { theirs, .. } => error(
                Code::Version,
                format!(
                    "this node speaks protocol version {VERSION}, the client {theirs}: run the same farmem release on both sides"
                ),
            ),
            WireError::Magic(_) => error(
                Code::Protocol,
                format!(
                    "not a farmem frame: {} is a farmem memory node; the connection is closed",
                    self.shared.addr
                ),
            ),
            WireError::Checksum { .. } | WireError::Malformed(_) | WireError::Truncated { .. } => {
                error(
                    Code::Protocol,
                    format!("{e}: the frame was not applied, and the connection is closed"),
                )
            }
        };
        self.shared.counters.dropped.fetch_add(1, Relaxed);
        self.shared.log(format_args!("dropped {}: {e}", self.who()));
        let _ = reply(w, id, &msg);
    }

    /// Refuses a well-formed frame that makes no sense here, and closes.
    fn protocol(&self, w: &mut impl Write, id: u64, what: String) -> io::Result<Next> {
        self.shared.counters.dropped.fetch_add(1, Relaxed);
        self.shared
            .log(format_args!("dropped {}: {what}", self.who()));
        reply(
            w,
            id,
            &error(Code::Protocol, format!("{what}; the connection is closed")),
        )?;
        Ok(Next::Close)
    }

    fn who(&self) -> String {
        match &self.session {
            Some(s) => format!("{} (session {}, {})", self.peer, s.id, s.name),
            None => self.peer.to_string(),
        }
    }

    /// The connection leaves `s`: the session is freed if this was its last connection
    /// and freeing was asked for, else it waits out its grace period.
    fn leave(&self, s: &Arc<Session>, free: bool) {
        let st = &self.shared.store;
        if free {
            st.free_on_last(s);
        }
        let bytes = s.pages() * PAGE as u64;
        let zero_grace = self.shared.config.grace.is_zero();
        if st.detach_with(s, zero_grace) {
            self.shared.log(format_args!(
                "session {} ({}) freed ({})",
                s.id,
                s.name,
                crate::human(bytes)
            ));
        }
    }

    fn handle(&mut self, w: &mut impl Write, id: u64, m: Message) -> io::Result<Next> {
        let sh = self.shared;
        let c = &sh.counters;
        match m {
            Message::Status { token } => {
                c.request();
                if !sh.token_ok(&token) {
                    return self.bad_token(w, id, "a status request");
                }
                reply(
                    w,
                    id,
                    &Message::StatusReply {
                        json: sh.status_json(),
                    },
                )?;
                Ok(Next::Go)
            }
            Message::Hello {
                token,
                name,
                attach,
            } => {
                if self.session.is_some() {
                    return self.protocol(w, id, "a second Hello on one connection".into());
                }
                self.hello(w, id, &token, name, attach)
            }
            Message::Bye { free } => {
                if let Some(s) = self.session.take() {
                    self.leave(&s, free);
                }
                reply(w, id, &Message::Done)?;
                Ok(Next::Close)
            }
            Message::Store { .. } | Message::Fetch { .. } | Message::Discard { .. }
                if self.session.is_none() =>
            {
                self.protocol(w, id, format!("{:?} before Hello", m.kind()))
            }
            Message::Store { keys, data } => {
                c.request();
                c.stores.fetch_add(1, Relaxed);
                let s = self.session.as_ref().expect("checked above");
                match s.store(&sh.store.cap, &keys, &data) {
                    Ok(()) => {
                        c.pages_in.fetch_add(keys.len() as u64, Relaxed);
                        reply(w, id, &Message::Done)?;
                    }
                    Err(full) => {
                        c.refused.fetch_add(1, Relaxed);
                        sh.log(format_args!(
                            "full: refused {} pages from {}",
                            keys.len(),
                            self.who()
                        ));
                        reply(w, id, &error(Code::Full, sh.full_message(full)))?;
                    }
                }
                Ok(Next::Go)
            }
            Message::Fetch { keys } => {
                c.request();
                c.fetches.fetch_add(1, Relaxed);
                let s = self.session.as_ref().expect("checked above");
                let out = &mut self.out;
                out.clear();
                out.resize(HEADER_LEN, 0);
                match s.fetch(&keys, out) {
                    Ok(()) => {
                        c.pages_out.fetch_add(keys.len() as u64, Relaxed);
                        // The frame is built in place: the pages are copied once.
                        let mut h = Header {
                            kind: Kind::Pages,
                            id,
                            len: (out.len() - HEADER_LEN) as u32,
                            crc: 0,
                        };
                        h.crc = h.compute_crc(&[&out[HEADER_LEN..]]);
                        out[..HEADER_LEN].copy_from_slice(&h.encode());
                        w.write_all(out)?;
                    }
                    Err(Missing(k)) => {
                        c.refused.fetch_add(1, Relaxed);
                        let msg = format!(
                            "page {k} of session {} is not on memory node {} (never stored, or discarded)",
                            s.id, sh.addr
                        );
                        reply(w, id, &error(Code::Missing, msg))?;
                    }
                }
                if out.capacity() > (4 << 20) {
                    *out = Vec::new();
                }
                Ok(Next::Go)
            }
            Message::Discard { keys } => {
                c.request();
                c.discards.fetch_add(1, Relaxed);
                let s = self.session.as_ref().expect("checked above");
                s.discard(&sh.store.cap, &keys);
                reply(w, id, &Message::Done)?;
                Ok(Next::Go)
            }
            other => self.protocol(
                w,
                id,
                format!("the node takes no {:?} from a client", other.kind()),
            ),
        }
    }

    fn bad_token(&self, w: &mut impl Write, id: u64, what: &str) -> io::Result<Next> {
        let sh = self.shared;
        sh.counters.dropped.fetch_add(1, Relaxed);
        sh.log(format_args!("wrong token in {what} from {}", self.peer));
        let msg = format!(
            "wrong token: memory node {} was started with another token",
            sh.addr
        );
        reply(w, id, &error(Code::BadToken, msg))?;
        Ok(Next::Close)
    }

    fn hello(
        &mut self,
        w: &mut impl Write,
        id: u64,
        token: &[u8],
        name: String,
        attach: Attach,
    ) -> io::Result<Next> {
        let sh = self.shared;
        if !sh.token_ok(token) {
            return self.bad_token(w, id, "a Hello");
        }
        let name = printable(&name);
        let st = &sh.store;
        let made = match &attach {
            Attach::New => st.create(&name),
            Attach::Join { session, secret } => st.join(*session, *secret),
            Attach::Clone { session, secret } => st.clone_session(*session, *secret, &name),
        };
        let s = match made {
            Ok(s) => s,
            Err(e) => {
                let msg = match e {
                    AttachError::NoSession(n) => error(
                        Code::NoSession,
                        format!(
                            "no session {n} with that secret on memory node {}: it was freed, its client was away longer than the {:.0} s grace period, or the node restarted",
                            sh.addr,
                            sh.config.grace.as_secs_f64()
                        ),
                    ),
                    AttachError::Full(f) => {
                        sh.counters.refused.fetch_add(1, Relaxed);
                        error(Code::Full, sh.full_message(f))
                    }
                    AttachError::Random(r) => error(
                        Code::Other,
                        format!(
                            "memory node {} has no randomness for a secret: {r}",
                            sh.addr
                        ),
                    ),
                };
                if let Message::Error { message, .. } = &msg {
                    sh.log(format_args!("refused {} ({name}): {message}", self.peer));
                }
                reply(w, id, &msg)?;
                return Ok(Next::Close);
            }
        };
        match attach {
            Attach::New => sh.log(format_args!(
                "session {} for {name} from {}",
                s.id, self.peer
            )),
            Attach::Clone { session, .. } => sh.log(format_args!(
                "session {} for {name} from {}: a copy of session {session} ({} pages)",
                s.id,
                self.peer,
                s.pages()
            )),
            Attach::Join { .. } => {}
        }
        let welcome = Message::Welcome {
            session: s.id,
            secret: s.secret,
            capacity: st.cap.total,
            used: st.cap.used(),
        };
        self.session = Some(s);
        reply(w, id, &welcome)?;
        Ok(Next::Go)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_printable() {
        assert_eq!(
            printable("redis[42]\nfarmem serve: forged"),
            "redis[42]?farmem serve: forged"
        );
        assert_eq!(printable(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn a_version_mismatch_keeps_the_request_id() {
        let mut f = Message::Done.encode(77);
        f[4] = 9;
        let (id, e) = read_frame(&mut &f[..]).unwrap_err();
        assert_eq!(id, 77);
        assert!(matches!(e, WireError::Version { theirs: 9, .. }));
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
    }
}
