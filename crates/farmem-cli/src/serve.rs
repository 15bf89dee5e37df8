//! `farmem serve`: lend this machine's memory to farmem processes on others; and
//! `farmem node-status`: what a memory node holds.
//!
//! The node itself is crates/farmem-node; this is its configuration (token, address
//! checks), its signals and its lines on stderr.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::opts;

/// Options of `farmem serve`.
#[derive(Args, Debug)]
#[command(
    after_help = "Clients reach the node as the far tier tcp://HOST:PORT and present the same token (the file FARMEM_TOKEN_FILE names, or FARMEM_TOKEN). Each client process gets a session: its pages are its own, no other client can name them, and a forked child gets a copy. A client whose connections all drop without saying goodbye keeps its pages for --session-grace seconds, so that it can reconnect after a network blip; a client that exits frees them at once.\n\nThe node keeps the pages in its own memory, up to --capacity for all clients together (leave the machine that much RAM to spare); a store that does not fit is refused and the client stops with a clear error. SIGTERM or SIGINT stops it: it closes every connection and prints a summary.\n\nExamples:\n  head -c 32 /dev/urandom | base64 > node.token; chmod 600 node.token\n  farmem serve --listen 0.0.0.0:7070 --capacity 16G --token-file node.token\n  farmem serve --listen 127.0.0.1:7070 --capacity 1G --insecure\n  farmem node-status 10.0.0.5:7070 --token-file node.token"
)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT: 0.0.0.0:7070 for every interface, 127.0.0.1:7070
    /// for this machine only; port 0 picks a free port (the start line shows it).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Most memory the node lends, to all clients together (K, M, G, T suffixes).
    #[arg(long, value_name = "SIZE", value_parser = opts::size)]
    pub capacity: u64,
    /// File holding the token that clients must present (a trailing newline is ignored;
    /// keep it mode 600). Without it, the file FARMEM_TOKEN_FILE names, or the token in
    /// FARMEM_TOKEN.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Serve without a token. Allowed only on a loopback address (127.0.0.1, ::1), where
    /// only this machine's users can connect.
    #[arg(long)]
    pub insecure: bool,
    /// Seconds to keep the pages of a client whose connections all dropped without a
    /// goodbye, for it to reconnect; then they are freed.
    #[arg(long, value_name = "SECS", default_value = "30")]
    pub session_grace: f64,
    /// Most connections at once (each client process opens a few).
    #[arg(long, value_name = "N", default_value = "1024")]
    pub max_clients: usize,
    /// Print only the start and stop lines (no sessions made or freed, no refusals).
    #[arg(long)]
    pub quiet: bool,
}

/// Options of `farmem node-status`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  farmem node-status 127.0.0.1:7070\n  FARMEM_TOKEN=... farmem node-status 10.0.0.5:7070 --json"
)]
pub struct NodeStatusArgs {
    /// The node, HOST:PORT.
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// File holding the node's token. Without it, the file FARMEM_TOKEN_FILE names, or
    /// FARMEM_TOKEN (none for a node started with --insecure).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Print the node's answer as one line of JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the node.
    #[arg(long, value_name = "SECS", default_value = "5")]
    pub timeout: f64,
}

/// The token from `file`, else from the file FARMEM_TOKEN_FILE names, else from
/// FARMEM_TOKEN, with where it came from; `None` if none of them is there. Read as the
/// remote tier reads it: a file's trailing whitespace (its newline) is dropped, the
/// variable is taken as it is.
fn load_token(file: Option<&Path>) -> Result<Option<(Vec<u8>, String)>> {
    let env_file = std::env::var_os("FARMEM_TOKEN_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(p) = file.or(env_file.as_deref()) {
        let raw = std::fs::read(p)
            .with_context(|| format!("cannot read the token file {}", p.display()))?;
        let token = raw.trim_ascii_end().to_vec();
        if token.is_empty() {
            bail!(
                "the token file {} is empty: put a token in it, e.g. `head -c 32 /dev/urandom | base64 > {}; chmod 600 {}`",
                p.display(),
                p.display(),
                p.display()
            );
        }
        if let Ok(m) = std::fs::metadata(p) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                eprintln!(
                    "farmem: warning: the token file {} can be read by other users (mode {mode:03o}); `chmod 600 {}`",
                    p.display(),
                    p.display()
                );
            }
        }
        return Ok(Some((token, p.display().to_string())));
    }
    match std::env::var_os("FARMEM_TOKEN").filter(|v| !v.is_empty()) {
        Some(v) => Ok(Some((v.into_encoded_bytes(), "FARMEM_TOKEN".into()))),
        None => Ok(None),
    }
}

