//! `ocellus top`: a live plain-text view of a running service, read only from its shared-memory segment:
//! per camera fps, the latest per-stage latencies, deadline misses, drops and state.
//!
//! On a terminal the screen is redrawn in place (ANSI clear); otherwise one block is printed per interval.
//! A stopped or dead writer is shown and waited for; a restarted one is followed. Ends on SIGINT/SIGTERM or
//! after `--iterations`.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use ocellus::shm::{format_top, ReadError, ShmReader, TopSnapshot};

use super::read::{failure, interrupt_flag, segment_name, sleep_unless, stdout_error};
use super::{Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The shared-memory segment to watch (`/dev/shm/NAME`).
    #[arg(long, value_name = "NAME", default_value = "ocellus")]
    pub shm: String,
    /// Milliseconds between refreshes.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop after this many refreshes (for scripts); exit 1 if the last one found no running writer.
    #[arg(long, value_name = "N")]
    pub iterations: Option<u64>,
}

pub fn top(args: TopArgs, _v: Verbosity) -> Result<(), Failure> {
    let name = segment_name(&args.shm);
    let interrupt = interrupt_flag()?;
    let interval = Duration::from_millis(args.interval_ms);
    let clear = io::stdout().is_terminal();
    let mut reader: Option<ShmReader> = None;
    let mut sample = None;
    let mut prev: Option<TopSnapshot> = None;
    let mut stdout = io::stdout().lock();
    let mut done = 0u64;
    loop {
        let snapshot = match reader.as_mut() {
            Some(r) => Ok(r),
            None => ShmReader::open(&name).map(|r| reader.insert(r)),
        }
        .and_then(|r| {
            let s = sample.get_or_insert_with(|| r.new_sample());
            TopSnapshot::take(r, s)
        });
        let text = match &snapshot {
            Ok(cur) => {
                if prev
                    .as_ref()
                    .is_some_and(|p| p.writer.generation != cur.writer.generation)
                {
                    prev = None;
                }
                format_top(prev.as_ref(), cur)
            }
            Err(e @ (ReadError::Foreign { .. } | ReadError::VersionMismatch { .. })) => {
                return Err(failure(e));
            }
            Err(e) => format!("{e}; waiting for a writer\n"),
        };
        let shown = if clear {
            write!(stdout, "\x1b[H\x1b[2J{text}")
        } else {
            writeln!(stdout, "{text}")
        }
        .and_then(|()| stdout.flush());
        if let Err(e) = shown {
            return stdout_error(e).map_or(Ok(()), Err);
        }
        let failed = snapshot.as_ref().err().map(failure);
        if let Ok(cur) = snapshot {
            prev = Some(cur);
        }
        done += 1;
        if args.iterations.is_some_and(|n| done >= n) {
            return failed.map_or(Ok(()), Err);
        }
        if sleep_unless(&interrupt, interval) {
            return Ok(());
        }
    }
}
