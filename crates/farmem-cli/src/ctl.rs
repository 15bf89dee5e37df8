//! `farmem ctl`: talks to a running `farmem vm --control PATH` or `farmem run --control
//! PATH` (see `farmem::control` for the protocol).

use crate::opts;
use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  farmem vm --control /tmp/vm.sock --local-mem 64M --guest random 1G 100M &\n  farmem ctl /tmp/vm.sock budget 256M\n  farmem ctl /tmp/vm.sock stats --json\n  farmem ctl /tmp/vm.sock stats --prometheus > /var/lib/node_exporter/farmem.prom\n  farmem ctl /tmp/vm.sock prefetch majority"
)]
pub struct CtlArgs {
    /// The control socket the program was started with (--control PATH).
    pub path: PathBuf,
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Print the local budget, or set it to SIZE (K/M/G suffixes). Lowering it evicts
    /// down to the new budget before it returns; raising it lets more pages stay local.
    Budget {
        #[arg(value_parser = opts::size)]
        size: Option<u64>,
    },
    /// Print the statistics: the `--stats` summary, or JSON, or Prometheus's text format.
    Stats {
        /// One JSON object.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Prometheus's text exposition format.
        #[arg(long)]
        prometheus: bool,
    },
    /// Print the prefetcher, or switch every region to NAME (none, readahead, majority).
    Prefetch { name: Option<String> },
}

pub fn ctl(a: CtlArgs) -> Result<()> {
    let line = match &a.what {
        What::Budget { size: None } => "budget".to_string(),
        What::Budget { size: Some(s) } => format!("budget {s}"),
        What::Stats { json: true, .. } => "stats json".into(),
        What::Stats {
            prometheus: true, ..
        } => "stats prometheus".into(),
        What::Stats { .. } => "stats".into(),
        What::Prefetch { name: None } => "prefetch".into(),
        What::Prefetch { name: Some(n) } => {
            n.parse::<farmem::PrefetchKind>()
                .map_err(anyhow::Error::msg)?;
            format!("prefetch {n}")
        }
    };
    let body = farmem::control::request(&a.path, &line).map_err(|e| anyhow!(e))?;
    let bytes = |s: &str| {
        s.parse::<u64>()
            .map(opts::human)
            .unwrap_or_else(|_| s.to_string())
    };
    match &a.what {
        What::Budget { size: None } => println!("{}", bytes(body.trim())),
        What::Budget { size: Some(_) } => {
            let mut w = body.split_whitespace();
            let (old, new) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            println!("budget {} (was {})", bytes(new), bytes(old));
        }
        What::Prefetch { name: Some(_) } => {
            let mut w = body.split_whitespace();
            let (old, new) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            println!("prefetch {new} (was {old})");
        }
        _ => print!("{body}"),
    }
    Ok(())
}
