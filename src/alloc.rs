//! The frame path's memory: a global allocator that serves the frame-path threads from a region taken at
//! start-up, counts every allocation they make, and the process-wide memory lock.
//!
//! [`Allocator`] wraps the system allocator. A thread on the frame path (the capture threads, the inference
//! thread, tract's matrix-product workers) marks itself with [`register_thread`]; from then on its
//! allocations come from the region [`reserve`] mapped at start-up, when there is one. Every other thread
//! allocates from the system as usual. tract allocates the same tensors in the same order on every run
//! (about a thousand allocations per demo frame), so the region is a segregated-fit heap: each size class
//! keeps a free list, a block once carved from the region only ever returns to its class's list, and after
//! the first frame every request finds a block of its class waiting. The region never grows and never goes
//! back to the system; its footprint after warm-up is the high-water mark [`AllocStats::region_high_water`].
//!
//! * **Which memory a pointer is** is decided by its address: a block inside the region goes back to its
//!   class's list whichever thread frees it, anything else to the system allocator. So a tensor made on the
//!   inference thread and dropped elsewhere is safe, and so is the reverse.
//! * **Locking**: the region's lists are guarded by one spinlock, held for a handful of instructions. The
//!   inference thread is its steady user, tract's matrix-product workers an occasional one; other threads
//!   take it only to free a region block, which the frame path does not hand them. A waiter spins briefly,
//!   then sleeps 20 us at a time, so a real-time thread cannot starve a holder preempted on its CPU.
//! * **Exhaustion** never fails an allocation: a request the region cannot serve (full, or too large) goes
//!   to the system allocator, is counted in [`AllocStats::fallbacks`], and the first one prints a warning
//!   to stderr (with one `write(2)`, no allocation).
//! * **Counting**: every allocation of a registered thread is counted per [`ThreadRole`], as served by the
//!   region or by the system. [`stats`] reads the counters; `system` allocations of frame-path threads
//!   after warm-up are what the real-time contract says are zero (tests/alloc_zero.rs checks 1,000 frames).
//!
//! The binary installs it (`#[global_allocator]` in src/main.rs); a program embedding the library does the
//! same to get the region:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: ocellus::alloc::Allocator = ocellus::alloc::Allocator;
//! ```
//!
//! Without it nothing breaks: [`register_thread`] only sets a thread-local flag and [`stats`] reports
//! `installed: false`.

mod os;

use crate::thread::ThreadRole;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize};

pub use os::{
    heap_in_use, mapped_file_bytes, memlock_limit, page_size, process_memory, ProcessMemory,
};

/// `[memory]`: the frame-path region and the memory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySettings {
    /// Lock all of the process's memory (`mlockall`) before the pipeline starts.
    pub lock: bool,
    /// Refuse to start when the lock fails (otherwise warn and run unlocked).
    pub lock_required: bool,
    /// Size of the frame-path region in MiB; `None`: sized from the planned models.
    pub arena_mib: Option<u64>,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings {
            lock: true,
            lock_required: false,
            arena_mib: None,
        }
    }
}

thread_local! {
    // Const-initialised and without destructor: reading it never allocates, even while the thread exits.
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

/// Marks the calling thread as a frame-path thread: its allocations are served by the region (once
/// [`reserve`]d) and counted under `role`. Allocates nothing; call it first thing in the thread.
pub fn register_thread(role: ThreadRole) {
    ROLE.set(role as u8);
}

/// Undoes [`register_thread`] for the calling thread.
pub fn unregister_thread() {
    ROLE.set(0);
}

/// The calling thread's role, if it registered.
pub fn current_role() -> Option<ThreadRole> {
    ThreadRole::from_u8(ROLE.get())
}

// ---- counters ----

const ROLE_SLOTS: usize = 4;

struct Counters {
    system: [AtomicU64; ROLE_SLOTS],
    region: [AtomicU64; ROLE_SLOTS],
    fallbacks: AtomicU64,
}

static COUNTERS: Counters = Counters {
    system: [const { AtomicU64::new(0) }; ROLE_SLOTS],
    region: [const { AtomicU64::new(0) }; ROLE_SLOTS],
    fallbacks: AtomicU64::new(0),
};

/// Set by the first allocation through [`Allocator`]: whether this process installed it.
static INSTALLED: AtomicBool = AtomicBool::new(false);
static WARNED: AtomicBool = AtomicBool::new(false);

/// Allocations of one role's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleCounts {
    /// Served by the system allocator (no region, region full, or too large).
    pub system: u64,
    /// Served by the region.
    pub region: u64,
}

