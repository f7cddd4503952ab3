//! Zero system allocations on the frame path, counted by ocellus's own global allocator.
//!
//! The demo pipeline as `ocellus run` builds it (a synthetic YUYV camera, unpaced; preparation; the demo
//! model through tract; scoring; publishing into shared memory) runs 1,000 frames after warm-up. The
//! allocator counts every allocation of the capture and inference threads, as served by the frame-path
//! region or by the system allocator: the system count must stay 0, the capture thread must not allocate
//! at all, tract's per-frame tensors must come from the region, and the region must not grow.
//!
//! The first run has the flight recorder on (`[recorder]`, a 64-frame ring): every frame is copied into its
//! slot on the inference thread, and a trigger halfway through freezes the window and has it written, all
//! within the same zero. Its ring is in the memory plan.
//!
//! The same with `model.threads = 2`: tract's matrix-product workers allocate from the region too.
//!
//! One test per binary: the region and the counters belong to the process.

mod memory_support;

use std::time::Duration;

use std::sync::atomic::Ordering::Relaxed;

use ocellus::alloc::{self, AllocStats};
use ocellus::config::Config;
use ocellus::recorder::External;
use ocellus::thread::ThreadRole;

use memory_support::{build_with, config, config_with_threads, processed, run_until, shm_name};

#[global_allocator]
static ALLOC: alloc::Allocator = alloc::Allocator;

const WARM_UP: u64 = 50;
const FRAMES: u64 = 1_000;
const WATCHDOG: Duration = Duration::from_secs(600);

/// Runs `config`'s pipeline for `WARM_UP` frames, then `FRAMES` more; returns the allocator's snapshots at
/// both ends of that window, the frames in it, and the recordings the recorder made. `take`: the runtime
/// reserves the region (once per process; a later run in the same process uses it as it is). With a
/// recorder, a recording is triggered halfway through the window.
fn measure(config: &Config, what: &str, take: bool) -> (AllocStats, AllocStats, u64, u64, u64) {
    let mut pipeline = build_with(config, &shm_name(what), take);
    let plan = pipeline.plan().clone();
    if config.recorder.enabled {
        // The memory budget counts the ring, slot by slot.
        let m = ocellus::Manifest::load(&config.model.manifest).expect("manifest");
        let shape = ocellus::recorder::ResultsShape {
            embed_dim: m.embed_dim,
            num_latents: m.resampler.num_latents,
            latent_dim: m.resampler.latent_dim,
            max_scores: config.prompts.max,
        };
        let cam = &config.cameras[0];
        let ring = ocellus::recorder::ring_bytes(
            config.recorder.slots(cam.fps),
            cam.max_frame_bytes(),
            &shape,
        );
        let part = plan
            .part("flight recorder")
            .expect("the plan counts the ring");
        assert_eq!(part.bytes, ring * config.cameras.len() as u64);
        assert!(ring > 64 * 614_400);
    }
    assert!(
        alloc::stats().installed,
        "the test's global allocator is ocellus::alloc::Allocator"
    );
    if take {
        let taken = *pipeline.taken().expect("the runtime took its memory");
        assert!(
            alloc::stats().region_bytes == taken.arena_bytes
                && taken.arena_bytes >= plan.arena_bytes
        );
    }

    pipeline.start().unwrap_or_else(|e| panic!("{e}"));
    let tick = Duration::from_millis(5);
    run_until(&pipeline, WARM_UP, WATCHDOG, tick, |_| {});
    let before = alloc::stats();
    let first = processed(&pipeline);
    let mut trigger = pipeline.recorder().map(|r| r.trigger());
    run_until(&pipeline, first + FRAMES, WATCHDOG, tick, |n| {
        if n >= first + FRAMES / 2 {
            if let Some(t) = trigger.take() {
                t.request(External::Command);
            }
        }
    });
    let after = alloc::stats();
    let last = processed(&pipeline);
    pipeline.stop();
    let made = pipeline.stats().recorder.made.load(Relaxed);
    (before, after, first, last - first, made)
}

fn assert_no_system_allocation(d: &AllocStats, frames: u64, what: &str) {
    assert!(frames >= FRAMES);
    for role in ThreadRole::ALL {
        assert_eq!(
            d.role(role).system,
            0,
            "{what}: {} threads made {} system allocations in {frames} frames",
            role.name(),
            d.role(role).system
        );
    }
    assert_eq!(d.fallbacks, 0, "{what}: the region ran out");
    assert_eq!(
        d.capture.region, 0,
        "{what}: a YUYV capture thread allocates nothing at all"
    );
    assert!(
        d.inference.region >= 500 * frames,
        "{what}: tract's per-frame tensors ({} allocations in {frames} frames) are served by the region",
        d.inference.region
    );
}

