//! The memory budget: a configuration that does not fit `budgets.memory-mib` is refused before anything runs,
//! with every part's size and the fix; one that fits is accepted; and a 10,000-frame run's resident set stays
//! within the plan (which includes the fixed overhead: code, stacks, start-up heap) and does not grow.
//!
//! The RSS test runs 10,000 frames of an unpaced synthetic camera through the whole pipeline; about 2-4
//! minutes on a 2-core machine (it prints its figures with --nocapture).

mod memory_support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ocellus::alloc;
use ocellus::budget::MemoryPlan;
use ocellus::manifest::{Manifest, Variant};
use ocellus::runtime::memory;

use memory_support::{build, config, processed, root, run_until, shm_name};

#[global_allocator]
static ALLOC: alloc::Allocator = alloc::Allocator;

const MIB: u64 = 1 << 20;

fn ocellus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ocellus"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run the ocellus binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Two 640x480 YUYV cameras and the demo model with `memory-mib` as the budget.
fn write_config(dir: &Path, memory_mib: u64, shm: &str) -> String {
    let path = dir.join(format!("budget-{memory_mib}.toml"));
    let body = format!(
        "[[camera]]\nname = \"front\"\npixel-format = \"yuyv\"\nwidth = 640\nheight = 480\npool-size = 4\n\n\
         [[camera]]\nname = \"rear\"\npixel-format = \"yuyv\"\nwidth = 640\nheight = 480\npool-size = 4\n\n\
         [model]\nmanifest = \"{}\"\n\n[budgets]\nmemory-mib = {memory_mib}\n\n[memory]\nlock = false\n\n\
         [shm]\nname = \"{shm}\"\n",
        root().join("models/demo/manifest.toml").display()
    );
    std::fs::write(&path, body).expect("write config");
    path.display().to_string()
}

/// "57.2 MiB" / "600 KiB" / "12 B" as printed by `budget::human`, in bytes.
fn parse_size(s: &str) -> u64 {
    let (n, unit) = s.trim().split_once(' ').expect("a size with a unit");
    let n: f64 = n.parse().expect("a number");
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => MIB as f64,
        "GiB" => 1024.0 * MIB as f64,
        other => panic!("unit {other}"),
    };
    (n * scale) as u64
}

/// The size printed for `part` in `ocellus check`'s memory plan.
fn plan_line(stdout: &str, part: &str) -> u64 {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(part))
        .unwrap_or_else(|| panic!("no '{part}' line in:\n{stdout}"));
    let rest = line[part.len()..].trim_start();
    let end = rest
        .find("iB")
        .map(|i| i + 2)
        .or_else(|| rest.find(" B").map(|i| i + 2))
        .expect("a size");
    parse_size(&rest[..end])
}

const PARTS: [&str; 12] = [
    "frame pools",
    "camera sources",
    "prepared tensors",
    "model weights",
    "model loading",
    "tract working memory",
    "text encoder runs",
    "result buffers",
    "shared-memory segment",
    "code and libraries",
    "thread stacks",
    "start-up heap",
];

#[test]
fn a_budget_that_fits_is_accepted_and_check_prints_every_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), 512, &shm_name("fits"));
    let out = ocellus(&["check", "--config", &cfg]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "check failed: {}{stdout}",
        text(&out.stderr)
    );
    assert!(stdout.contains("memory plan fits"), "{stdout}");
    for part in PARTS {
        assert!(plan_line(&stdout, part) > 0 || part == "shared-memory segment");
    }
    assert!(stdout.contains("frame pools") && stdout.contains("2 x 4 x 600 KiB"));
    let sum: u64 = PARTS.iter().map(|p| plan_line(&stdout, p)).sum();
    let total = plan_line(&stdout, "total");
    // Each line is rounded to 0.1 MiB (or 1 KiB).
    assert!(
        sum.abs_diff(total) <= PARTS.len() as u64 * MIB / 10,
        "{sum} vs {total}"
    );
}

#[test]
fn a_budget_too_small_is_refused_before_anything_runs_with_each_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shm = shm_name("refused");
    let cfg = write_config(dir.path(), 16, &shm);
    for args in [
        vec![
            "run",
            "--config",
            &cfg,
            "--frames",
            "5",
            "--status-interval",
            "0",
        ],
        vec!["check", "--config", &cfg],
    ] {
        let out = ocellus(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("budget exceeded:") && stderr.contains("16 MiB allowed"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("frame pools 2 x 4 x 600 KiB = 4.7 MiB"),
            "{stderr}"
        );
        for part in [
            "camera sources",
            "prepared tensors",
            "model weights",
            "result buffers",
            "code and libraries",
            "thread stacks",
            "start-up heap",
        ] {
            assert!(stderr.contains(part), "{part} missing: {stderr}");
        }
        assert!(
            stderr.contains("raise budgets.memory-mib to at least"),
            "{stderr}"
        );
        assert!(
            !text(&out.stdout).contains("frames in"),
            "nothing may run: {}",
            text(&out.stdout)
        );
    }
    assert!(
        !Path::new("/dev/shm").join(&shm).exists(),
        "a refused run created its shared-memory segment"
    );
}

