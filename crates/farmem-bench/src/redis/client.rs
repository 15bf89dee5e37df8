//! A small blocking Redis client over one TCP connection: typed commands, pipelining
//! (queue N requests, flush once, read N replies), timeouts, and errors that say which
//! command failed against which server.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::RedisError;
use super::resp::{self, Value, ValueRef};

/// Bytes a read asks the kernel for at least (the buffer grows to fit larger replies).
const READ_CHUNK: usize = 128 << 10;

/// One connection to a Redis server.
///
/// Requests are queued with [`Client::queue`], sent with [`Client::flush`] and their replies
/// read in order with [`Client::read`] or [`Client::read_with`]; [`Client::cmd`] does the
/// three for one request. Every read and write gives up after the connection's timeout.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    wbuf: Vec<u8>,
    queued: usize,
}

impl Client {
    /// Connects to `addr`, giving up on connecting, and later on each read or write, after
    /// `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, RedisError> {
        let io = |source| RedisError::Io {
            what: "connect".into(),
            addr,
            source,
        };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        Ok(Self {
            stream,
            addr,
            timeout,
            rbuf: vec![0; READ_CHUNK],
            rpos: 0,
            rend: 0,
            wbuf: Vec::with_capacity(64 << 10),
            queued: 0,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the read and write timeout.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), RedisError> {
        let io = |source| RedisError::Io {
            what: "set the socket timeout".into(),
            addr: self.addr,
            source,
        };
        self.stream.set_read_timeout(Some(timeout)).map_err(io)?;
        self.stream.set_write_timeout(Some(timeout)).map_err(io)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Requests queued but not yet flushed.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Bytes queued but not yet flushed.
    pub fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    /// Queues one request (command name and arguments); nothing is sent until
    /// [`Client::flush`].
    pub fn queue(&mut self, args: &[&[u8]]) {
        resp::encode_command(&mut self.wbuf, args);
        self.queued += 1;
    }

    /// Sends everything queued. `what` names the requests in an error.
    pub fn flush(&mut self, what: &str) -> Result<(), RedisError> {
        let res = self.stream.write_all(&self.wbuf);
        self.wbuf.clear();
        self.queued = 0;
        res.map_err(|e| self.io_error(what, e))
    }

    /// Reads the next reply and hands it, still in the read buffer, to `f`. `what` names
    /// the request in an error (an error *reply* is not an error here: `f` sees it).
    pub fn read_with<R>(
        &mut self,
        what: &str,
        f: impl FnOnce(ValueRef<'_>) -> R,
    ) -> Result<R, RedisError> {
        loop {
            match resp::parse(&self.rbuf[self.rpos..self.rend]) {
                Ok(Some((v, n))) => {
                    let r = f(v);
                    self.rpos += n;
                    if self.rpos == self.rend {
                        self.rpos = 0;
                        self.rend = 0;
                    }
                    return Ok(r);
                }
                Ok(None) => self.fill(what)?,
                Err(source) => {
                    return Err(RedisError::Protocol {
                        what: what.into(),
                        addr: self.addr,
                        source,
                    });
                }
            }
        }
    }

    /// Reads the next reply as an owned value (error replies included).
    pub fn read(&mut self, what: &str) -> Result<Value, RedisError> {
        self.read_with(what, |v| v.to_owned())
    }

    /// Sends one request and reads its reply; an error reply becomes
    /// [`RedisError::Server`].
    pub fn cmd(&mut self, args: &[&[u8]]) -> Result<Value, RedisError> {
        if self.queued > 0 {
            return Err(RedisError::Usage(format!(
                "{} requests are queued but not flushed; flush and read them before {}",
                self.queued,
                describe(args)
            )));
        }
        self.queue(args);
        let what = describe(args);
        self.flush(&what)?;
        match self.read(&what)? {
            Value::Error(message) => Err(RedisError::Server { what, message }),
            v => Ok(v),
        }
    }

    /// Sends all `requests` at once, then reads their replies in order (error replies are
    /// returned as [`Value::Error`], one per failed request).
    pub fn pipeline(&mut self, requests: &[Vec<&[u8]>]) -> Result<Vec<Value>, RedisError> {
        for r in requests {
            self.queue(r);
        }
        let what = match requests.first() {
            Some(first) => format!("pipeline of {} ({} first)", requests.len(), describe(first)),
            None => return Ok(Vec::new()),
        };
        self.flush(&what)?;
        (0..requests.len()).map(|_| self.read(&what)).collect()
    }

    /// `PING`: expects `PONG`.
    pub fn ping(&mut self) -> Result<(), RedisError> {
        self.expect_simple(&[b"PING"], "PONG")
    }

    /// `SET key value`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), RedisError> {
        self.expect_simple(&[b"SET", key, value], "OK")
    }

    /// `GET key`: the value, or `None` if the key does not exist.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, RedisError> {
        match self.cmd(&[b"GET", key])? {
            Value::Bulk(b) => Ok(Some(b)),
            Value::Nil => Ok(None),
            got => Err(unexpected(&[b"GET", key], got, "a bulk string or nil")),
        }
    }

    /// `RPUSH key element...`: the list's length afterwards.
    pub fn rpush(&mut self, key: &[u8], elements: &[&[u8]]) -> Result<i64, RedisError> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(elements.len() + 2);
        args.push(b"RPUSH");
        args.push(key);
        args.extend_from_slice(elements);
        self.integer(&args)
    }