/// A snapshot of the allocator's counters and the region's use. Counts only ever grow; subtract two
/// snapshots ([`AllocStats::since`]) to get what happened in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Whether [`Allocator`] is this process's global allocator (without it every count stays 0).
    pub installed: bool,
    pub capture: RoleCounts,
    pub inference: RoleCounts,
    pub worker: RoleCounts,
    /// Requests of registered threads the region could not serve (also counted in `system`).
    pub fallbacks: u64,
    /// Size of the region (0: none reserved).
    pub region_bytes: u64,
    /// Bytes carved from the region so far: its footprint, which stops growing once warm.
    pub region_high_water: u64,
    /// Bytes in blocks currently handed out.
    pub region_in_use: u64,
}

impl AllocStats {
    /// The counts of `role`.
    pub fn role(&self, role: ThreadRole) -> RoleCounts {
        match role {
            ThreadRole::Capture => self.capture,
            ThreadRole::Inference => self.inference,
            ThreadRole::Worker => self.worker,
        }
    }

    /// System allocations of all frame-path threads: the figure that must stay 0 after warm-up.
    pub fn system_allocations(&self) -> u64 {
        self.capture.system + self.inference.system + self.worker.system
    }

    /// Region allocations of all frame-path threads.
    pub fn region_allocations(&self) -> u64 {
        self.capture.region + self.inference.region + self.worker.region
    }

    /// The counts made after `earlier` (a previous snapshot); the region figures are this snapshot's.
    pub fn since(&self, earlier: &AllocStats) -> AllocStats {
        let d = |a: RoleCounts, b: RoleCounts| RoleCounts {
            system: a.system.saturating_sub(b.system),
            region: a.region.saturating_sub(b.region),
        };
        AllocStats {
            capture: d(self.capture, earlier.capture),
            inference: d(self.inference, earlier.inference),
            worker: d(self.worker, earlier.worker),
            fallbacks: self.fallbacks.saturating_sub(earlier.fallbacks),
            ..*self
        }
    }
}

/// The allocator's counters and the region's use now. Allocation-free.
pub fn stats() -> AllocStats {
    let counts = |role: ThreadRole| RoleCounts {
        system: COUNTERS.system[role as usize].load(Relaxed),
        region: COUNTERS.region[role as usize].load(Relaxed),
    };
    let (region_bytes, region_high_water, region_in_use) = HEAP.with(|h| {
        (
            (h.end - h.base) as u64,
            (h.bump - h.base) as u64,
            h.in_use as u64,
        )
    });
    AllocStats {
        installed: INSTALLED.load(Relaxed),
        capture: counts(ThreadRole::Capture),
        inference: counts(ThreadRole::Inference),
        worker: counts(ThreadRole::Worker),
        fallbacks: COUNTERS.fallbacks.load(Relaxed),
        region_bytes,
        region_high_water,
        region_in_use,
    }
}

// ---- size classes ----

/// Classes 0..8 are 16..=128 bytes in steps of 16; above, four classes per power of two
/// (P + P/4, P + P/2, P + 3P/4, 2P), up to 2^MAX_LOG2 bytes.
const SMALL_CLASSES: usize = 8;
const MAX_LOG2: u32 = 40;
const CLASSES: usize = SMALL_CLASSES + 4 * (MAX_LOG2 as usize - 7);
/// Largest alignment a region block is carved with; larger requests go to the system.
const MAX_ALIGN: usize = 4096;

