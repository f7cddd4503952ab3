//! Allocations on the frame path, counted with a counting global allocator (only on this test's thread).
//!
//! ocellus's own buffers (input tensor, VisionOutput, scores) are reused; tract allocates its intermediate
//! tensors on every run, the same number each time (the binary serves them from its frame-path region:
//! tests/alloc_zero.rs). This test pins the steady state: a constant count per frame, no reallocation of
//! the output, zero for scoring.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ocellus::infer::{InferenceEngine, TractEngine};
use ocellus::manifest::{Manifest, Variant};
use ocellus::prompts::{Ranked, TextEncoder};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call unchanged to the system allocator; counting touches only atomics and a
// const-initialised thread-local without destructor, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `alloc`; `ptr` and `layout` come from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocations, bytes) made by `f` on this thread.
fn counted<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (
        r,
        ALLOCATIONS.load(Ordering::Relaxed) - a0,
        BYTES.load(Ordering::Relaxed) - b0,
    )
}

fn demo() -> Manifest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/manifest.toml");
    Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn frame_path_allocations_are_constant() {
    let manifest = demo();
    for variant in [Variant::Fp32, Variant::Int8] {
        let mut engine =
            TractEngine::load(&manifest, variant.into(), 1).unwrap_or_else(|e| panic!("{e}"));
        let mut out = engine.new_output();
        let pixels: Vec<f32> = (0..engine.input_len())
            .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
            .collect();
        let pointers = (
            out.image_embeds.as_ptr(),
            out.latents.as_ptr(),
            out.patch_tokens.as_ptr(),
        );
        for _ in 0..3 {
            engine
                .run(&pixels, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut per_run = Vec::new();
        for _ in 0..20 {
            let (r, n, bytes) = counted(|| engine.run(&pixels, &mut out));
            r.unwrap_or_else(|e| panic!("{e}"));
            per_run.push((n, bytes));
        }
        let memory = engine.memory();
        println!(
            "{variant}: {} allocations, {} bytes per frame (tract's intermediate tensors); plan estimate: {} bytes total, {} peak live",
            per_run[0].0,
            per_run[0].1,
            memory.encoder.tensor_bytes + memory.resampler.tensor_bytes,
            memory.encoder.peak_live_bytes.max(memory.resampler.peak_live_bytes)
        );
        assert!(
            per_run.iter().all(|&r| r == per_run[0]),
            "{variant}: allocations differ between frames: {per_run:?}"
        );
        assert_eq!(
            pointers,
            (
                out.image_embeds.as_ptr(),
                out.latents.as_ptr(),
                out.patch_tokens.as_ptr()
            ),
            "{variant}: the output buffers were reallocated"
        );
    }
}

#[test]
fn scoring_does_not_allocate() {
    let manifest = demo();
    let mut text = TextEncoder::load(&manifest, Variant::Fp32).unwrap_or_else(|e| panic!("{e}"));
    let prompts: Vec<String> = ["a red circle", "a blue square", "a green triangle"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let set = text.embed(&prompts).unwrap_or_else(|e| panic!("{e}"));
    let image = set.embedding(1).to_vec();
    let mut scores = [0f32; 8];
    let (best, n, _) = counted(|| {
        set.score(&image, &mut scores);
        set.top::<4>(&scores, 2)
    });
    assert_eq!(n, 0, "score + top allocated");
    assert_eq!(best.len(), 2);
    assert_eq!(
        best[0].index, 1,
        "a prompt's own embedding scores highest against itself"
    );
    assert!(best[0].score >= best[1].score);
    let total: f32 = scores[..set.len()].iter().sum();
    assert!((total - 1.0).abs() < 1e-5, "softmax sums to {total}");
    let _: &[Ranked] = &best;
}
