//! The `ocellus` command: `run`, `bench`, `cameras`, `check`, `infer`, `read`, `top`, `record`, `replay`.
//!
//! Exit codes: 0 success; 1 a runtime failure (a source or model failed while running, no frame was
//! processed, an output could not be written); 2 a bad configuration or model bundle (also clap's code for
//! a bad command line).

mod cli;
mod malloc_count;

/// Frame-path threads allocate from the region taken at start-up (src/alloc.rs, docs/memory.md).
#[global_allocator]
static ALLOC: ocellus::alloc::Allocator = ocellus::alloc::Allocator;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ocellus: real-time vision-language perception for robots.
#[derive(Debug, Parser)]
#[command(
    name = "ocellus",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 success; 1 runtime failure (a source or model failed while running, no frame \
                  processed, an output not written); 2 bad configuration, model bundle or command line."
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace); overrides the config's logging level.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (errors only); overrides the config's logging level.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline: cameras -> prepare -> infer -> publish, with a live status line and a summary.
    Run(cli::run::RunArgs),
    /// Measure the pipeline (latency distribution per stage, throughput, memory) and the models against
    /// onnxruntime; writes a JSON report and optionally an SVG plot (docs/bench.md).
    Bench(cli::bench::BenchArgs),
    /// List the V4L2 cameras (capture nodes, their by-id/by-path names, driver, formats, sizes, frame
    /// rates) with a [[camera]] table to start from.
    Cameras(cli::cameras::CamerasArgs),
    /// Validate the configuration and the model bundle; one line per problem, exit 2 if there is any.
    Check(cli::check::CheckArgs),
    /// Run the models on image files (PNG, JPEG) and print the top prompts with their scores.
    Infer(cli::infer::InferArgs),
    /// Print what a shared-memory reader sees per camera (age, sequence, top scores, flags); exit 1 if the
    /// writer is not running, 2 if the segment is not a readable ocellus segment.
    Read(cli::read::ReadArgs),
    /// A live view of a running service from its shared memory: per camera fps, stage latency, misses, drops.
    Top(cli::top::TopArgs),
    /// Trigger the running service's flight recorder (--trigger), or capture every frame with its results
    /// for a while (--duration S / --frames N, --out DIR) in the recording format (docs/recorder.md).
    Record(cli::record::RecordArgs),
    /// Run a recording through the pipeline and compare every frame's results with the recorded ones:
    /// identical or not and why; top-1 agreement, embedding cosine, score differences, changed decisions.
    Replay(cli::replay::ReplayArgs),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let verbosity = cli::Verbosity {
        verbose: args.verbose,
        quiet: args.quiet,
    };
    let result = match args.command {
        Command::Run(a) => cli::run::run(a, verbosity),
        Command::Bench(a) => cli::bench::bench(a, verbosity),
        Command::Cameras(a) => cli::cameras::cameras(a, verbosity),
        Command::Check(a) => cli::check::check(a, verbosity),
        Command::Infer(a) => cli::infer::infer(a, verbosity),
        Command::Read(a) => cli::read::read(a, verbosity),
        Command::Top(a) => cli::top::top(a, verbosity),
        Command::Record(a) => cli::record::record(a, verbosity),
        Command::Replay(a) => cli::replay::replay(a, verbosity),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            for line in failure.message.lines() {
                eprintln!("ocellus: {line}");
            }
            ExitCode::from(failure.code as u8)
        }
    }
}
