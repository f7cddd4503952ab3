//! Multi-process stress test of the shared-memory protocol: a writer publishes back to back while a Rust
//! reader (this test binary, re-executed), a C reader (tests/c/shm_reader.c, compiled here with gcc; also built
//! as C++ with g++) and a Python reader (tools/tests/test_shm.py) read continuously. Every sample carries a
//! test checksum (in `deadline_misses`) and a payload that is a function of its sequence number (`seq % 251`); readers run
//! with the library's own checksum verification off, so only the sequence lock keeps torn samples out.
//! Asserts 0 torn samples accepted over at least 1e6 accepted reads in total, and prints the counts.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocellus_shm::{
    layout, Dims, LatentsDtype, ReadError, ReaderOptions, Sample, SampleMeta, SampleRef, ShmReader,
    ShmWriter, WriterConfig,
};

const E: usize = 64;
const L: usize = 16;
const D: usize = 96;
const K: usize = 16;
const CHILD_ENV: &str = "OCELLUS_SHM_STRESS_CHILD";
/// A reader stops when the writer's heartbeat has been stale this long (the parent test is gone).
const STALE_GIVE_UP: Duration = Duration::from_secs(10);
/// Fails the test instead of hanging if a reader never finishes.
const WATCHDOG: Duration = Duration::from_secs(300);

fn dims() -> Dims {
    Dims {
        cameras: 1,
        embed_dim: E,
        num_latents: L,
        latent_dim: D,
        max_prompts: K,
        latents_dtype: LatentsDtype::F16,
    }
}

/// Distinct payloads: publish `seq` carries payload `seq % VARIANTS` (prime, so the samples a lapping writer
/// mixes, `n` and `n + 3`, always differ), precomputed so the writer publishes at full speed.
const VARIANTS: u64 = 251;

/// The payload of variant `m` (values exact in f16 and f32) and its part of the test checksum.
fn fill(m: u64, emb: &mut [f32], lat: &mut [f32], sc: &mut [f32]) -> u64 {
    let mut sum = 0u64;
    let mut idx = 0u64;
    let mut add = |v: f32, sum: &mut u64| {
        *sum = sum.wrapping_add(u64::from(v.to_bits()).wrapping_mul(2 * idx + 1));
        idx += 1;
    };
    for (i, x) in emb.iter_mut().enumerate() {
        *x = ((m * 31 + i as u64) % 65536) as f32;
        add(*x, &mut sum);
    }
    for (i, x) in lat.iter_mut().enumerate() {
        *x = ((m + i as u64) % 1024) as f32;
        add(*x, &mut sum);
    }
    for (i, x) in sc.iter_mut().enumerate() {
        *x = ((m * 7 + i as u64) % 1000) as f32;
        add(*x, &mut sum);
    }
    sum
}

/// Embedding, latents, scores and their part of the test checksum.
type Payload = (Vec<f32>, Vec<f32>, Vec<f32>, u64);

/// The test checksum publish `seq` carries in `deadline_misses`.
fn test_checksum(seq: u64, payload_sum: u64) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(payload_sum)
}

/// Whether `s` is exactly publish `s.meta.sequence` (payload pattern and the carried test checksum).
fn intact(s: &Sample, scratch: &mut Sample) -> bool {
    let seq = s.meta.sequence;
    let sum = fill(
        seq % VARIANTS,
        &mut scratch.embedding,
        &mut scratch.latents,
        &mut scratch.scores,
    );
    s.meta.stages_ns[0] == seq
        && s.meta.prompt_version == seq ^ 0xabcd
        && s.meta.deadline_misses == test_checksum(seq, sum)
        && s.num_scores == K
        && s.embedding == scratch.embedding
        && s.latents == scratch.latents
        && s.scores == scratch.scores
}

fn python() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/ocellus/venv/bin/python"));
    }
    candidates.push(PathBuf::from("python3"));
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import numpy, pytest"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn compile(compiler: &str, std: &str, lang: &str, out: &Path) {
    compile_file(compiler, std, lang, "tests/c/shm_reader.c", out)
}

