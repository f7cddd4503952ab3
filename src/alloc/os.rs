//! The OS layer of the memory module: anonymous mappings, `mlockall`, raw writes to stderr, and the
//! process's memory figures from `/proc/self/status`. Every `unsafe` of `alloc` outside the allocator
//! itself lives here.

use std::io;

/// The page size (`sysconf(_SC_PAGESIZE)`), 4096 if the system does not say.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a system constant; it touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Maps `len` bytes of private anonymous memory, readable and writable, with every page faulted in
/// (`MAP_POPULATE`), and returns its address. The mapping is never unmapped: it lives as long as the process.
pub(crate) fn map_populated(len: usize) -> io::Result<usize> {
    if len == 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: a fresh mapping at an address the kernel chooses; it aliases no Rust object and no file.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED || ptr.is_null() {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr as usize)
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE)`: every page mapped now and later stays resident.
pub(crate) fn lock_all() -> io::Result<()> {
    // SAFETY: mlockall takes flags only; it changes residency, never contents or addresses.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `mallopt(M_ARENA_MAX, n)`: glibc makes at most `n` malloc arenas. Each extra arena reserves 64 MiB of
/// address space (PROT_NONE) that mlockall then counts in VmLck without it ever being resident.
pub(crate) fn limit_malloc_arenas(n: i32) -> bool {
    // SAFETY: mallopt only sets a tunable of the C allocator; it touches no memory of ours.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

/// Makes glibc keep the heap it has: `malloc_trim(0)` first hands back what loading freed, then
/// `M_TRIM_THRESHOLD` = 1 GiB (never give the heap's top back) and `M_MMAP_THRESHOLD` = 32 MiB (glibc's
/// maximum on 64-bit: blocks up to that size come from the heap, not from a mapping of their own made and
/// unmapped per allocation). Both turn glibc's dynamic thresholds off. Returns whether glibc accepted both.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn keep_malloc_heap() -> bool {
    // SAFETY: malloc_trim and mallopt only act on the C allocator's free memory and tunables; they touch no
    // memory that is allocated.
    unsafe {
        libc::malloc_trim(0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
    }
}

/// Off glibc there is no malloc to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn keep_malloc_heap() -> bool {
    false
}

/// `munlockall()`: undoes [`lock_all`].
pub(crate) fn unlock_all() -> io::Result<()> {
    // SAFETY: munlockall takes no arguments and changes residency only.
    if unsafe { libc::munlockall() } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`None`: unlimited or unknown).
pub fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(lim.rlim_cur)
}

/// Writes `bytes` to stderr with one `write(2)`, without allocating (safe inside the global allocator).
pub(crate) fn write_stderr(bytes: &[u8]) {
    // SAFETY: `bytes` is a live slice of `bytes.len()` readable bytes; write only reads them. A short or
    // failed write of a warning is ignored.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// The process's resident set now (`VmRSS`) and its peak (`VmHWM`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    pub rss: u64,
    pub high_water: u64,
    /// Bytes locked (`VmLck`).
    pub locked: u64,
}

/// Reads [`ProcessMemory`] from `/proc/self/status` (allocates: not for the frame path).
pub fn process_memory() -> Option<ProcessMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(ProcessMemory {
        rss: field("VmRSS:")?,
        high_water: field("VmHWM:")?,
        locked: field("VmLck:").unwrap_or(0),
    })
}

/// Bytes of the files mapped into the process (the executable and its libraries; `/dev` objects such as
/// shared memory left out), from `/proc/self/maps`: what code and read-only data occupy when all of it
/// is resident, as it is under `mlockall`. Allocates: not for the frame path.
pub fn mapped_file_bytes() -> Option<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut total = 0u64;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let path = fields.nth(4).unwrap_or("");
        if !path.starts_with('/') || path.starts_with("/dev/") {
            continue;
        }
        let (start, end) = range.split_once('-')?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        total += end.saturating_sub(start);
    }
    Some(total)
}

/// Bytes glibc's malloc has handed out and not had back (`mallinfo2`: `uordblks` in its arenas plus
/// `hblkhd` in mmap'd blocks): the C and C++ heap that ocellus's own allocator does not see, such as
/// onnxruntime's. Sees net growth only: memory allocated and freed between two readings leaves no trace.
/// `None` off glibc. Takes glibc's arena locks; not for the frame path.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use() -> Option<u64> {
    // SAFETY: mallinfo2 takes no arguments, only reads malloc's statistics under its own locks and returns
    // a struct by value.
    let info = unsafe { libc::mallinfo2() };
    Some(info.uordblks as u64 + info.hblkhd as u64)
}

/// Bytes glibc's malloc has handed out (`mallinfo2`); `None` off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use() -> Option<u64> {
    None
}
