//! `ocellus check`: validate the configuration and the model bundle without running anything.
//!
//! Every problem found is one line on stderr (`ocellus: ...`) and the exit code is 2; with none, a short
//! report goes to stdout and the exit code is 0. The checks are the runtime's own start-up phases
//! (`ocellus::runtime::check`); one that depends on a failed one is skipped.

use std::path::PathBuf;

use super::{init_logging, load_config, Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Configuration file (TOML); without it, the built-in default.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Measure the model's stage times on this machine again (also for `model.variant = "auto"`), ignoring
    /// what the measurements file remembers, and print the deadlines they give as a [budgets] table.
    #[arg(long)]
    pub measure: bool,
}

pub fn check(args: CheckArgs, v: Verbosity) -> Result<(), Failure> {
    // An unreadable or invalid config stops here: everything else depends on it.
    let config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    let report = ocellus::runtime::check_with(&config, args.measure);
    if !report.problems.is_empty() {
        return Err(Failure::config(report.problems.join("\n")));
    }
    println!("config {}: ok", config.origin);
    for line in report.ok {
        println!("  ok: {line}");
    }
    if let Some(plan) = report.plan {
        println!("memory plan:");
        for line in plan.to_string().lines() {
            println!("  {line}");
        }
    }
    if let Some(budgets) = report.budgets {
        println!("deadlines in force (paste into the config to fix them):");
        for line in budgets.lines() {
            println!("  {line}");
        }
    }
    Ok(())
}