fn compile_file(compiler: &str, std: &str, lang: &str, file: &str, out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(compiler)
        .args([std, "-O2", "-Wall", "-Wextra", "-Werror", "-x", lang, "-I"])
        .arg(root.join("include"))
        .arg(root.join(file))
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    assert!(status.success(), "{compiler} {std} failed on {file}");
}

struct Counts {
    accepted: u64,
    torn: u64,
    exhausted: u64,
    /// Attempts discarded because a write overlapped them (the sequence lock at work).
    retries: u64,
}

fn parse(lang: &str, stdout: &str) -> Counts {
    // libtest may print "test name ... " before the child's own line.
    let tag = format!("RESULT {lang} ");
    let line = stdout
        .lines()
        .find_map(|l| l.find(&tag).map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("{lang} reader printed no RESULT line: {stdout:?}"));
    let get = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{lang}: no {key} in {line:?}"))
    };
    Counts {
        accepted: get("accepted"),
        torn: get("torn"),
        exhausted: get("exhausted"),
        retries: get("retries"),
    }
}

/// A reader process, killed if the test fails before it finishes.
struct Reader(Child);

impl Drop for Reader {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Removes the segment even when the test fails with the writer still holding it.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm{}", self.0));
    }
}

/// Waits for `reader` until `deadline`; kills it and fails the test past that.
fn wait(lang: &str, mut reader: Reader, deadline: Instant) -> String {
    let child = &mut reader.0;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut s) = child.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                assert!(
                    status.success(),
                    "{lang} reader failed ({status}): {out}\n{err}"
                );
                return out;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => panic!("{lang} reader did not finish within {WATCHDOG:?}"),
            Err(e) => panic!("wait for the {lang} reader: {e}"),
        }
    }
}

/// The Rust reader, run as a child process by `writer_and_three_readers_accept_no_torn_sample`.
#[test]
fn rust_reader_child() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return; // only meaningful when re-executed by the stress test
    };
    let (name, target) = arg.split_once(':').expect("NAME:COUNT");
    let target: u64 = target.parse().expect("count");
    let options = ReaderOptions {
        verify_checksum: false,
        ..ReaderOptions::default()
    };
    let mut reader = ShmReader::open_with(name, options).expect("open the stress segment");
    let mut sample = reader.new_sample();
    let mut scratch = reader.new_sample();
    let (mut accepted, mut torn, mut exhausted, mut other, mut retries) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut stale_since: Option<Instant> = None;
    while accepted < target {
        let read = reader.read_latest(0, &mut sample);
        if let Err(ReadError::Stale { .. }) = read {
            // The writer is starved or gone: give up if it stays so (the parent may have failed).
            if stale_since.get_or_insert_with(Instant::now).elapsed() > STALE_GIVE_UP {
                break;
            }
        } else {
            stale_since = None;
        }
        match read {
            Ok(info) if intact(&sample, &mut scratch) => {
                accepted += 1;
                retries += u64::from(info.retries);
            }
            Ok(_) => torn += 1,
            Err(ReadError::RetriesExhausted { .. }) => exhausted += 1,
            Err(ReadError::NotRunning { .. }) => break,
            Err(_) => other += 1,
        }
    }
    println!("RESULT rust accepted={accepted} torn={torn} exhausted={exhausted} other={other} retries={retries}");
    assert_eq!(torn, 0, "torn samples accepted");
}

