//! The entry of the `segment` fuzz target, shared with the corpus test (`crates/ocellus-shm/tests/fuzz_corpus.rs`
//! includes this file), so the committed corpus and every crash reproducer run through exactly what the fuzzer
//! ran.
//!
//! An input is the bytes of a shared-memory segment of unknown origin. [`check`] puts them in a real POSIX
//! shared-memory object, opens it with the Rust reader ([`ShmReader`]) and with the C header's reader
//! (`include/ocellus/shm.h`, through `c/report.c`), reads everything a control loop or `ocellus read` reads, and
//! asserts:
//! * neither reader panics or faults, whatever the bytes;
//! * [`validate_bytes`] gives the verdict [`ShmReader::open_with`] gives on the mapped object;
//! * a segment the reader accepts has the size its layout computes, and every read stays inside it;
//! * the two readers agree on the verdict, the dimensions, every sample, counter and prompt label.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ocellus_shm::{
    format_sample, validate_bytes, HeaderError, ReadError, ReaderOptions, ShmReader,
};

/// Read options that let one process see a segment without a live writer: never stale, never re-opened
/// (so the readers look only at the bytes given), 2 retries. `c/report.c` sets the same.
pub fn reader_options() -> ReaderOptions {
    ReaderOptions {
        max_retries: 2,
        verify_checksum: true,
        reopen_interval: Duration::MAX,
        stale_after: Some(Duration::MAX),
        expected_uid: None,
    }
}

/// A POSIX shared-memory object holding given bytes, unlinked on drop.
pub struct ShmObject {
    name: String,
    path: PathBuf,
}

impl ShmObject {
    /// Creates `/dev/shm/ocellus-fuzz-<pid>-<n>` (mode 0600) holding `bytes`.
    pub fn new(bytes: &[u8]) -> ShmObject {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let bare = format!(
            "ocellus-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = PathBuf::from("/dev/shm").join(&bare);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        f.write_all(bytes)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        ShmObject {
            name: format!("/{bare}"),
            path,
        }
    }

    /// The POSIX name (`/ocellus-fuzz-...`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ShmObject {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The C header's return code for a Rust read error (`OCELLUS_SHM_E_*`).
fn code(e: &ReadError) -> i32 {
    match e {
        ReadError::NotRunning { .. } => -1,
        ReadError::Stale { .. } => -2,
        ReadError::VersionMismatch { .. } => -3,
        ReadError::Foreign { .. } => -4,
        ReadError::RetriesExhausted { .. } => -5,
        ReadError::NoSample { .. } => -6,
        ReadError::NoSuchCamera { .. } => -7,
        ReadError::Io { .. } => -8,
    }
}

fn header_code(e: &HeaderError) -> i32 {
    match e {
        HeaderError::Incomplete(_) => -1,
        HeaderError::Foreign(_) => -4,
        HeaderError::Version { .. } => -3,
    }
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, w: u64) -> u64 {
    for b in w.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn hash_floats(v: &[f32]) -> u64 {
    v.iter().fold(FNV_START, |h, &f| {
        fnv(
            h,
            if f.is_nan() {
                0x7fc0_0000
            } else {
                u64::from(f.to_bits())
            },
        )
    })
}

/// What the Rust reader makes of segment `name` (holding `bytes`), in `c/report.c`'s format. Panics when the
/// reader contradicts itself.
pub fn rust_report(name: &str, bytes: &[u8]) -> String {
    let mut out = String::new();
    let verdict = validate_bytes(bytes);
    let mut reader = match ShmReader::open_with(name, reader_options()) {
        Ok(r) => r,
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(name),
                "an open error names the segment: {message}"
            );
            let expected = verdict.as_ref().err().map(header_code);
            assert_eq!(
                expected,
                Some(code(&e)),
                "validate_bytes and open disagree: {verdict:?} vs {e}"
            );
            writeln!(out, "open {}", code(&e)).unwrap();
            return out;
        }
    };
    let layout = *reader.layout();
    assert_eq!(
        verdict.as_ref(),
        Ok(&layout),
        "validate_bytes and open disagree"
    );
    assert_eq!(layout.total_size, bytes.len() as u64);
    let d = layout.dims;
    writeln!(out, "open 0").unwrap();
    writeln!(
        out,
        "dims {} {} {} {} {} {}",
        d.cameras,
        d.embed_dim,
        d.num_latents,
        d.latent_dim,
        d.max_prompts,
        d.latents_dtype.code()
    )
    .unwrap();
    let mut sample = reader.new_sample();
    let labels = reader.prompts().map(|p| p.labels).unwrap_or_default();
    for cam in 0..d.cameras {
        write!(out, "cam {cam} read ").unwrap();
        match reader.read_latest(cam, &mut sample) {
            Ok(info) => {
                let m = &sample.meta;
                assert!(sample.num_scores <= d.max_prompts);
                write!(
                    out,
                    "0 seq {} capture {} publish {}",
                    m.sequence, m.capture_ns, m.publish_ns
                )
                .unwrap();
                for s in m.stages_ns {
                    write!(out, " {s}").unwrap();
                }
                write!(
                    out,
                    " flags {} misses {} prompts {} scores {} emb {:016x} lat {:016x} sc {:016x}",
                    m.flags,
                    m.deadline_misses,
                    m.prompt_version,
                    sample.num_scores,
                    hash_floats(&sample.embedding),
                    hash_floats(&sample.latents),
                    hash_floats(&sample.scores)
                )
                .unwrap();
                // What `ocellus read` prints for it: must not panic on any values.
                let _ = format_sample(cam, &sample, &info, &labels, 5);
            }
            Err(e) => write!(out, "{}", code(&e)).unwrap(),
        }
        let c = reader.counters(cam).expect("a camera the layout has");
        let mut h = FNV_START;
        for w in [c.captured, c.dropped].into_iter().chain(c.late).chain([
            c.reconnects,
            c.processed,
            c.corrupt,
            c.errors,
            c.flags,
            c.last_overrun_ns,
            c.last_late_stages,
        ]) {
            h = fnv(h, w);
        }
        writeln!(out, " counters 0 {h:016x}").unwrap();
    }
    // A camera past the last: refused (after the liveness check, which comes first, as in the C reader).
    assert!(matches!(
        reader.read_latest(d.cameras, &mut sample),
        Err(ReadError::NoSuchCamera { .. }
            | ReadError::NotRunning { .. }
            | ReadError::Stale { .. })
    ));
    writeln!(out, "hwm {}", reader.memory_high_water()).unwrap();
    let _ = reader.writer();
    write!(out, "prompts ").unwrap();
    match reader.prompts() {
        Ok(p) => {
            assert!(p.labels.len() <= d.max_prompts);
            write!(out, "0 v{} n{}", p.version, p.labels.len()).unwrap();
            for l in &p.labels {
                assert!(l.len() <= 3 * 64, "a label is at most 64 bytes, decoded");
                out.push(' ');
                if l.is_empty() {
                    out.push('-');
                }
                for b in l.bytes() {
                    write!(out, "{b:02x}").unwrap();
                }
            }
        }
        Err(e) => write!(out, "{}", code(&e)).unwrap(),
    }
    out.push('\n');
    out
}