    /// `LRANGE key start stop`: the elements (none if the key does not exist).
    pub fn lrange(
        &mut self,
        key: &[u8],
        start: i64,
        stop: i64,
    ) -> Result<Vec<Vec<u8>>, RedisError> {
        let (start, stop) = (start.to_string(), stop.to_string());
        let args: [&[u8]; 4] = [b"LRANGE", key, start.as_bytes(), stop.as_bytes()];
        match self.cmd(&args)? {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::Bulk(b) => Ok(b),
                    other => Err(unexpected(&args, other, "an array of bulk strings")),
                })
                .collect(),
            got => Err(unexpected(&args, got, "an array")),
        }
    }

    /// `DEL key...`: how many existed.
    pub fn del(&mut self, keys: &[&[u8]]) -> Result<i64, RedisError> {
        let mut args: Vec<&[u8]> = vec![b"DEL"];
        args.extend_from_slice(keys);
        self.integer(&args)
    }

    /// `DBSIZE`: the number of keys.
    pub fn dbsize(&mut self) -> Result<u64, RedisError> {
        let n = self.integer(&[b"DBSIZE"])?;
        u64::try_from(n).map_err(|_| unexpected(&[b"DBSIZE"], Value::Integer(n), "a count"))
    }

    /// `BGSAVE`: starts a background save; returns the server's status text.
    pub fn bgsave(&mut self) -> Result<String, RedisError> {
        match self.cmd(&[b"BGSAVE"])? {
            Value::Simple(s) => Ok(s),
            got => Err(unexpected(&[b"BGSAVE"], got, "a status")),
        }
    }

    /// `INFO section`: the text, `key:value` lines under `# Section` headers.
    pub fn info(&mut self, section: &str) -> Result<String, RedisError> {
        let args: [&[u8]; 2] = [b"INFO", section.as_bytes()];
        match self.cmd(&args)? {
            Value::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            got => Err(unexpected(&args, got, "a bulk string")),
        }
    }

    /// `INFO section`, as a map of its `key:value` lines.
    pub fn info_map(
        &mut self,
        section: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, RedisError> {
        Ok(parse_info(&self.info(section)?))
    }

    /// `CONFIG SET parameter value`.
    pub fn config_set(&mut self, parameter: &str, value: &str) -> Result<(), RedisError> {
        self.expect_simple(
            &[b"CONFIG", b"SET", parameter.as_bytes(), value.as_bytes()],
            "OK",
        )
    }

    /// `SHUTDOWN NOSAVE`: the server exits without saving. Success is the server closing
    /// the connection; an error reply (e.g. a refused shutdown) is an error.
    pub fn shutdown_nosave(&mut self) -> Result<(), RedisError> {
        let args: [&[u8]; 2] = [b"SHUTDOWN", b"NOSAVE"];
        self.queue(&args);
        self.flush("SHUTDOWN NOSAVE")?;
        match self.read("SHUTDOWN NOSAVE") {
            Err(RedisError::Closed { .. }) => Ok(()),
            Err(RedisError::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
            Ok(Value::Error(message)) => Err(RedisError::Server {
                what: "SHUTDOWN NOSAVE".into(),
                message,
            }),
            Ok(got) => Err(unexpected(&args, got, "the connection to close")),
        }
    }

    fn integer(&mut self, args: &[&[u8]]) -> Result<i64, RedisError> {
        match self.cmd(args)? {
            Value::Integer(n) => Ok(n),
            got => Err(unexpected(args, got, "an integer")),
        }
    }

    fn expect_simple(&mut self, args: &[&[u8]], want: &'static str) -> Result<(), RedisError> {
        match self.cmd(args)? {
            Value::Simple(s) if s == want => Ok(()),
            got => Err(unexpected(args, got, want)),
        }
    }

    /// Reads more bytes into the buffer (compacting and growing it as needed).
    fn fill(&mut self, what: &str) -> Result<(), RedisError> {
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        if self.rbuf.len() - self.rend < READ_CHUNK {
            let len = (self.rbuf.len() * 2).max(self.rend + READ_CHUNK);
            self.rbuf.resize(len, 0);
        }
        loop {
            match self.stream.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => {
                    return Err(RedisError::Closed {
                        what: what.into(),
                        addr: self.addr,
                    });
                }
                Ok(n) => {
                    self.rend += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(what, e)),
            }
        }
    }

    fn io_error(&self, what: &str, source: io::Error) -> RedisError {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            RedisError::Timeout {
                what: what.into(),
                addr: self.addr,
                timeout: self.timeout,
            }
        } else {
            RedisError::Io {
                what: what.into(),
                addr: self.addr,
                source,
            }
        }
    }
}