/// (class index, block size) of a block with at least `size` bytes.
fn class_of_size(size: usize) -> Option<(usize, usize)> {
    let s = size.max(1);
    if s <= 128 {
        let idx = (s - 1) / 16;
        return Some((idx, (idx + 1) * 16));
    }
    let k = usize::BITS - 1 - (s - 1).leading_zeros();
    if k >= MAX_LOG2 {
        return None;
    }
    let p = 1usize << k;
    let step = p / 4;
    let j = (s - p).div_ceil(step);
    Some((SMALL_CLASSES + 4 * (k as usize - 7) + (j - 1), p + j * step))
}

/// The block size of class `c` (the inverse of [`class_of_size`]).
fn class_block_size(c: usize) -> usize {
    if c < SMALL_CLASSES {
        return (c + 1) * 16;
    }
    let k = 7 + (c - SMALL_CLASSES) / 4;
    let j = (c - SMALL_CLASSES) % 4 + 1;
    (1usize << k) + j * (1usize << (k - 2))
}

// ---- tracing: the region a workload would need ----

/// While set, frame-path threads' allocations that the system serves (no region yet) are counted per size
/// class, live and at most, so [`trace`] can tell how much a region would carve for the same workload.
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACE_LIVE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static TRACE_MAX: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

#[inline]
fn trace_alloc(layout: Layout) {
    if let Some((c, _, _)) = class_of(layout) {
        let n = TRACE_LIVE[c].fetch_add(1, Relaxed) + 1;
        TRACE_MAX[c].fetch_max(n, Relaxed);
    }
}

#[inline]
fn trace_free(layout: Layout) {
    if let Some((c, _, _)) = class_of(layout) {
        // A block made before the trace began may be freed during it: never below zero.
        let _ = TRACE_LIVE[c].fetch_update(Relaxed, Relaxed, |v| Some((v - 1).max(0)));
    }
}

/// Runs `f` on the calling thread registered as the inference thread (as the frame path runs the models),
/// before any region is reserved, and returns its result with the bytes a region would have carved to serve
/// every allocation the frame-path threads made meanwhile: per size class, the most blocks alive at once,
/// times the block size. The region's high water for the same workload is this plus alignment padding.
/// Only meaningful with [`Allocator`] installed and no region reserved yet (returns 0 otherwise).
pub fn trace<R>(f: impl FnOnce() -> R) -> (R, u64) {
    for c in 0..CLASSES {
        TRACE_LIVE[c].store(0, Relaxed);
        TRACE_MAX[c].store(0, Relaxed);
    }
    let previous = ROLE.get();
    if previous == 0 {
        register_thread(ThreadRole::Inference);
    }
    TRACING.store(true, Relaxed);
    let r = f();
    TRACING.store(false, Relaxed);
    if previous == 0 {
        unregister_thread();
    }
    let bytes = (0..CLASSES)
        .map(|c| TRACE_MAX[c].load(Relaxed).max(0) as u64 * class_block_size(c) as u64)
        .sum();
    (r, bytes)
}

/// The alignment blocks of a class are carved with: the block size's lowest set bit, at most MAX_ALIGN.
fn natural_align(block: usize) -> usize {
    (block & block.wrapping_neg()).min(MAX_ALIGN)
}

/// The class serving `layout`: (index, block size, alignment). The same layout always gives the same
/// class, so `dealloc` finds the list `alloc` took the block from without a header.
fn class_of(layout: Layout) -> Option<(usize, usize, usize)> {
    let align = layout.align();
    if align > MAX_ALIGN {
        return None;
    }
    let (idx, block) = class_of_size(layout.size())?;
    if align <= natural_align(block) {
        return Some((idx, block, natural_align(block)));
    }
    // A power-of-two block is aligned to its own size (up to MAX_ALIGN), so it serves any alignment.
    let (idx, block) = class_of_size(layout.size().max(align).checked_next_power_of_two()?)?;
    Some((idx, block, natural_align(block)))
}

// ---- the region ----