/// Runs `farmem serve` until SIGTERM or SIGINT.
pub fn serve(a: ServeArgs) -> Result<()> {
    if !(a.session_grace >= 0.0 && a.session_grace.is_finite()) {
        bail!(
            "--session-grace must be a number of seconds, 0 or more (got {})",
            a.session_grace
        );
    }
    if a.max_clients == 0 {
        bail!("--max-clients must be at least 1");
    }
    let token = load_token(a.token_file.as_deref())?;
    let from = match (&token, a.insecure) {
        (Some((_, from)), insecure) => {
            if insecure {
                eprintln!(
                    "farmem serve: note: a token is given ({from}), so clients must present it; --insecure changes nothing"
                );
            }
            format!("token from {from}")
        }
        (None, false) => bail!(
            "no token: give --token-file PATH, or set FARMEM_TOKEN_FILE or FARMEM_TOKEN (clients present the same token), or --insecure to serve without one on a loopback address"
        ),
        (None, true) => {
            if !farmem_node::is_loopback_addr(&a.listen)? {
                bail!(
                    "--insecure serves without a token, so only on a loopback address (127.0.0.1 or [::1]), not on {}: anyone who can reach it could read and overwrite the pages; give a token with --token-file PATH instead",
                    a.listen
                );
            }
            "no token (--insecure: this machine only)".to_string()
        }
    };
    let mut config = farmem_node::Config::new(a.capacity);
    config.token = token.map(|(t, _)| t);
    config.grace = Duration::from_secs_f64(a.session_grace);
    config.max_clients = a.max_clients;
    config.log = !a.quiet;
    let server = farmem_node::Server::bind(&a.listen, config)?;
    // Signals are caught before the start line, so that one sent right after it (a
    // script that waits for the line) is not lost.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot catch SIGTERM and SIGINT")?;
    let handle = server.shutdown_handle();
    std::thread::Builder::new()
        .name("farmem-signals".into())
        .spawn(move || {
            let mut n = 0;
            for _ in signals.forever() {
                n += 1;
                if n == 1 {
                    handle.shutdown();
                } else {
                    eprintln!("farmem serve: second signal: exiting without waiting");
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    eprintln!(
        "farmem serve: listening on {}, capacity {}, {from}",
        server.local_addr(),
        opts::human(a.capacity)
    );
    let summary = server.run();
    eprintln!("farmem serve: stopped; {summary}");
    Ok(())
}

fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{secs:.1} s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Runs `farmem node-status`.
pub fn node_status(a: NodeStatusArgs) -> Result<()> {
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let token = load_token(a.token_file.as_deref())?
        .map(|(t, _)| t)
        .unwrap_or_default();
    let json = match farmem_node::query_status(&a.addr, &token, Duration::from_secs_f64(a.timeout))
    {
        Ok(j) => j,
        Err(farmem_node::NodeError::Refused {
            code: farmem_wire::Code::BadToken,
            message,
            ..
        }) => bail!(
            "{message}: give node-status the node's token with --token-file PATH, FARMEM_TOKEN_FILE or FARMEM_TOKEN"
        ),
        Err(e) => return Err(e.into()),
    };
    if a.json {
        println!("{json}");
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&json).context("the node's status is not JSON")?;
    print!("{}", render_status(&v));
    Ok(())
}

/// The status, for people.
fn render_status(v: &serde_json::Value) -> String {
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let used = u("used_bytes");
    let cap = u("capacity_bytes").max(1);
    let mut out = format!(
        "memory node {} (protocol {}), up {}\n",
        v["node"].as_str().unwrap_or("?"),
        u("protocol_version"),
        duration(f("uptime_secs"))
    );
    out += &format!(
        "  clients    {} connected, {} served\n",
        u("clients"),
        u("clients_served")
    );
    out += &format!("  sessions   {}\n", u("sessions"));
    out += &format!(
        "  pages      {} ({} of {} used, {:.1}%)\n",
        u("pages"),
        opts::human(used),
        opts::human(cap),
        100.0 * used as f64 / cap as f64
    );
    out += &format!(
        "  requests   {} total, {:.1}/s over the last {} ({} stores, {} fetches, {} discards)\n",
        u("requests_total"),
        f("requests_per_sec"),
        duration(f("rate_window_secs")),
        u("stores"),
        u("fetches"),
        u("discards")
    );
    out += &format!(
        "  refused    {} requests (full, missing pages), {} connections dropped (bad frames, wrong tokens)\n",
        u("refused"),
        u("dropped_connections")
    );
    for s in v["session_list"].as_array().into_iter().flatten() {
        let conns = s["connections"].as_u64().unwrap_or(0);
        let state = match s["grace_left_secs"].as_f64() {
            Some(left) if conns == 0 => {
                format!(
                    "no connection, freed in {} unless it rejoins",
                    duration(left)
                )
            }
            _ => format!("{conns} connections"),
        };
        out += &format!(
            "  session {}: {}, {} pages ({}), {state}\n",
            s["id"],
            s["name"].as_str().unwrap_or("?"),
            s["pages"].as_u64().unwrap_or(0),
            opts::human(s["bytes"].as_u64().unwrap_or(0)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(1.25), "1.2 s");
        assert_eq!(duration(125.0), "2m 05s");
        assert_eq!(duration(7260.0), "2h 01m");
        assert_eq!(duration(90000.0), "1d 01h");
    }
}