/// The plan is checked twice: from the files before anything is loaded, then with what only the planned
/// models tell (the frame-path region measured for them, the text encoder's run). A budget between the two
/// passes the first and is refused by the second, naming the planned parts.
#[test]
fn a_budget_that_only_the_planned_models_exceed_is_refused_after_planning() {
    use ocellus::infer::{EngineMemory, FileSize, PlanMemory};
    use ocellus::manifest::ModelRole;
    use ocellus::runtime::memory::ModelMemory;
    let manifest =
        Manifest::load(&root().join("models/demo/manifest.toml")).unwrap_or_else(|e| panic!("{e}"));
    let estimate = memory::plan(
        &config(1, "yuyv", 640, 480, ""),
        &manifest,
        Variant::Fp32,
        true,
        None,
        &[],
    );
    let file = |role| FileSize {
        role,
        variant: Variant::Fp32,
        path: "x.onnx".into(),
        file_bytes: 1 << 20,
        weight_bytes: 1 << 20,
    };
    let engine = EngineMemory {
        files: vec![file(ModelRole::Vision), file(ModelRole::Resampler)],
        encoder: PlanMemory::default(),
        resampler: PlanMemory::default(),
        output_bytes: 1024,
        measured: None,
    };
    let models = ModelMemory {
        engine: &engine,
        text_files: &[],
        text_run: PlanMemory {
            tensor_bytes: 4 * MIB,
            ..PlanMemory::default()
        },
        measured_region: 24 * MIB,
    };
    // A budget 8 MiB above the estimate: the measured region alone is 24 MiB.
    let budget = estimate.total_bytes() / MIB + 8;
    let config = config(
        1,
        "yuyv",
        640,
        480,
        &format!("[budgets]\nmemory-mib = {budget}\n"),
    );
    let estimate = memory::plan(&config, &manifest, Variant::Fp32, true, None, &[]);
    estimate.check().expect("the estimate fits");
    let planned = memory::plan(&config, &manifest, Variant::Fp32, true, Some(&models), &[]);
    let err = planned.check().expect_err("the planned models do not fit");
    let message = err.to_string();
    assert!(message.contains("tract working memory region"), "{message}");
    assert!(message.contains("text encoder runs"), "{message}");
    assert!(
        !message.contains("before the models are planned"),
        "{message}"
    );
}

#[test]
fn the_estimate_counts_what_the_config_asks_for() {
    let manifest =
        Manifest::load(&root().join("models/demo/manifest.toml")).unwrap_or_else(|e| panic!("{e}"));
    let small = config(1, "yuyv", 640, 480, "");
    let big = config(
        3,
        "rgb24",
        1920,
        1080,
        "[budgets]\nmemory-mib = 64\n[prompts]\nmax = 1024\n",
    );
    let a = memory::plan(&small, &manifest, Variant::Fp32, true, None, &[]);
    let b = memory::plan(&big, &manifest, Variant::Fp32, true, None, &[]);
    let pools = |p: &MemoryPlan| p.part("frame pools").map(|p| p.bytes).unwrap_or(0);
    assert_eq!(pools(&a), 4 * 640 * 480 * 2);
    assert_eq!(pools(&b), 3 * 4 * 1920 * 1080 * 3);
    assert!(!a.planned && a.arena_bytes == 0);
    let shm = |p: &MemoryPlan| p.part("shared-memory segment").map(|p| p.bytes);
    assert!(shm(&b) > shm(&a));
    assert_eq!(
        memory::plan(&small, &manifest, Variant::Fp32, false, None, &[])
            .part("shared-memory segment")
            .map(|p| p.bytes),
        Some(0)
    );
    let e = b.check().expect_err("3 x 1080p RGB in 64 MiB");
    assert_eq!(e.allowed, 64 * MIB);
    assert_eq!(e.needed, b.total_bytes());
    assert!(
        e.to_string()
            .contains("frame pools 3 x 4 x 5.9 MiB = 71.2 MiB"),
        "{e}"
    );
}