/// The region's state: `[base, end)` mapped, `[base, bump)` carved into blocks, a free list per class
/// threaded through the first word of each free block. `base == 0`: no region.
struct Heap {
    base: usize,
    end: usize,
    bump: usize,
    in_use: usize,
    free: [usize; CLASSES],
}

impl Heap {
    const EMPTY: Heap = Heap {
        base: 0,
        end: 0,
        bump: 0,
        in_use: 0,
        free: [0; CLASSES],
    };

    /// A block for `layout` from its class's list or carved from the region; null if it has no room.
    ///
    /// # Safety
    /// `[base, end)` must be memory this heap owns exclusively, and every address on a free list a block
    /// previously returned by `alloc` and given back through `free`.
    unsafe fn alloc(&mut self, layout: Layout) -> *mut u8 {
        if self.base == 0 {
            return std::ptr::null_mut();
        }
        let Some((idx, block, align)) = class_of(layout) else {
            return std::ptr::null_mut();
        };
        let head = self.free[idx];
        let addr = if head != 0 {
            // SAFETY: `head` is a free block of this class (premise), at least 16 bytes and 16-aligned; its
            // first word holds the next free block.
            self.free[idx] = unsafe { (head as *const usize).read() };
            head
        } else {
            let start = (self.bump + align - 1) & !(align - 1);
            match start.checked_add(block) {
                Some(end) if end <= self.end => {
                    self.bump = end;
                    start
                }
                _ => return std::ptr::null_mut(),
            }
        };
        self.in_use += block;
        addr as *mut u8
    }

    /// Puts the block at `ptr` back on its class's list.
    ///
    /// # Safety
    /// `ptr` must come from [`Heap::alloc`] of this heap with the same `layout` (or one of the same
    /// class), and not be used after this call.
    unsafe fn free(&mut self, ptr: *mut u8, layout: Layout) {
        let Some((idx, block, _)) = class_of(layout) else {
            return;
        };
        // SAFETY: the block is ours again (premise), at least 16 bytes and 16-aligned.
        unsafe { (ptr as *mut usize).write(self.free[idx]) };
        self.free[idx] = ptr as usize;
        self.in_use -= block;
    }

    fn contains(&self, ptr: *mut u8) -> bool {
        (self.base..self.end).contains(&(ptr as usize))
    }
}

/// A [`Heap`] behind a spinlock.
struct SpinHeap {
    locked: AtomicBool,
    heap: UnsafeCell<Heap>,
}

// SAFETY: `heap` is only reached through `with`, which holds `locked` for the whole access.
unsafe impl Sync for SpinHeap {}

impl SpinHeap {
    /// Spins this many times before sleeping: long enough for a holder on another CPU, short enough that a
    /// real-time thread does not starve a lower-priority holder preempted on its own CPU.
    const SPINS: u32 = 128;

    fn with<R>(&self, f: impl FnOnce(&mut Heap) -> R) -> R {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            while self.locked.load(Relaxed) {
                if spins < Self::SPINS {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    // nanosleep: lets a preempted holder run, allocates nothing.
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            }
        }
        // SAFETY: the lock is held, so this is the only reference to the heap until it is released.
        let r = f(unsafe { &mut *self.heap.get() });
        self.locked.store(false, Release);
        r
    }
}

static HEAP: SpinHeap = SpinHeap {
    locked: AtomicBool::new(false),
    heap: UnsafeCell::new(Heap::EMPTY),
};
/// The region's bounds, for the lock-free "is this mine" test in `dealloc` (0, 0 until reserved). The
/// region is never unmapped, so a stale read can only say "not mine" for a pointer allocated before it
/// existed, which is true.
static REGION_BASE: AtomicUsize = AtomicUsize::new(0);
static REGION_END: AtomicUsize = AtomicUsize::new(0);

fn in_region(ptr: *mut u8) -> bool {
    let p = ptr as usize;
    p >= REGION_BASE.load(Relaxed) && p < REGION_END.load(Relaxed)
}