#[test]
fn writer_and_three_readers_accept_no_torn_sample() {
    let name = format!("/ocellus-stress-{}", std::process::id());
    let mut config = WriterConfig::new(&name, dims());
    // Generous: a starved heartbeat on a loaded machine must not look like a dead writer.
    config.heartbeat_period = Duration::from_secs(1);
    let mut writer = ShmWriter::create(&config).expect("create the stress segment");
    let _unlink = Unlink(name.clone());
    let hb = writer.heartbeat_handle();

    let tmp = tempfile::tempdir().expect("temp dir");
    let c_bin = tmp.path().join("shm_reader_c");
    let cpp_bin = tmp.path().join("shm_reader_cpp");
    compile("gcc", "-std=c99", "c", &c_bin);
    compile("g++", "-std=c++17", "c++", &cpp_bin);

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let writer_thread = {
        let (stop, published) = (stop.clone(), published.clone());
        std::thread::spawn(move || {
            let payloads: Vec<Payload> = (0..VARIANTS)
                .map(|m| {
                    let (mut emb, mut lat, mut sc) =
                        (vec![0f32; E], vec![0f32; L * D], vec![0f32; K]);
                    let sum = fill(m, &mut emb, &mut lat, &mut sc);
                    (emb, lat, sc, sum)
                })
                .collect();
            let mut seq = 0u64;
            let mut last_beat = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let (emb, lat, sc, sum) = &payloads[(seq % VARIANTS) as usize];
                let mut stages_ns = [0u64; layout::STAGES];
                stages_ns[0] = seq;
                let sample = SampleRef {
                    meta: SampleMeta {
                        sequence: seq,
                        capture_ns: 0,
                        publish_ns: 0,
                        stages_ns,
                        flags: seq & layout::FLAG_LATE_MASK,
                        deadline_misses: test_checksum(seq, *sum),
                        prompt_version: seq ^ 0xabcd,
                    },
                    embedding: emb,
                    latents: lat,
                    scores: sc,
                };
                writer.publish(0, &sample).expect("publish");
                if last_beat.elapsed() >= Duration::from_millis(10) {
                    writer.heartbeat();
                    last_beat = Instant::now();
                }
            }
            published.store(seq, Ordering::Relaxed);
            writer
        })
    };
    // The writer thread holds `writer`; this thread keeps beating too, in case the writer thread is starved.
    let beat_stop = stop.clone();
    let beater = std::thread::spawn(move || {
        while !beat_stop.load(Ordering::Relaxed) {
            hb.beat();
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    let py = python();
    // Accepted reads each reader must reach (the Rust reader runs unoptimised in `cargo test`, so the C reader
    // at -O2 carries most of the 1e6).
    let (rust_n, c_n, cpp_n, py_n) = if py.is_some() {
        (50_000u64, 900_000u64, 20_000u64, 40_000u64)
    } else {
        (50_000, 940_000, 20_000, 0)
    };
    let spawn = |cmd: &mut Command| -> Reader {
        Reader(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a reader"),
        )
    };
    let exe = std::env::current_exe().expect("test binary path");
    let rust = spawn(
        Command::new(exe)
            .args([
                "rust_reader_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{name}:{rust_n}")),
    );
    let c = spawn(Command::new(&c_bin).arg(&name).arg(c_n.to_string()));
    let cpp = spawn(Command::new(&cpp_bin).arg(&name).arg(cpp_n.to_string()));
    let python_child = py.as_ref().map(|py| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        spawn(
            Command::new(py)
                .arg(root.join("tools/tests/test_shm.py"))
                .args(["stress-read", &name, &py_n.to_string()])
                .env("PYTHONPATH", root.join("tools")),
        )
    });

    let deadline = Instant::now() + WATCHDOG;
    let rust_out = wait("rust", rust, deadline);
    let c_out = wait("c", c, deadline);
    let cpp_out = wait("c++", cpp, deadline);
    let py_out = python_child.map(|child| wait("python", child, deadline));
    stop.store(true, Ordering::Relaxed);
    let writer = writer_thread.join().expect("writer thread");
    beater.join().expect("heartbeat thread");
    drop(writer);

    let mut results = vec![
        ("rust", parse("rust", &rust_out)),
        ("c", parse("c", &c_out)),
        ("c++", parse("c", &cpp_out)),
    ];
    if let Some(out) = &py_out {
        results.push(("python", parse("python", out)));
    } else {
        println!("python reader skipped: no python with numpy (run `make setup-python`)");
    }
    let mut total = 0;
    for (lang, r) in &results {
        println!(
            "{lang:>6} reader: accepted {:>8}  torn accepted {}  overlapped attempts retried {:>6}  retries exhausted {}",
            r.accepted, r.torn, r.retries, r.exhausted
        );
        assert_eq!(r.torn, 0, "{lang} reader accepted torn samples");
        total += r.accepted;
    }
    println!(
        "writer published {} samples; {} accepted reads in total, 0 torn",
        published.load(Ordering::Relaxed),
        total
    );
    assert!(total >= 1_000_000, "only {total} accepted reads");
}

/// The C header follows the same rules as this crate (docs/shm-layout.md): the segment-name rule, and an empty
/// object is a segment being created (OCELLUS_SHM_E_NOT_RUNNING) while a short one is not a segment at all
/// (OCELLUS_SHM_E_FOREIGN).
#[test]
fn the_c_header_follows_the_name_and_size_rules() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = tmp.path().join("shm_rules");
    compile_file("cc", "-std=c99", "c", "tests/c/shm_rules.c", &exe);
    let pid = std::process::id();
    let (empty, short) = (
        format!("/ocellus-rules-empty-{pid}"),
        format!("/ocellus-rules-short-{pid}"),
    );
    std::fs::write(format!("/dev/shm{empty}"), b"").expect("empty object");
    std::fs::write(format!("/dev/shm{short}"), [7u8; 100]).expect("short object");
    let out = Command::new(&exe)
        .args([&empty, &short])
        .output()
        .expect("run shm_rules");
    let _ = std::fs::remove_file(format!("/dev/shm{empty}"));
    let _ = std::fs::remove_file(format!("/dev/shm{short}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    for name in [
        "/ocellus",
        "/a",
        "/cam-0_front.v2",
        "ocellus",
        "/",
        "/a/b",
        "/.",
        "/..",
        "/a b",
    ] {
        let rust = ocellus_shm::segment_name(name).is_ok() && name.starts_with('/');
        let want = format!("name {name} {}", i32::from(rust));
        assert!(text.lines().any(|l| l == want), "{want} in\n{text}");
    }
    assert!(text.contains(&format!("open {empty} -1")), "{text}");
    assert!(text.contains(&format!("open {short} -4")), "{text}");
}

/// The C header reads what the Rust writer wrote into the prompt table and the status block (including the
/// last-overrun words), as docs/shm-layout.md lays them out.
#[test]
fn the_c_header_reads_the_prompt_table_and_the_status_block() {
    use ocellus_shm::{CameraCounters, Dims, LatentsDtype, ShmWriter, WriterConfig};
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = tmp.path().join("shm_rules");
    compile_file("cc", "-std=c99", "c", "tests/c/shm_rules.c", &exe);
    let name = format!("/ocellus-rules-table-{}", std::process::id());
    let dims = Dims {
        cameras: 1,
        embed_dim: 4,
        num_latents: 2,
        latent_dim: 2,
        max_prompts: 4,
        latents_dtype: LatentsDtype::F32,
    };
    let mut w = ShmWriter::create(&WriterConfig::new(name.as_str(), dims)).expect("create");
    let empty = Command::new(&exe).arg(&name).output().expect("run");
    let empty = String::from_utf8_lossy(&empty.stdout).into_owned();
    assert!(
        empty.contains("prompts v0 n0\n"),
        "an empty table before the first sample: {empty}"
    );
    w.set_prompts(7, &["a cat", "a dog"]).expect("prompts");
    let mut late = [0u64; 7];
    late[2] = 3;
    w.set_counters(
        0,
        &CameraCounters {
            captured: 12,
            dropped: 2,
            late,
            flags: 1 << 16,
            last_overrun_ns: 4_500_000,
            last_late_stages: 0b100,
            ..CameraCounters::default()
        },
    );
    w.set_memory_high_water(123_456_789);
    w.set_recordings(&ocellus_shm::RecorderCounts {
        made: 5,
        dropped: 6,
        errors: 7,
    });
    let out = Command::new(&exe).arg(&name).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    drop(w);
    assert!(text.contains("prompts v7 n2 [a cat] [a dog]\n"), "{text}");
    assert!(
        text.contains(
            "counters captured 12 dropped 2 late2 3 flags 65536 overrun 4500000 stages 4\n"
        ),
        "{text}"
    );
    assert!(text.contains("hwm 123456789\n"), "{text}");
    assert!(text.contains("recordings 5 6 7\n"), "{text}");
}