/// `c/report.c`'s text with each prompt label decoded as the Rust reader decodes it (UTF-8, invalid bytes
/// replaced), so the two reports compare as text.
pub fn normalise_c_report(c: &str) -> String {
    let mut out = String::with_capacity(c.len());
    for line in c.lines() {
        if let Some(rest) = line.strip_prefix("prompts 0 ") {
            let mut parts = rest.split(' ');
            let mut fixed = vec!["prompts".to_owned(), "0".to_owned()];
            fixed.extend(parts.by_ref().take(2).map(str::to_owned));
            for label in parts {
                let bytes: Vec<u8> = if label == "-" {
                    Vec::new()
                } else {
                    (0..label.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&label[i..i + 2], 16).expect("hex"))
                        .collect()
                };
                let decoded = String::from_utf8_lossy(&bytes);
                let mut hex = String::new();
                for b in decoded.bytes() {
                    write!(hex, "{b:02x}").unwrap();
                }
                fixed.push(if hex.is_empty() { "-".into() } else { hex });
            }
            out.push_str(&fixed.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Runs both readers on `bytes` and asserts they agree. `c_report(name)` runs the C reader on the object
/// (through the linked `c/report.c` in the fuzz target). Returns the report.
pub fn check(bytes: &[u8], c_report: impl FnOnce(&str) -> String) -> String {
    check_many(&[bytes], |names| vec![c_report(names[0])]).remove(0)
}

/// [`check`] for several inputs at once: `c_reports(names)` returns the C reader's report of each object, in
/// order (the corpus test runs the C program once for a batch).
pub fn check_many(inputs: &[&[u8]], c_reports: impl FnOnce(&[&str]) -> Vec<String>) -> Vec<String> {
    let objects: Vec<ShmObject> = inputs.iter().map(|b| ShmObject::new(b)).collect();
    let rust: Vec<String> = objects
        .iter()
        .zip(inputs)
        .map(|(o, b)| rust_report(o.name(), b))
        .collect();
    let names: Vec<&str> = objects.iter().map(ShmObject::name).collect();
    let c = c_reports(&names);
    assert_eq!(c.len(), inputs.len(), "one C report per segment");
    for ((r, c), b) in rust.iter().zip(&c).zip(inputs) {
        assert_eq!(
            *r,
            normalise_c_report(c),
            "the Rust and C readers disagree on a {}-byte segment",
            b.len()
        );
    }
    rust
}