/// `GET key`-style description of a request for messages: the command, its first
/// argument, and how many more there are.
pub fn describe(args: &[&[u8]]) -> String {
    let mut s = String::new();
    for (i, a) in args.iter().take(2).enumerate() {
        if i > 0 {
            s.push(' ');
        }
        if a.len() <= 40 && a.iter().all(|b| b.is_ascii_graphic()) {
            s.push_str(&String::from_utf8_lossy(a));
        } else {
            s.push_str(&format!("<{} bytes>", a.len()));
        }
    }
    if args.len() > 2 {
        s.push_str(&format!(" (+{} args)", args.len() - 2));
    }
    s
}

fn unexpected(args: &[&[u8]], got: Value, expected: &'static str) -> RedisError {
    RedisError::Unexpected {
        what: describe(args),
        got: got.to_string(),
        expected,
    }
}

/// `key:value` lines of an INFO reply; `#` headers and blank lines are skipped.
pub fn parse_info(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A fake server that reads one request and answers with `reply`, `chunk` bytes at a
    /// time, so the client sees partial reads.
    fn fake(reply: Vec<u8>, chunk: usize) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).unwrap();
            req.truncate(n);
            for c in reply.chunks(chunk) {
                s.write_all(c).unwrap();
                thread::sleep(Duration::from_micros(200));
            }
            req
        });
        (addr, h)
    }

    #[test]
    fn replies_split_across_reads_are_reassembled() {
        let value = vec![b'v'; 300_000];
        let mut reply = format!("${}\r\n", value.len()).into_bytes();
        reply.extend_from_slice(&value);
        reply.extend_from_slice(b"\r\n");
        let (addr, h) = fake(reply, 7001);
        let mut c = Client::connect(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(c.get(b"k").unwrap(), Some(value));
        assert_eq!(h.join().unwrap(), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn byte_at_a_time_pipeline() {
        let (addr, h) = fake(
            b"+OK\r\n$-1\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n:3\r\n".to_vec(),
            1,
        );
        let mut c = Client::connect(addr, Duration::from_secs(5)).unwrap();
        let got = c
            .pipeline(&[
                vec![&b"SET"[..], b"k", b"v"],
                vec![b"GET", b"missing"],
                vec![b"LRANGE", b"l", b"0", b"1"],
                vec![b"DBSIZE"],
            ])
            .unwrap();
        assert_eq!(
            got,
            vec![
                Value::Simple("OK".into()),
                Value::Nil,
                Value::Array(vec![Value::Bulk(b"a".to_vec()), Value::Bulk(b"b".to_vec())]),
                Value::Integer(3),
            ]
        );
        h.join().unwrap();
    }

    #[test]
    fn errors_name_the_command() {
        let (addr, h) = fake(b"-WRONGTYPE Operation against a key\r\n".to_vec(), 64);
        let mut c = Client::connect(addr, Duration::from_secs(5)).unwrap();
        let e = c.get(b"mylist").unwrap_err();
        assert!(matches!(e, RedisError::Server { .. }), "{e}");
        let s = e.to_string();
        assert!(s.contains("GET mylist") && s.contains("WRONGTYPE"), "{s}");
        h.join().unwrap();

        let (addr, h) = fake(b":1\r\n".to_vec(), 64);
        let mut c = Client::connect(addr, Duration::from_secs(5)).unwrap();
        let e = c.ping().unwrap_err().to_string();
        assert!(
            e.contains("PING") && e.contains("PONG") && e.contains(":1"),
            "{e}"
        );
        h.join().unwrap();

        let (addr, h) = fake(b"?\r\n".to_vec(), 64);
        let mut c = Client::connect(addr, Duration::from_secs(5)).unwrap();
        let e = c.dbsize().unwrap_err().to_string();
        assert!(e.contains("DBSIZE") && e.contains("protocol"), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn closed_connection_and_timeout() {
        let (addr, h) = fake(b"$10\r\nabc".to_vec(), 64);
        let mut c = Client::connect(addr, Duration::from_secs(5)).unwrap();
        let e = c.get(b"k").unwrap_err();
        assert!(matches!(e, RedisError::Closed { .. }), "{e}");
        assert!(e.to_string().contains("closed the connection"), "{e}");
        h.join().unwrap();

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = Client::connect(l.local_addr().unwrap(), Duration::from_millis(200)).unwrap();
        let e = c.ping().unwrap_err();
        assert!(matches!(e, RedisError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("PING"), "{e}");
    }

    #[test]
    fn describing_requests() {
        assert_eq!(describe(&[b"GET", b"gm:12"]), "GET gm:12");
        assert_eq!(describe(&[b"SET", b"k", &[0u8; 9]]), "SET k (+1 args)");
        assert_eq!(describe(&[b"SET", &[0u8; 3]]), "SET <3 bytes>");
        let info = parse_info("# Persistence\r\nrdb_saves:2\r\n\r\nrdb_last_bgsave_status:ok\r\n");
        assert_eq!(info.get("rdb_saves").map(String::as_str), Some("2"));
        assert_eq!(info.len(), 2);
    }
}