fn report(d: &AllocStats, after: &AllocStats, first: u64, frames: u64, what: &str) {
    println!(
        "{what}: {frames} frames after {first} warm-up frames: system allocations capture {}, inference {}, \
         workers {}; region allocations capture {}, inference {} ({:.0} per frame), workers {}; region \
         {} KiB of {} KiB carved, fallbacks {}",
        d.capture.system,
        d.inference.system,
        d.worker.system,
        d.capture.region,
        d.inference.region,
        d.inference.region as f64 / frames as f64,
        d.worker.region,
        after.region_high_water / 1024,
        after.region_bytes / 1024,
        d.fallbacks,
    );
}

#[test]
fn frame_path_makes_no_system_allocation_after_warm_up() {
    let recordings = tempfile::tempdir().expect("tempdir");
    let one = config(
        1,
        "yuyv",
        640,
        480,
        &format!(
            "[memory]\nlock = false\n\n[recorder]\nenabled = true\nframes = 64\nafter = 0.25\non-late = []\n\
             on-camera-fault = false\ndir = \"{}\"\n",
            recordings.path().display()
        ),
    );
    let (before, after, first, frames, made) = measure(&one, "alloc-zero", true);
    let d = after.since(&before);
    report(
        &d,
        &after,
        first,
        frames,
        "model.threads = 1, flight recorder on",
    );
    assert_no_system_allocation(&d, frames, "model.threads = 1, flight recorder on");
    assert_eq!(made, 1, "the triggered window was written");
    assert_eq!(ocellus::recorder::recordings_in(recordings.path()).len(), 1);
    assert_eq!(d.worker, Default::default(), "no workers with one thread");
    assert_eq!(
        after.region_high_water, before.region_high_water,
        "the region's footprint grew after warm-up"
    );
    assert!(after.region_high_water <= after.region_bytes);
    // The region is sized from what the engine's calibration runs carved (alloc::trace), not from the
    // planned tensors: within 1.5x of what the frame path really uses (docs/memory.md).
    assert!(
        after.region_bytes * 2 <= after.region_high_water * 3,
        "region {} KiB is more than 1.5x its high water {} KiB",
        after.region_bytes / 1024,
        after.region_high_water / 1024
    );

    // tract's matrix-product workers (model.threads = 2) allocate from the region too. The process keeps
    // the region reserved above (same model, same size).
    let two = config_with_threads(1, "yuyv", 640, 480, 2, "[memory]\nlock = false\n");
    let (before, after, first, frames, _) = measure(&two, "alloc-zero-2", false);
    let d = after.since(&before);
    report(&d, &after, first, frames, "model.threads = 2");
    assert_no_system_allocation(&d, frames, "model.threads = 2");

    // A region block freed by another thread goes back to the region; growing one keeps its bytes. (Small:
    // the region is sized to what the frame path needs, with little room to spare. Other threads may still
    // free region blocks meanwhile: the engines' workers exit on their own.)
    let block = std::thread::spawn(|| {
        alloc::register_thread(ThreadRole::Worker);
        let mut v: Vec<u32> = (0..256).collect();
        assert!(alloc::region_contains(v.as_ptr().cast()));
        v.extend(256..4096u32);
        assert!(alloc::region_contains(v.as_ptr().cast()));
        v
    })
    .join()
    .expect("allocating thread");
    assert!(
        block.iter().copied().eq(0..4096u32),
        "realloc kept the contents"
    );
    let bytes = (block.capacity() * 4) as u64;
    let in_use = alloc::stats().region_in_use;
    drop(block);
    assert!(
        alloc::stats().region_in_use + bytes <= in_use,
        "a block freed by this (unregistered) thread went back to the region"
    );

    // A request the region cannot hold is served by the system allocator and counted, never a crash.
    let stats = alloc::stats();
    alloc::register_thread(ThreadRole::Worker);
    let big = vec![1u8; stats.region_bytes as usize + 4096];
    alloc::unregister_thread();
    let over = alloc::stats().since(&stats);
    assert!(!alloc::region_contains(big.as_ptr()));
    assert_eq!(big.iter().map(|&b| b as u64).sum::<u64>(), big.len() as u64);
    assert_eq!((over.fallbacks, over.worker.system), (1, 1));
    drop(big);
}