#[test]
fn resident_memory_stays_within_the_plan_and_does_not_grow_over_10000_frames() {
    const FRAMES: u64 = 10_000;
    const WARM_UP: u64 = 200;
    let config = config(1, "yuyv", 320, 240, "[memory]\nlock = true\n");
    let mut pipeline = build(&config, &shm_name("rss"));
    let plan = pipeline.plan().clone();
    let taken = *pipeline.taken().expect("the runtime took its memory");
    let started = alloc::stats();
    pipeline.start().unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    run_until(
        &pipeline,
        FRAMES,
        Duration::from_secs(1800),
        Duration::from_millis(200),
        |frames| {
            if frames >= WARM_UP {
                if let Some(m) = alloc::process_memory() {
                    samples.push((frames, m.rss));
                }
            }
        },
    );
    let frames = processed(&pipeline);
    pipeline.stop();
    let end = alloc::process_memory().expect("/proc/self/status");
    let a = alloc::stats().since(&started);

    let third = samples.len() / 3;
    assert!(third >= 3, "too few samples: {}", samples.len());
    let max = |s: &[(u64, u64)]| s.iter().map(|&(_, r)| r).max().unwrap_or(0);
    let (early, late) = (max(&samples[..third]), max(&samples[2 * third..]));
    println!(
        "{frames} frames in {:.0} s, memory {}locked: VmRSS max in the first third {:.1} MiB, in the last third {:.1} MiB, \
         VmHWM {:.1} MiB; plan {:.1} MiB (budget {} MiB); region {} KiB, high water {} KiB; frame-path \
         allocations: {} region, {} system",
        t0.elapsed().as_secs_f64(),
        if taken.locked { "" } else { "not " },
        early as f64 / MIB as f64,
        late as f64 / MIB as f64,
        end.high_water as f64 / MIB as f64,
        plan.total_bytes() as f64 / MIB as f64,
        config.budgets.memory_mib,
        a.region_bytes / 1024,
        a.region_high_water / 1024,
        a.region_allocations(),
        a.system_allocations(),
    );
    println!("{plan}");
    assert!(frames >= FRAMES);
    assert!(
        end.high_water <= plan.total_bytes(),
        "peak RSS {} exceeds the plan's {} bytes",
        end.high_water,
        plan.total_bytes()
    );
    assert!(
        late <= early + MIB,
        "RSS grew from {early} to {late} bytes over the run"
    );
    assert_eq!(a.system_allocations(), 0);
    assert_eq!(a.fallbacks, 0);
}

#[test]
fn memory_keys_are_validated() {
    let parse = |extra: &str| {
        ocellus::config::Config::parse(
            &format!("[[camera]]\nname = \"c\"\n{extra}"),
            ocellus::config::Origin::Embedded,
        )
    };
    let d = parse("").unwrap_or_else(|e| panic!("{e}")).memory;
    assert_eq!(d, ocellus::alloc::MemorySettings::default());
    assert!(d.lock && !d.lock_required && d.arena_mib.is_none());
    let m = parse("[memory]\nlock = true\nlock-required = true\narena-mib = 24\n")
        .unwrap_or_else(|e| panic!("{e}"))
        .memory;
    assert_eq!(
        (m.lock, m.lock_required, m.arena_mib),
        (true, true, Some(24))
    );
    assert_eq!(
        parse("[memory]\narena-mib = 0\n")
            .unwrap_or_else(|e| panic!("{e}"))
            .memory
            .arena_mib,
        None
    );
    for (bad, key) in [
        (
            "[memory]\nlock = false\nlock-required = true\n",
            "memory.lock-required",
        ),
        ("[memory]\narena-mib = 9999999999\n", "memory.arena-mib"),
        ("[memory]\nlock = \"yes\"\n", "memory.lock"),
        ("[memory]\nmlock = true\n", "memory"),
    ] {
        let e = parse(bad).expect_err(bad);
        assert!(
            e.key().is_some_and(|k| k.starts_with(key)),
            "{bad}: {e} (key {:?})",
            e.key()
        );
    }
}

/// The plan counts the load-time peak: three copies of a file's weights while it loads, beside the files
/// loaded before it; on `auto`'s first start, the heaviest candidate it measures (one engine at a time).
#[test]
fn the_plan_counts_the_load_time_peak_and_autos_first_start() {
    use ocellus::budget::parts;
    use ocellus::manifest::ModelRole::{Resampler, Text, Vision};
    let manifest =
        Manifest::load(&root().join("models/demo/manifest.toml")).unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(1, "yuyv", 640, 480, "");
    let loading = |p: &MemoryPlan| {
        p.parts
            .iter()
            .find(|p| p.name == parts::LOADING)
            .map(|p| p.bytes)
            .expect("a model loading part")
    };
    let size = |role, v| manifest.file(role, v).map(|f| f.size).expect("demo file");
    let (vi, ri, ti) = (
        size(Vision, Variant::Int8),
        size(Resampler, Variant::Int8),
        size(Text, Variant::Int8),
    );
    let (vf, rf) = (size(Vision, Variant::Fp32), size(Resampler, Variant::Fp32));
    let weights = vi + ri + ti;
    let kept_peak = (3 * vi).max(vi + 3 * ri).max(vi + ri + 3 * ti);

    let kept = memory::plan(&cfg, &manifest, Variant::Int8, true, None, &[]);
    assert_eq!(loading(&kept), kept_peak.saturating_sub(weights));

    let first = memory::plan(
        &cfg,
        &manifest,
        Variant::Int8,
        true,
        None,
        &[Variant::Int8, Variant::Fp32],
    );
    let first_peak = kept_peak.max(3 * vf).max(vf + 3 * rf);
    assert_eq!(loading(&first), first_peak.saturating_sub(weights));
    assert!(
        first_peak > kept_peak,
        "the demo's fp32 vision file is the heaviest load"
    );
    assert_eq!(
        first.total_bytes() - kept.total_bytes(),
        first_peak - kept_peak
    );
}