/// Whether `ptr` points into the region.
pub fn region_contains(ptr: *const u8) -> bool {
    in_region(ptr as *mut u8)
}

/// Why [`reserve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("cannot map {mib:.1} MiB for the frame-path memory region: {source} (lower memory.arena-mib, or free memory)")]
    Map {
        mib: f64,
        #[source]
        source: std::io::Error,
    },
    #[error("the frame-path memory region is already reserved with {have} bytes, {want} were asked for: reserve it once per process, sized for the largest engine")]
    AlreadyReserved { have: u64, want: u64 },
}

/// Maps the region (`bytes` rounded up to whole pages, every page faulted in) that registered threads
/// allocate from. Once per process: a second call succeeds if the region is at least as large and fails
/// otherwise. Returns the region's size.
pub fn reserve(bytes: u64) -> Result<u64, ReserveError> {
    let have = HEAP.with(|h| (h.end - h.base) as u64);
    if have > 0 {
        return if have >= bytes {
            Ok(have)
        } else {
            Err(ReserveError::AlreadyReserved { have, want: bytes })
        };
    }
    let page = os::page_size() as u64;
    let len = bytes.max(1).div_ceil(page) * page;
    let map_err = |source| ReserveError::Map {
        mib: len as f64 / MIB,
        source,
    };
    let len = usize::try_from(len)
        .map_err(|_| map_err(std::io::Error::from(std::io::ErrorKind::OutOfMemory)))?;
    let base = os::map_populated(len).map_err(map_err)?;
    let installed = HEAP.with(|h| {
        if h.base != 0 {
            return false;
        }
        *h = Heap {
            base,
            end: base + len,
            bump: base,
            ..Heap::EMPTY
        };
        true
    });
    if !installed {
        // Another thread reserved concurrently; its region stands and this mapping stays unused.
        return reserve(bytes);
    }
    REGION_END.store(base + len, Relaxed);
    REGION_BASE.store(base, Release);
    Ok(len as u64)
}

const MIB: f64 = 1024.0 * 1024.0;

/// Limits glibc to two malloc arenas. The frame path allocates from the region, so the system allocator
/// serves loading and the background threads (status, heartbeat, prompts), which do not need an arena each;
/// every arena glibc adds reserves 64 MiB of address space that `mlockall` counts as locked (VmLck) though it
/// is never resident. Returns whether glibc accepted it.
pub fn limit_system_arenas() -> bool {
    os::limit_malloc_arenas(2)
}

/// Makes the C allocator keep the memory it holds once loading is done. Engines that allocate with malloc
/// while they run (onnxruntime: about 2,600 calls a frame at ViT-B/32) otherwise make glibc map a block
/// above its mmap threshold afresh on each call and give the heap's top back whenever it frees enough, so
/// every frame pays page faults (under `mlockall`, each new page is faulted in whole): measured, the frames'
/// p99 spread. Called at start-up after the models are loaded (what loading freed is handed back first), so
/// the heap settles at the size the first frames need and stays there. Returns whether glibc accepted it.
pub fn keep_system_heap() -> bool {
    os::keep_malloc_heap()
}

/// Locks every page of the process in memory, now and later (`mlockall(MCL_CURRENT | MCL_FUTURE)`), so
/// the frame path never waits for a page to come back from swap or a file. The error says what to change.
pub fn lock_memory() -> Result<(), String> {
    os::lock_all().map_err(|e| {
        let limit = match os::memlock_limit() {
            Some(l) => format!("RLIMIT_MEMLOCK is {} KiB", l / 1024),
            None => "RLIMIT_MEMLOCK is unlimited".into(),
        };
        format!(
            "mlockall failed: {e} ({limit}): raise the limit (LimitMEMLOCK=infinity in the systemd unit, \
             ulimit -l), give the process CAP_IPC_LOCK, or set memory.lock = false"
        )
    })
}

/// Undoes [`lock_memory`].
pub fn unlock_memory() -> std::io::Result<()> {
    os::unlock_all()
}

// ---- the global allocator ----

/// The global allocator: the system allocator, except that registered threads allocate from the region.
/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

