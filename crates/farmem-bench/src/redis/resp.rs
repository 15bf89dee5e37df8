//! RESP2, the Redis wire protocol: requests are arrays of bulk strings, replies are one of
//! five types.
//!
//! ```text
//! +OK\r\n                       simple string
//! -ERR unknown command\r\n      error
//! :42\r\n                       integer
//! $5\r\nhello\r\n               bulk string ($-1\r\n is nil)
//! *2\r\n$1\r\na\r\n:1\r\n       array (*-1\r\n is nil)
//! ```
//!
//! [`parse`] reads one reply from the front of a buffer without copying: it returns
//! `Ok(None)` while the buffer holds only part of a reply (read more and call it again),
//! and the reply with the number of bytes it took once it is complete. Replies borrow the
//! buffer ([`ValueRef`]), so a client can check a 128 KiB value where it landed;
//! [`ValueRef::to_owned`] makes an owned [`Value`].

use std::fmt;

/// The longest bulk string accepted (Redis's own `proto-max-bulk-len` default).
pub const MAX_BULK: usize = 512 << 20;
/// The most elements an array may announce.
pub const MAX_ARRAY: usize = 1 << 24;
/// How deeply arrays may nest.
pub const MAX_DEPTH: usize = 8;
/// The longest header line (`$123\r\n`, `+OK\r\n`, `-ERR ...\r\n`) accepted.
pub const MAX_LINE: usize = 64 << 10;

/// A reply that breaks the protocol. The connection cannot be used after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The first byte of a reply is not one of `+ - : $ *`.
    #[error("unknown reply type byte {byte:#04x} at offset {offset}")]
    BadType {
        /// The byte found.
        byte: u8,
        /// Where, from the start of the reply.
        offset: usize,
    },
    /// A length or integer is not a number.
    #[error("malformed number {text:?} at offset {offset}")]
    BadNumber {
        /// The text found.
        text: String,
        /// Where, from the start of the reply.
        offset: usize,
    },
    /// A length is negative (other than -1, nil) or too large.
    #[error("bad length {len} at offset {offset} (accepted: -1 for nil, or 0..={max})")]
    BadLength {
        /// The length announced.
        len: i64,
        /// Where, from the start of the reply.
        offset: usize,
        /// The largest length accepted here.
        max: usize,
    },
    /// A line does not end in `\r\n`, or a bulk string is not followed by one.
    #[error("missing CRLF at offset {offset}")]
    MissingCrlf {
        /// Where, from the start of the reply.
        offset: usize,
    },
    /// A header line is longer than [`MAX_LINE`].
    #[error("header line longer than {MAX_LINE} bytes at offset {offset}")]
    LineTooLong {
        /// Where, from the start of the reply.
        offset: usize,
    },
    /// Arrays nest deeper than [`MAX_DEPTH`].
    #[error("arrays nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// A reply, borrowing the buffer it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueRef<'a> {
    /// `+...`: a status such as `OK` or `PONG`.
    Simple(&'a [u8]),
    /// `-...`: an error message, such as `ERR unknown command` or `LOADING ...`.
    Error(&'a [u8]),
    /// `:...`: a signed integer.
    Integer(i64),
    /// `$n`: a binary-safe string.
    Bulk(&'a [u8]),
    /// `$-1` or `*-1`: no value (GET of a missing key).
    Nil,
    /// `*n`: a list of replies.
    Array(Vec<ValueRef<'a>>),
}

/// An owned reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+...`: a status such as `OK` or `PONG`.
    Simple(String),
    /// `-...`: an error message.
    Error(String),
    /// `:...`: a signed integer.
    Integer(i64),
    /// `$n`: a binary-safe string.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`: no value.
    Nil,
    /// `*n`: a list of replies.
    Array(Vec<Value>),
}

impl ValueRef<'_> {
    /// An owned copy (status and error texts decoded lossily as UTF-8).
    pub fn to_owned(&self) -> Value {
        match self {
            ValueRef::Simple(s) => Value::Simple(String::from_utf8_lossy(s).into_owned()),
            ValueRef::Error(s) => Value::Error(String::from_utf8_lossy(s).into_owned()),
            ValueRef::Integer(i) => Value::Integer(*i),
            ValueRef::Bulk(b) => Value::Bulk(b.to_vec()),
            ValueRef::Nil => Value::Nil,
            ValueRef::Array(a) => Value::Array(a.iter().map(ValueRef::to_owned).collect()),
        }
    }

    /// A short description for error messages: the type and a prefix of the contents.
    pub fn describe(&self) -> String {
        self.to_owned().to_string()
    }
}

impl fmt::Display for Value {
    /// Short, for error messages: long strings and arrays are abbreviated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Simple(s) => write!(f, "+{}", abbreviate(s.as_bytes(), 60)),
            Value::Error(s) => write!(f, "-{}", abbreviate(s.as_bytes(), 200)),
            Value::Integer(i) => write!(f, ":{i}"),
            Value::Bulk(b) => write!(f, "bulk string of {} bytes {}", b.len(), abbreviate(b, 24)),
            Value::Nil => f.write_str("nil"),
            Value::Array(a) => {
                write!(f, "array of {}", a.len())?;
                if let Some(first) = a.first() {
                    write!(f, " (first: {first})")?;
                }
                Ok(())
            }
        }
    }
}

