//! The long soak (`make soak`, not in CI; docs/soak.md): the demo pipeline as `ocellus run` builds it, two
//! synthetic 640x480 YUYV cameras at 200 fps, for `SOAK_FRAMES` published frames (default 1,000,000) or
//! `SOAK_SECONDS` (default 7,200), whichever comes first, while
//! - the prompts file is rewritten every 3 s (three prompt sets in turn, written and renamed into place),
//! - a control loop in a separate process (tests/c/soak_reader.c, built from include/ocellus/shm.h) reads
//!   every camera's newest result at 1 kHz with its checksum verified,
//! - the process's RSS, memory high water (VmHWM), locked bytes, the frame-path region's high water, the
//!   frame-path threads' system allocations, open file descriptors and threads are sampled every
//!   `SOAK_SAMPLE_SECONDS` (default 10) into `$SOAK_OUT/soak.csv` and drawn in `$SOAK_OUT/soak.svg`.
//!
//! Passes when, after the warm-up (the first sample after `WARM_UP` frames), the descriptors, threads and
//! region high water never change, the frame path asks the system allocator for nothing, RSS moves by at
//! most 2 MiB, the run counts 0 errors, every prompt set was picked up, and the reader saw no sequence go
//! back. Ignored in a plain `cargo test`: `make soak` runs it with `--ignored`.

mod memory_support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocellus::alloc;
use ocellus::config::{Config, Origin};
use ocellus::runtime::{Runtime, RuntimeOptions, ShmTarget};

use memory_support::{processed, root, shm_name};

#[global_allocator]
static ALLOC: alloc::Allocator = alloc::Allocator;

const WARM_UP: u64 = 20_000;
const PROMPT_SETS: [&[&str]; 3] = [
    &["a red circle", "a blue square", "a green triangle"],
    &[
        "a yellow circle",
        "a red square",
        "a blue triangle",
        "a green circle",
        "a yellow square",
    ],
    &["a blue circle", "a green square"],
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a whole number"))
        })
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    seconds: f64,
    frames: u64,
    rss: u64,
    high_water: u64,
    locked: u64,
    region_high_water: u64,
    system_allocations: u64,
    fds: u64,
    threads: u64,
}

fn sample(started: Instant, runtime: &Runtime) -> Sample {
    let mem = alloc::process_memory().expect("/proc/self/status");
    let a = alloc::stats();
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: in /proc/self/status");
    Sample {
        seconds: started.elapsed().as_secs_f64(),
        frames: processed(runtime),
        rss: mem.rss,
        high_water: mem.high_water,
        locked: mem.locked,
        region_high_water: a.region_high_water,
        system_allocations: a.system_allocations(),
        fds: std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .count() as u64,
        threads,
    }
}

fn write_prompts(path: &Path, set: &[&str]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, set.join("\n") + "\n").expect("write the prompts file");
    std::fs::rename(&tmp, path).expect("rename the prompts file into place");
}

fn compile_reader(out: &Path) {
    let status = Command::new("gcc")
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
        ])
        .arg(root().join("include"))
        .arg(root().join("tests/c/soak_reader.c"))
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("run gcc: {e}"));
    assert!(status.success(), "gcc failed on tests/c/soak_reader.c");
}

