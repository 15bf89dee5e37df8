//! A Redis workload harness: a RESP2 client, a `redis-server` launcher, two datasets
//! whose every byte is checkable, and the load / timed-run / verify / `BGSAVE`-and-reload
//! phases, for running real Redis under farmem, all-local, and under Linux swap.
//!
//! ```text
//!  RedisServer::start(&ServerConfig { wrapper: [farmem run --local-mem B --backend URI --], .. })
//!  RedisServer::start_in(&config, &swap_baseline)      // inside the memory cgroup
//!      |
//!  load(&mut client, &dataset)                          // pipelined SET / RPUSH
//!  run(addr, &dataset, &RunConfig { clients, pipeline, duration, .. })
//!      -> ops/s, p50/p99, wrong replies (must be 0), errors
//!  verify_all(&mut client, &dataset)                    // every key once
//!  bgsave(..); reload_and_verify(..)                    // the dump, in a fresh plain server
//! ```
//!
//! [`dataset`] describes the two datasets (get-mix: strings of 4-128 KiB; lrange: lists of
//! 200 elements of 64-1024 bytes) and how their contents are derived from a seed.

pub mod client;
pub mod dataset;
pub mod record;
pub mod resp;
pub mod server;
pub mod workload;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use client::Client;
pub use dataset::{Dataset, Mismatch, WorkloadKind};
pub use record::{RedisRecord, median_run};
pub use resp::{ProtocolError, Value, ValueRef};
pub use server::{RedisServer, ServerConfig, Stopped, TempDir};
pub use workload::{
    BgsaveResult, LoadResult, RunConfig, RunResult, VerifyReport, bgsave, load, reload_and_verify,
    run, verify_all,
};

/// The dump's file name in the server's `--dir`.
pub const RDB_FILE: &str = "dump.rdb";

/// Errors of the Redis harness. Each names the request or step that failed and, for a
/// server that would not start, quotes the end of its output.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// A socket operation failed.
    #[error("{what} (redis at {addr}): {source}")]
    Io {
        /// The request or step.
        what: String,
        /// The server.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// No reply (or no progress writing) within the timeout.
    #[error("{what} (redis at {addr}): no reply within {timeout:?}")]
    Timeout {
        /// The request.
        what: String,
        /// The server.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The server closed the connection (it exited, was killed, or dropped the client).
    #[error("{what} (redis at {addr}): the server closed the connection")]
    Closed {
        /// The request.
        what: String,
        /// The server.
        addr: SocketAddr,
    },
    /// The reply broke the protocol.
    #[error("{what} (redis at {addr}): protocol error: {source}")]
    Protocol {
        /// The request.
        what: String,
        /// The server.
        addr: SocketAddr,
        /// What was wrong.
        source: ProtocolError,
    },
    /// The server answered with an error reply.
    #[error("{what}: redis replied with an error: {message}")]
    Server {
        /// The request.
        what: String,
        /// The error message (`ERR ...`, `OOM ...`, `LOADING ...`).
        message: String,
    },
    /// A reply of the wrong type or value.
    #[error("{what}: unexpected reply {got}; expected {expected}")]
    Unexpected {
        /// The request.
        what: String,
        /// What came back.
        got: String,
        /// What should have.
        expected: &'static str,
    },
    /// The server could not be started.
    #[error("could not start redis ({command}): {detail}{}", log_suffix(log))]
    Start {
        /// The command line.
        command: String,
        /// What happened.
        detail: String,
        /// The end of the server's output.
        log: String,
    },
    /// Waiting for or signalling the server process failed.
    #[error("could not {what}: {source}")]
    Process {
        /// The step.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// Values read back differ from what was stored.
    #[error("{wrong} of {keys} keys came back wrong and {errors} reads failed; first: {first}")]
    Wrong {
        /// Wrong keys.
        wrong: u64,
        /// Failed reads.
        errors: u64,
        /// Keys read.
        keys: u64,
        /// The first problems.
        first: String,
    },
    /// `BGSAVE` failed or did not finish.
    #[error("BGSAVE failed: {detail}")]
    Bgsave {
        /// What happened.
        detail: String,
    },
    /// The harness was used wrongly (bad configuration).
    #[error("{0}")]
    Usage(String),
}

fn log_suffix(log: &str) -> String {
    if log.trim().is_empty() {
        "; it printed nothing".into()
    } else {
        format!("; its output ends with:\n{}", log.trim_end())
    }
}

impl RedisError {
    /// Whether the connection was lost (closed, reset or timed out), as when the server
    /// died: the caller may want to look at the server before reporting.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            RedisError::Closed { .. } | RedisError::Timeout { .. } => true,
            RedisError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}