/// `bytes` as a quoted, escaped string of at most `max` bytes (`"abc"...`).
pub fn abbreviate(bytes: &[u8], max: usize) -> String {
    let shown = &bytes[..bytes.len().min(max)];
    let mut s = format!("{:?}", String::from_utf8_lossy(shown));
    if bytes.len() > max {
        s.push_str("...");
    }
    s
}

/// Parses one reply from the start of `buf`: `Ok(None)` if `buf` holds only part of one,
/// `Ok(Some((reply, bytes used)))` once it is complete. Never reads past the reply.
pub fn parse(buf: &[u8]) -> Result<Option<(ValueRef<'_>, usize)>, ProtocolError> {
    parse_at(buf, 0, 0)
}

/// The reply starting at `pos`, and where it ends.
fn parse_at(
    buf: &[u8],
    pos: usize,
    depth: usize,
) -> Result<Option<(ValueRef<'_>, usize)>, ProtocolError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((line, next)) = line_at(buf, pos + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((ValueRef::Simple(line), next))),
        b'-' => Ok(Some((ValueRef::Error(line), next))),
        b':' => Ok(Some((ValueRef::Integer(number(line, pos + 1)?), next))),
        b'$' => {
            let len = number(line, pos + 1)?;
            if len == -1 {
                return Ok(Some((ValueRef::Nil, next)));
            }
            let n = checked_len(len, MAX_BULK, pos + 1)?;
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::MissingCrlf { offset: end });
            }
            Ok(Some((ValueRef::Bulk(&buf[next..end]), end + 2)))
        }
        b'*' => {
            let len = number(line, pos + 1)?;
            if len == -1 {
                return Ok(Some((ValueRef::Nil, next)));
            }
            let n = checked_len(len, MAX_ARRAY, pos + 1)?;
            if depth >= MAX_DEPTH {
                return Err(ProtocolError::TooDeep);
            }
            // Do not trust the announced count for the allocation: every element takes at
            // least 3 bytes, so what is buffered bounds what can be complete.
            let mut items = Vec::with_capacity(n.min((buf.len() - next) / 3 + 1));
            let mut at = next;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((v, end)) => {
                        items.push(v);
                        at = end;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((ValueRef::Array(items), at)))
        }
        byte => Err(ProtocolError::BadType { byte, offset: pos }),
    }
}