#[test]
#[ignore = "hours long: make soak"]
fn soak_memory_descriptors_and_threads_stay_flat() {
    let frames_target = env_u64("SOAK_FRAMES", 1_000_000);
    let seconds_limit = env_u64("SOAK_SECONDS", 7_200);
    let every = Duration::from_secs(env_u64("SOAK_SAMPLE_SECONDS", 10).max(1));
    let out = std::env::var_os("SOAK_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ocellus-soak"));
    std::fs::create_dir_all(&out).expect("create SOAK_OUT");
    let dir = tempfile::tempdir().expect("tempdir");

    let prompts = dir.path().join("prompts.txt");
    write_prompts(&prompts, PROMPT_SETS[0]);
    let mut text = String::new();
    for i in 0..2 {
        text += &format!(
            "[[camera]]\nname = \"cam{i}\"\nsource = \"synthetic\"\npixel-format = \"yuyv\"\n\
             width = 640\nheight = 480\nfps = 200\nseed = {}\n\n",
            i + 1
        );
    }
    text += &format!(
        "[model]\nmanifest = \"{}\"\nvariant = \"fp32\"\nthreads = 1\nmeasurements = \"{}\"\n\n\
         [prompts]\nfile = \"{}\"\nmax = 8\n",
        root().join("models/demo/manifest.toml").display(),
        dir.path().join("measurements.toml").display(),
        prompts.display()
    );
    let config = Config::parse(&text, Origin::File(dir.path().join("soak.toml")))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let shm = shm_name("soak");
    let mut runtime = Runtime::build(
        &config,
        RuntimeOptions {
            shm: ShmTarget::Named(shm.clone()),
            take_memory: true,
            ..RuntimeOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let reader_bin = dir.path().join("soak_reader");
    compile_reader(&reader_bin);
    runtime.start().unwrap_or_else(|e| panic!("{e}"));
    let reader = Command::new(&reader_bin)
        .arg(format!("/{shm}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the C reader");

    // The prompts writer: every 3 s the next set, written and renamed into place.
    let stop = Arc::new(AtomicBool::new(false));
    let rewrites = {
        let (stop, prompts) = (Arc::clone(&stop), prompts.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(3));
                n += 1;
                write_prompts(&prompts, PROMPT_SETS[(n % 3) as usize]);
            }
            n
        })
    };

    let started = Instant::now();
    let mut samples = vec![sample(started, &runtime)];
    let mut next = started + every;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += every;
        let s = sample(started, &runtime);
        samples.push(s);
        eprintln!(
            "soak: {:.0} s, {} frames, RSS {:.1} MiB, region {:.1} KiB, fds {}, threads {}",
            s.seconds,
            s.frames,
            s.rss as f64 / 1048576.0,
            s.region_high_water as f64 / 1024.0,
            s.fds,
            s.threads
        );
        assert!(
            runtime.is_running(),
            "the pipeline stopped after {} frames",
            s.frames
        );
        if s.frames >= frames_target || s.seconds >= seconds_limit as f64 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rewrites = rewrites.join().expect("the prompts writer");
    let swaps = runtime.prompts().version();
    runtime.stop();
    let summary = runtime.stats().summary();
    let reader = reader.wait_with_output().expect("the C reader");
    let reader_line = String::from_utf8_lossy(&reader.stdout).trim().to_owned();

    write_csv(&out.join("soak.csv"), &samples);
    std::fs::write(out.join("soak.svg"), svg(&samples)).expect("write soak.svg");
    let last = *samples.last().expect("samples");
    let warm: Vec<Sample> = samples
        .iter()
        .copied()
        .skip_while(|s| s.frames < WARM_UP)
        .collect();
    assert!(
        warm.len() >= 3,
        "too few samples after the warm-up to judge: lengthen the run"
    );
    let span = |f: fn(&Sample) -> u64| {
        let (lo, hi) = warm
            .iter()
            .map(f)
            .fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
        (lo, hi)
    };
    let (rss, fds, threads, region, system) = (
        span(|s| s.rss),
        span(|s| s.fds),
        span(|s| s.threads),
        span(|s| s.region_high_water),
        span(|s| s.system_allocations),
    );
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{} frames in {:.0} s ({:.0} fps); errors {}, late {}, dropped {}; prompts rewritten {rewrites} times, \
         prompt set version {swaps}\nafter warm-up ({} samples from frame {}): RSS {:.1}..{:.1} MiB, \
         VmHWM {:.1} MiB, locked {:.1} MiB, region high water {}..{} bytes, frame-path system allocations \
         {}..{}, fds {}..{}, threads {}..{}\nreader: {reader_line}",
        last.frames,
        last.seconds,
        last.frames as f64 / last.seconds,
        summary.errors,
        summary.late_frames,
        summary.dropped,
        warm.len(),
        warm[0].frames,
        rss.0 as f64 / 1048576.0,
        rss.1 as f64 / 1048576.0,
        last.high_water as f64 / 1048576.0,
        last.locked as f64 / 1048576.0,
        region.0,
        region.1,
        system.0,
        system.1,
        fds.0,
        fds.1,
        threads.0,
        threads.1,
    );
    std::fs::write(out.join("soak.txt"), &report).expect("write soak.txt");
    eprintln!("{report}");

    assert!(
        reader.status.success(),
        "the C reader failed: {reader_line}"
    );
    assert!(reader_line.contains(" regressions=0 "), "{reader_line}");
    assert_eq!(summary.errors, 0, "{report}");
    // A descriptor open at the instant of a sample is not a leak: this process's prompt writer and the
    // runtime's prompt watcher open the prompts file every few seconds, and the 2-hour run of 2026-12-05 saw 8
    // instead of 7 in one of 690 samples. A leak stays: the count must be back to the warm-up's by the next
    // sample, and the last sample must equal the first.
    let baseline = warm[0].fds;
    let stayed = warm
        .windows(2)
        .any(|w| w[0].fds > baseline && w[1].fds > baseline);
    assert!(
        !stayed && warm[warm.len() - 1].fds == baseline,
        "open descriptors changed after warm-up (more than one sample above {baseline}, or a different count \
         at the end)\n{report}"
    );
    assert_eq!(
        threads.0, threads.1,
        "thread count changed after warm-up\n{report}"
    );
    assert_eq!(
        region.0, region.1,
        "the frame-path region grew after warm-up\n{report}"
    );
    assert_eq!(
        system.0, system.1,
        "the frame path allocated from the system\n{report}"
    );
    assert!(
        rss.1 - rss.0 <= 2 << 20,
        "RSS moved by more than 2 MiB\n{report}"
    );
    // Version 1 is the first set; every rewrite but perhaps the last (made just before the stop) is picked up.
    assert!(
        swaps >= rewrites,
        "prompt rewrites were not picked up: {rewrites} rewrites, version {swaps}\n{report}"
    );
}

