//! The child side of the Linux-swap baseline: runs a job all-local in this process, which
//! the parent has placed in a memory cgroup, and prints its result line.

use anyhow::{Context, Result};
use farmem_bench::workload::Workload;

/// A job for the child.
#[derive(Debug)]
pub enum Job {
    /// The bench's access loop.
    Workload(Workload),
    /// The demo's sort.
    Sort(crate::demo::SortJob),
}

impl Job {
    /// Serialised for the child's command line.
    pub fn to_arg(&self) -> String {
        match self {
            Job::Workload(w) => format!("workload:{}", w.to_json()),
            Job::Sort(s) => format!("sort:{}", s.to_json()),
        }
    }
}

pub fn run(arg: &str) -> Result<()> {
    if let Some(w) = arg.strip_prefix("workload:") {
        let w = Workload::from_json(w).context("bad workload")?;
        let r = w.run_anonymous().context("the workload failed")?;
        println!("{}", r.to_output_line());
        Ok(())
    } else if let Some(s) = arg.strip_prefix("sort:") {
        let job = crate::demo::SortJob::from_json(s)?;
        let r = crate::demo::sort_all_local(&job)?;
        println!("{}", r.to_line());
        Ok(())
    } else {
        anyhow::bail!("unknown worker job `{arg}`")
    }
}