/// The line starting at `start` (without its CRLF) and the offset after the CRLF, or
/// `None` if the CRLF has not arrived yet.
fn line_at(buf: &[u8], start: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &buf[start.min(buf.len())..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) => {
            if i == 0 || rest[i - 1] != b'\r' {
                return Err(ProtocolError::MissingCrlf { offset: start + i });
            }
            Ok(Some((&rest[..i - 1], start + i + 1)))
        }
        None if rest.len() > MAX_LINE => Err(ProtocolError::LineTooLong { offset: start }),
        None => Ok(None),
    }
}

fn number(text: &[u8], offset: usize) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProtocolError::BadNumber {
            text: String::from_utf8_lossy(text).into_owned(),
            offset,
        })
}

fn checked_len(len: i64, max: usize, offset: usize) -> Result<usize, ProtocolError> {
    usize::try_from(len)
        .ok()
        .filter(|&n| n <= max)
        .ok_or(ProtocolError::BadLength { len, offset, max })
}

/// Appends a request (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for a in args {
        header(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full(buf: &[u8]) -> (Value, usize) {
        let (v, n) = parse(buf).unwrap().expect("complete");
        (v.to_owned(), n)
    }

    /// Every strict prefix of a complete reply is "not yet", never an error or a value.
    fn assert_prefixes_incomplete(buf: &[u8]) {
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn simple_error_integer() {
        assert_eq!(full(b"+OK\r\n"), (Value::Simple("OK".into()), 5));
        assert_eq!(
            full(b"-ERR unknown command 'FOO'\r\n"),
            (Value::Error("ERR unknown command 'FOO'".into()), 28)
        );
        assert_eq!(full(b":0\r\n"), (Value::Integer(0), 4));
        assert_eq!(full(b":-42\r\n"), (Value::Integer(-42), 6));
        assert_eq!(
            full(b":9223372036854775807\r\n").0,
            Value::Integer(i64::MAX)
        );
        assert_eq!(full(b"+\r\n"), (Value::Simple(String::new()), 3));
    }

    #[test]
    fn bulk_strings_are_binary_safe() {
        assert_eq!(
            full(b"$5\r\nhello\r\n"),
            (Value::Bulk(b"hello".to_vec()), 11)
        );
        assert_eq!(full(b"$0\r\n\r\n"), (Value::Bulk(Vec::new()), 6));
        // CR, LF and NUL inside the payload are data, not framing.
        let buf = b"$6\r\na\r\nb\0c\r\n";
        assert_eq!(full(buf), (Value::Bulk(b"a\r\nb\0c".to_vec()), buf.len()));
        let (v, n) = parse(b"$3\r\nabc\r\n+OK\r\n").unwrap().unwrap();
        assert_eq!((v, n), (ValueRef::Bulk(b"abc"), 9));
    }

    #[test]
    fn nil_bulk_and_nil_array() {
        assert_eq!(full(b"$-1\r\n"), (Value::Nil, 5));
        assert_eq!(full(b"*-1\r\n"), (Value::Nil, 5));
    }

    #[test]
    fn arrays_nested_and_empty() {
        assert_eq!(full(b"*0\r\n"), (Value::Array(vec![]), 4));
        let buf = b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n+x\r\n";
        assert_eq!(
            full(buf),
            (
                Value::Array(vec![
                    Value::Bulk(b"a".to_vec()),
                    Value::Array(vec![Value::Integer(1), Value::Nil]),
                    Value::Simple("x".into()),
                ]),
                buf.len()
            )
        );
        assert_prefixes_incomplete(buf);
    }

    #[test]
    fn partial_reads_wait_for_the_rest() {
        for buf in [
            &b"+PONG\r\n"[..],
            b"-LOADING Redis is loading the dataset in memory\r\n",
            b":1234\r\n",
            b"$10\r\n0123456789\r\n",
            b"$-1\r\n",
            b"*2\r\n$3\r\nabc\r\n$0\r\n\r\n",
        ] {
            assert_prefixes_incomplete(buf);
            assert_eq!(parse(buf).unwrap().unwrap().1, buf.len());
        }
        // A bulk string whose payload has arrived but not its CRLF is not complete.
        assert_eq!(parse(b"$3\r\nabc"), Ok(None));
        assert_eq!(parse(b"$3\r\nabc\r"), Ok(None));
    }

    #[test]
    fn pipelined_replies_parse_one_at_a_time() {
        let buf = b"+OK\r\n:7\r\n$2\r\nhi\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((v, n)) = parse(&buf[at..]).unwrap() {
            got.push(v.to_owned());
            at += n;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            got,
            vec![
                Value::Simple("OK".into()),
                Value::Integer(7),
                Value::Bulk(b"hi".to_vec())
            ]
        );
    }

    #[test]
    fn protocol_errors() {
        assert!(matches!(
            parse(b"!oops\r\n"),
            Err(ProtocolError::BadType { byte: b'!', .. })
        ));
        assert!(matches!(
            parse(b":12a\r\n"),
            Err(ProtocolError::BadNumber { .. })
        ));
        assert!(matches!(
            parse(b":+5\r\n"),
            Err(ProtocolError::BadNumber { .. })
        ));
        assert!(matches!(
            parse(b"$-2\r\n"),
            Err(ProtocolError::BadLength { len: -2, .. })
        ));
        assert!(matches!(
            parse(b"$999999999999\r\n"),
            Err(ProtocolError::BadLength { .. })
        ));
        assert!(matches!(
            parse(b"$3\r\nabcXY"),
            Err(ProtocolError::MissingCrlf { offset: 7 })
        ));
        assert!(matches!(
            parse(b"+OK\n"),
            Err(ProtocolError::MissingCrlf { .. })
        ));
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(matches!(
            parse(&long),
            Err(ProtocolError::LineTooLong { .. })
        ));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert_eq!(parse(deep.as_bytes()), Err(ProtocolError::TooDeep));
        // An error inside an array is found even though the array is incomplete.
        assert!(parse(b"*3\r\n:1\r\n?\r\n").is_err());
        let e = parse(b"$-2\r\n").unwrap_err().to_string();
        assert!(e.contains("bad length -2"), "{e}");
    }

    #[test]
    fn huge_announced_arrays_do_not_allocate_up_front() {
        assert_eq!(parse(b"*16000000\r\n:1\r\n"), Ok(None));
    }

    #[test]
    fn encoding() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n");
        out.clear();
        encode_command(&mut out, &[b"PING"]);
        assert_eq!(out, b"*1\r\n$4\r\nPING\r\n");
        out.clear();
        encode_command(&mut out, &[b""]);
        assert_eq!(out, b"*1\r\n$0\r\n\r\n");
    }

    #[test]
    fn display_abbreviates() {
        let v = Value::Bulk(vec![b'x'; 1000]);
        let s = v.to_string();
        assert!(
            s.starts_with("bulk string of 1000 bytes") && s.ends_with("..."),
            "{s}"
        );
        assert_eq!(Value::Nil.to_string(), "nil");
        assert_eq!(
            Value::Array(vec![Value::Integer(3)]).to_string(),
            "array of 1 (first: :3)"
        );
    }

    proptest! {
        /// A request encoding is itself a valid RESP array of bulk strings: parsing it
        /// gives the arguments back, whatever the bytes, and any split point is handled.
        #[test]
        fn encode_parse_roundtrip(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), cut in any::<prop::sample::Index>()) {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let mut buf = Vec::new();
            encode_command(&mut buf, &refs);
            let (v, n) = parse(&buf).unwrap().unwrap();
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(v.to_owned(), Value::Array(args.iter().cloned().map(Value::Bulk).collect()));
            let c = cut.index(buf.len());
            prop_assert_eq!(parse(&buf[..c]), Ok(None));
        }

        #[test]
        fn garbage_never_panics(buf in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&buf);
        }
    }
}