fn write_csv(path: &Path, samples: &[Sample]) {
    let mut csv = String::from(
        "seconds,frames,rss_bytes,vmhwm_bytes,locked_bytes,region_high_water_bytes,system_allocations,fds,threads\n",
    );
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{},{}",
            s.seconds,
            s.frames,
            s.rss,
            s.high_water,
            s.locked,
            s.region_high_water,
            s.system_allocations,
            s.fds,
            s.threads
        );
    }
    std::fs::write(path, csv).expect("write soak.csv");
}

/// Four panels over the frames published: RSS (MiB), the region's high water (KiB), descriptors, threads.
fn svg(samples: &[Sample]) -> String {
    const W: f64 = 720.0;
    const PANEL: f64 = 130.0;
    const LEFT: f64 = 90.0;
    const RIGHT: f64 = 20.0;
    type Series = (&'static str, fn(&Sample) -> f64);
    let series: [Series; 4] = [
        ("RSS (MiB)", |s| s.rss as f64 / 1048576.0),
        ("frame-path region high water (KiB)", |s| {
            s.region_high_water as f64 / 1024.0
        }),
        ("open file descriptors", |s| s.fds as f64),
        ("threads", |s| s.threads as f64),
    ];
    let max_frames = samples.iter().map(|s| s.frames).max().unwrap_or(1).max(1) as f64;
    let h = PANEL * series.len() as f64 + 40.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" \
         font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, (name, f)) in series.iter().enumerate() {
        let top = 20.0 + i as f64 * PANEL;
        let (plot_top, plot_h) = (top + 16.0, PANEL - 40.0);
        let values: Vec<f64> = samples.iter().map(f).collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A flat series is drawn mid-panel on a +-1 % (at least +-1) range, so flat looks flat.
        let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.01).max(1.0);
        let (y0, y1) = (lo - pad, hi + pad);
        let x = |frames: u64| LEFT + (W - LEFT - RIGHT) * frames as f64 / max_frames;
        let y = |v: f64| plot_top + plot_h * (1.0 - (v - y0) / (y1 - y0));
        let _ = writeln!(
            out,
            "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{name}: {lo:.1} .. {hi:.1}</text>",
            top + 10.0
        );
        let _ = writeln!(
            out,
            "<rect x=\"{LEFT}\" y=\"{plot_top}\" width=\"{}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>",
            W - LEFT - RIGHT
        );
        for v in [y0, y1] {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>",
                LEFT - 4.0,
                y(v) + 4.0
            );
        }
        let points: Vec<String> = samples
            .iter()
            .zip(&values)
            .map(|(s, v)| format!("{:.1},{:.1}", x(s.frames), y(*v)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">frames published (0 .. {})</text>\n</svg>",
        (LEFT + W - RIGHT) / 2.0,
        h - 8.0,
        max_frames as u64
    );
    out
}