impl Allocator {
    /// Serves a registered thread from the region, or counts the system allocation it falls back to.
    /// Null means "ask the system".
    #[inline]
    fn frame_path_alloc(layout: Layout) -> *mut u8 {
        let role = ROLE.get();
        if role == 0 {
            return std::ptr::null_mut();
        }
        let slot = role as usize & (ROLE_SLOTS - 1);
        // Acquire pairs with `reserve`'s release: whoever later frees a block handed out here, having
        // received it through any synchronisation, sees the region's bounds in `in_region`.
        if REGION_BASE.load(Acquire) != 0 {
            // SAFETY: the heap owns its region exclusively (`reserve`) and its lists hold only blocks it
            // handed out and got back through `dealloc`.
            let p = HEAP.with(|h| unsafe { h.alloc(layout) });
            if !p.is_null() {
                COUNTERS.region[slot].fetch_add(1, Relaxed);
                return p;
            }
            COUNTERS.fallbacks.fetch_add(1, Relaxed);
            warn_exhausted(layout.size());
        }
        COUNTERS.system[slot].fetch_add(1, Relaxed);
        if TRACING.load(Relaxed) {
            trace_alloc(layout);
        }
        std::ptr::null_mut()
    }
}

#[inline]
fn mark_installed() {
    if !INSTALLED.load(Relaxed) {
        INSTALLED.store(true, Relaxed);
    }
}

#[cold]
fn warn_exhausted(size: usize) {
    if WARNED.swap(true, Relaxed) {
        return;
    }
    let mut msg = StackText::<320>::new();
    let region = REGION_END.load(Relaxed) - REGION_BASE.load(Relaxed);
    let _ = writeln!(
        msg,
        "ocellus: warning: the frame-path memory region ({} KiB) cannot serve a {size}-byte allocation; \
         it and any later ones come from the system allocator (counted as fallbacks): raise \
         memory.arena-mib",
        region / 1024
    );
    os::write_stderr(msg.as_bytes());
}

/// Text formatted on the stack (inside the allocator nothing may allocate); cut at `N` bytes.
struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> std::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

