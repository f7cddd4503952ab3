//! Counts the process's calls of glibc's allocation functions, so `ocellus bench` can report the heap
//! activity that Rust's global allocator never sees: onnxruntime's C++ allocations (`operator new` calls
//! `malloc`), and any other C library's.
//!
//! How: the `ocellus` executable defines `malloc`, `calloc`, `realloc`, `memalign`, `aligned_alloc`,
//! `posix_memalign`, `valloc` and `pvalloc`; the dynamic linker binds every shared library's calls of them
//! (libonnxruntime and libstdc++ included, and glibc's own, which supports this) to these definitions,
//! which count the call and its requested bytes (per thread and for the process) and forward to glibc's
//! implementation (`__libc_malloc`, ...). `free` is not wrapped: it needs no counting and glibc's frees
//! every block these hand out.
//!
//! What it cannot see: memory a library maps itself (`mmap`), allocations glibc makes internally without
//! going through the public symbols, and frees (so it counts activity, not bytes in use; `mallinfo2` in
//! [`ocellus::alloc::heap_in_use`] gives the net). Rust allocations served from ocellus's frame-path region
//! never reach malloc; Rust allocations that fall back to the system allocator are counted here too (and by
//! ocellus's own allocator counters).
//!
//! Cost: one relaxed atomic add and one thread-local add per call. glibc-only (Linux, gnu): elsewhere the
//! counters stay at zero and [`active`] says so.

#![allow(unsafe_code)]

/// Calls and requested bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MallocCounts {
    pub calls: u64,
    pub bytes: u64,
}

impl MallocCounts {
    pub fn since(&self, earlier: &MallocCounts) -> MallocCounts {
        MallocCounts {
            calls: self.calls.wrapping_sub(earlier.calls),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::cell::Cell;
    use std::ffi::{c_int, c_void};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    use super::MallocCounts;

    extern "C" {
        fn __libc_malloc(size: usize) -> *mut c_void;
        fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
        fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
        fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
        fn __libc_valloc(size: usize) -> *mut c_void;
        fn __libc_pvalloc(size: usize) -> *mut c_void;
    }

    static CALLS: AtomicU64 = AtomicU64::new(0);
    static BYTES: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        // Const-initialised and without a destructor: reading it never allocates or registers anything.
        static THREAD: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }

    #[inline]
    fn note(size: usize) {
        CALLS.fetch_add(1, Relaxed);
        BYTES.fetch_add(size as u64, Relaxed);
        // `try_with`: a call during a thread's teardown is counted for the process only.
        let _ = THREAD.try_with(|c| {
            let (n, b) = c.get();
            c.set((n + 1, b + size as u64));
        });
    }

    pub fn process() -> MallocCounts {
        MallocCounts {
            calls: CALLS.load(Relaxed),
            bytes: BYTES.load(Relaxed),
        }
    }

    pub fn this_thread() -> MallocCounts {
        let (calls, bytes) = THREAD.try_with(Cell::get).unwrap_or((0, 0));
        MallocCounts { calls, bytes }
    }

    /// Whether shared libraries' malloc calls reach the counters: the dynamic linker's global lookup of
    /// `malloc` (what libonnxruntime's calls bind to) finds this executable's definition.
    pub fn active() -> bool {
        // SAFETY: dlsym with RTLD_DEFAULT only looks a NUL-terminated name up in the global scope.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()) };
        std::ptr::eq(found.cast_const(), malloc as *const c_void)
    }

    // SAFETY (all below): each forwards its arguments unchanged to glibc's own implementation, which has the
    // same contract as the public function; counting touches only atomics and a const thread-local without
    // destructor, so nothing here allocates or re-enters malloc.

    #[no_mangle]
    pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
        note(size);
        // SAFETY: see above.
        unsafe { __libc_malloc(size) }
    }

    #[no_mangle]
    pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
        note(n.saturating_mul(size));
        // SAFETY: see above.
        unsafe { __libc_calloc(n, size) }
    }

    #[no_mangle]
    pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
        note(size);
        // SAFETY: see above; `ptr` is null or a block from these functions (glibc's).
        unsafe { __libc_realloc(ptr, size) }
    }

    #[no_mangle]
    pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
        note(size);
        // SAFETY: see above.
        unsafe { __libc_memalign(align, size) }
    }

    #[no_mangle]
    pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
        note(size);
        if !align.is_power_of_two() {
            // SAFETY: errno is this thread's; writing it is what aligned_alloc does on EINVAL.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            return std::ptr::null_mut();
        }
        // SAFETY: see above; `align` is a power of two.
        unsafe { __libc_memalign(align, size) }
    }

    #[no_mangle]
    pub unsafe extern "C" fn posix_memalign(
        out: *mut *mut c_void,
        align: usize,
        size: usize,
    ) -> c_int {
        note(size);
        if !align.is_power_of_two() || align % std::mem::size_of::<*mut c_void>() != 0 {
            return libc::EINVAL;
        }
        // SAFETY: see above; `align` is a power of two and a multiple of the pointer size.
        let p = unsafe { __libc_memalign(align, size) };
        if p.is_null() && size != 0 {
            return libc::ENOMEM;
        }
        // SAFETY: the caller passes a valid pointer to write the block's address to (posix_memalign's
        // contract).
        unsafe { *out = p };
        0
    }

    #[no_mangle]
    pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
        note(size);
        // SAFETY: see above.
        unsafe { __libc_valloc(size) }
    }

    #[no_mangle]
    pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
        note(size);
        // SAFETY: see above.
        unsafe { __libc_pvalloc(size) }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use super::MallocCounts;

    pub fn process() -> MallocCounts {
        MallocCounts::default()
    }

    pub fn this_thread() -> MallocCounts {
        MallocCounts::default()
    }

    pub fn active() -> bool {
        false
    }
}

/// Every counted call in the process so far.
pub fn process() -> MallocCounts {
    imp::process()
}

/// The calling thread's counted calls so far. Allocates nothing (safe on the frame path).
pub fn this_thread() -> MallocCounts {
    imp::this_thread()
}

/// Whether the counters see shared libraries' allocations in this process (glibc's own internal calls
/// may bypass the public symbol; libonnxruntime's and libstdc++'s do not).
pub fn active() -> bool {
    imp::active()
}
