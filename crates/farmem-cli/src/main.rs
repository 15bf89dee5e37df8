//! The `farmem` command.

mod bench;
mod bench_cmd;
mod bench_redis;
mod bench_remote;
mod ctl;
mod demo;
mod farmem_stats;
mod floor;
mod node_child;
mod opts;
mod replay;
mod replay_sim;
mod run;
mod serve;
mod table;
mod trace;
mod vm;
mod worker;

use clap::{Parser, Subcommand};

/// farmem: far memory for unmodified Linux, in userspace, on userfaultfd.
///
/// A program keeps only its hot pages in local memory, within a budget; the rest live in
/// a far tier (compressed or plain process memory for now). Every figure farmem reports
/// stands beside the Linux kernel's own answer: the same work in a memory cgroup with the
/// same budget, swapping to zram.
#[derive(Parser, Debug)]
#[command(name = "farmem", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sort an array several times larger than local memory, beside all-local and Linux swap.
    ///
    /// The main job on its embedded default: sorts SIZE of random 64-bit numbers in a far
    /// region with LOCAL_MEM of local memory on the compressed tier, shows progress, checks
    /// the result, and prints the time beside the same sort all-local and, where the
    /// machine allows it (root, cgroup v1 memory controller, /dev/zram0), beside Linux
    /// swapping to zram under the same budget.
    Demo(demo::DemoArgs),
    /// The benchmark every figure in BENCHMARKS.md comes from.
    ///
    /// Fills a far region of SIZE, then accesses it with PATTERN from THREADS threads for
    /// SECONDS, under a LOCAL_MEM budget, and reports accesses per second, faults and fault
    /// latency. With --baseline, each run also does the same access loop all-local and as a
    /// child process in a memory cgroup capped at the same budget swapping to zram (set up
    /// and torn down by the bench; root needed). Figures are medians of --runs runs.
    Bench(bench::BenchArgs),
    /// Real Redis under farmem, under Linux swap and all-local, at several budgets.
    ///
    /// Loads a dataset whose every byte can be checked (get-mix: strings of 4-128 KiB;
    /// lrange: lists of 200 elements) into a fresh redis-server, reads random keys from
    /// CLIENTS connections for DURATION seconds, checking every reply, and reads every key
    /// back. The server runs under `farmem run --local-mem B` (farmem), in a memory cgroup
    /// capped at B swapping to zram (linux-swap; set up and torn down here, root needed),
    /// or plainly (all-local), with B = fraction x dataset for each --local fraction.
    /// Reports medians of --runs runs: requests/s, p50/p99 latency, wrong replies (must be
    /// 0), and farmem's ratio to the other two. A Linux-swap run that the kernel's OOM
    /// killer stops is reported as killed.
    #[command(name = "bench-redis")]
    BenchRedis(bench_redis::BenchRedisArgs),
    /// Any command under farmem, under Linux swap and all-local, with the same budget.
    ///
    /// Runs PROGRAM under `farmem run --local-mem LOCAL_MEM --stats` (farmem), in a memory
    /// cgroup capped at LOCAL_MEM swapping to zram (linux-swap; set up and torn down here,
    /// root needed) and plainly (all-local), the systems taking turns in each of --runs
    /// runs. Reports, per run and as medians, the wall time, the metrics (each --metric
    /// REGEX reads one from the program's output; default: wall seconds), faults and
    /// maximum RSS, and farmem's speed-up over the other two (above 1: farmem did better).
    /// --local-frac takes the budgets as fractions of all-local's maximum RSS instead.
    /// With --client CMD, PROGRAM is a server under each system and CMD, run plainly, its
    /// load, from whose output the metrics come.
    #[command(name = "bench-cmd")]
    BenchCmd(bench_cmd::BenchCmdArgs),
    /// The remote tier beside the network's floor: starts a memory node (`farmem serve`)
    /// on loopback as a child process and measures, in one run, a plain loopback TCP
    /// round trip with a 4 KiB reply, farmem's major faults on the remote tier, and the
    /// pages per second one client pulls with readahead, with the node's CPU per page.
    #[command(name = "bench-remote")]
    BenchRemote(bench_remote::BenchRemoteArgs),
    /// The mechanism floor: raw costs of the kernel operations behind a fault, beside
    /// farmem's own fault latency in each fault mode, measured in the same run.
    Floor(floor::FloorArgs),
    /// Run an unmodified program with its heap in far memory.
    ///
    /// PROGRAM runs with farmem's preload library: its malloc-family allocations and
    /// large anonymous mmaps come from far memory, with LOCAL_MEM of it kept local. It
    /// keeps farmem's process id, so its exit status and signals are its own.
    Run(run::RunArgs),
    /// `farmem run` that also records the fault and allocation stream into a file, for
    /// `farmem replay`.
    Trace(trace::TraceArgs),
    /// Replays a trace under other eviction policies and prefetchers, beside exact LRU
    /// and Belady's optimum for the same budget: faults, prefetch accuracy and coverage.
    Replay(replay::ReplayArgs),
    /// Lend this machine's memory to farmem processes on other machines (a memory node).
    ///
    /// Listens on ADDR for farmem's remote far tier (tcp://HOST:PORT) and holds up to
    /// CAPACITY of their pages in its own memory. Clients must present the node's token
    /// (--token-file or FARMEM_TOKEN); --insecure serves without one, on a loopback address
    /// only. Each client process's pages are its own session, kept for --session-grace
    /// seconds if its connections drop, freed when it exits. Stops on SIGTERM or SIGINT.
    Serve(serve::ServeArgs),
    /// What a memory node holds: clients, sessions, pages, bytes, requests per second.
    #[command(name = "node-status")]
    NodeStatus(serve::NodeStatusArgs),
    /// Reads `farmem bench --json`, `farmem bench-redis --json` or `farmem bench-cmd --json`
    /// lines (from FILEs, or stdin) and prints their medians and ratios.
    ///
    /// With --table, prints one markdown table of bench-cmd and bench-redis records (mixed
    /// freely): a row per workload and budget with the medians of farmem, Linux swap and
    /// all-local, farmem's ratios to both, and the fault rates behind them.
    Summarize(table::SummarizeArgs),
    /// A KVM guest whose RAM is far memory: MEMORY of guest RAM under a LOCAL_MEM budget.
    ///
    /// Runs one of the project's minimal guests (`--guest sort|random|kv|latency`,
    /// freestanding long-mode payloads that check their own results) on --cpus vCPUs, or
    /// boots a Linux kernel (`--kernel BZIMAGE [--initrd FILE]`). The guest's console goes
    /// to stdout and its exit code becomes farmem's. KVM faults on guest RAM in the kernel,
    /// so the engine runs in thread fault mode (each fault is handed to a handler thread,
    /// pinned beside its vCPU). With --control PATH, `farmem ctl PATH` changes the budget
    /// and reads statistics while the guest runs. Needs /dev/kvm.
    Vm(vm::VmArgs),
    /// Change the budget of, or read statistics from, a running `farmem vm` or `farmem
    /// run` that was started with --control PATH.
    ///
    /// `budget [SIZE]` prints or sets the local budget (lowering it evicts before it
    /// returns); `stats [--json | --prometheus]` prints the statistics; `prefetch [NAME]`
    /// prints or switches the prefetcher. Only the socket's owner (and root) can connect.
    Ctl(ctl::CtlArgs),
    /// Internal: runs a workload all-local in this process (the Linux-swap child).
    #[command(hide = true, name = "__worker")]
    Worker {
        /// The job, as JSON.
        job: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchRedis(a) => bench_redis::run(a),
        Command::BenchCmd(a) => bench_cmd::run(a),
        Command::BenchRemote(a) => bench_remote::run(a),
        Command::Floor(a) => floor::run(a),
        Command::Run(a) => run::run(a),
        Command::Trace(a) => trace::trace(a),
        Command::Replay(a) => replay::replay(a),
        Command::Serve(a) => serve::serve(a),
        Command::NodeStatus(a) => serve::node_status(a),
        Command::Summarize(a) => table::summarize(a),
        Command::Vm(a) => vm::vm(a).map(|code| {
            if code != 0 {
                std::process::exit(code);
            }
        }),
        Command::Ctl(a) => ctl::ctl(a),
        Command::Worker { job } => worker::run(&job),
    };
    if let Err(e) = result {
        eprintln!("farmem: error: {e:#}");
        std::process::exit(1);
    }
}