// SAFETY: every block handed out is either the system allocator's (returned unchanged from `System`) or a
// region block of at least `layout.size()` bytes aligned to at least `layout.align()` (`class_of`), owned
// by the caller until it comes back through `dealloc`/`realloc`, which route it by address to the one that
// made it. Nothing here allocates (counters are atomics, the role a const thread-local without destructor,
// the warning goes out through `write(2)` from a stack buffer), so there is no re-entry.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        let p = Self::frame_path_alloc(layout);
        if !p.is_null() {
            return p;
        }
        // SAFETY: the caller's contract for `alloc` (non-zero size) is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        let p = Self::frame_path_alloc(layout);
        if !p.is_null() {
            // SAFETY: `p` is a fresh region block of at least `layout.size()` writable bytes; region blocks
            // are reused, so they are zeroed here.
            unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
            return p;
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_region(ptr) {
            // SAFETY: `ptr` is a region block (by address) the caller got with `layout` and gives up.
            HEAP.with(|h| {
                debug_assert!(h.contains(ptr));
                unsafe { h.free(ptr, layout) }
            });
        } else {
            if TRACING.load(Relaxed) && ROLE.get() != 0 {
                trace_free(layout);
            }
            // SAFETY: `ptr` is not in the region, so the system allocator made it, with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` rounded up to `layout.align()` does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let from_region = in_region(ptr);
        if from_region && class_of(layout) == class_of(new_layout) {
            return ptr;
        }
        if !from_region && ROLE.get() == 0 {
            // SAFETY: the caller's contract for `realloc`; `ptr` is the system allocator's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A region block changing class, or a frame-path thread growing a system block: a new block as
        // `alloc` would give this thread, the bytes copied over, the old block given back.
        // SAFETY: `new_layout` has a non-zero size (the caller's contract for `realloc`).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct, each at least min(old, new) bytes long.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn class_block_size_is_the_inverse_of_class_of_size() {
        for size in (1..5000)
            .chain((13..34).map(|k| 1usize << k))
            .chain([3 << 20, 5 << 20])
        {
            let (c, block) = class_of_size(size).expect("a class");
            assert_eq!(class_block_size(c), block, "size {size}");
            assert!(block >= size);
        }
    }

    use super::*;

    #[test]
    fn every_size_and_alignment_gets_a_block_that_fits() {
        let mut last = 0;
        for size in 1..70_000usize {
            let (idx, block) = class_of_size(size).unwrap();
            assert!(block >= size, "{size} -> {block}");
            assert!(idx < CLASSES);
            assert!(idx >= last, "classes grow with the size");
            last = idx;
            // At most a quarter (or 16 bytes) wasted.
            assert!(
                block <= (size + size / 4).max(size + 15),
                "{size} -> {block}"
            );
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 256, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let (i, b, a) = class_of(layout).unwrap();
                assert!(
                    b >= size && a >= align && b % a == 0,
                    "{layout:?} -> {b} @ {a}"
                );
                assert_eq!(
                    class_of_size(b),
                    Some((i, b)),
                    "a block size is its own class"
                );
            }
        }
        assert!(class_of(Layout::from_size_align(64, 8192).unwrap()).is_none());
        assert!(class_of_size(1 << MAX_LOG2).is_some());
        assert!(class_of_size((1 << MAX_LOG2) + 1).is_none());
    }

    /// A heap over a local buffer.
    fn heap(buf: &mut [u8]) -> Heap {
        let base = (buf.as_mut_ptr() as usize + 4095) & !4095;
        let end = buf.as_mut_ptr() as usize + buf.len();
        Heap {
            base,
            end,
            bump: base,
            ..Heap::EMPTY
        }
    }

    #[test]
    fn a_repeated_pattern_reaches_a_steady_state() {
        let mut buf = vec![0u8; 1 << 20];
        let mut h = heap(&mut buf);
        let sizes = [24usize, 1000, 150_528, 24, 7, 4096, 640, 33];
        let mut high = Vec::new();
        for _ in 0..5 {
            let blocks: Vec<(*mut u8, Layout)> = sizes
                .iter()
                .map(|&s| {
                    let l = Layout::from_size_align(s, 128.min(s.next_power_of_two())).unwrap();
                    // SAFETY: the buffer is this heap's alone; blocks go back through `free` below.
                    let p = unsafe { h.alloc(l) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % l.align(), 0);
                    assert!(h.contains(p) && h.contains(p.wrapping_add(s - 1)));
                    (p, l)
                })
                .collect();
            let mut addrs: Vec<usize> = blocks.iter().map(|b| b.0 as usize).collect();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), sizes.len(), "live blocks are distinct");
            for (p, l) in blocks.into_iter().rev() {
                // SAFETY: `p` came from `h.alloc(l)` and is not used again.
                unsafe { h.free(p, l) };
            }
            assert_eq!(h.in_use, 0);
            high.push(h.bump - h.base);
        }
        assert!(
            high.iter().all(|&b| b == high[0]),
            "footprint grew: {high:?}"
        );
    }

    #[test]
    fn a_full_region_says_so_and_recovers_freed_blocks() {
        let mut buf = vec![0u8; 3 * 4096];
        let mut h = heap(&mut buf);
        let l = Layout::from_size_align(4096, 64).unwrap();
        // SAFETY: as above.
        unsafe {
            let a = h.alloc(l);
            let b = h.alloc(l);
            assert!(!a.is_null() && !b.is_null());
            assert!(h.alloc(l).is_null(), "a third 4 KiB block does not fit");
            h.free(a, l);
            assert_eq!(h.alloc(l), a, "the freed block is reused");
        }
    }

    #[test]
    fn stack_text_cuts_instead_of_allocating() {
        let mut t = StackText::<8>::new();
        let _ = write!(t, "{}", 1234567890123u64);
        assert_eq!(t.as_bytes(), b"12345678");
    }
}
