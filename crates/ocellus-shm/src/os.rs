//! The POSIX layer: shared-memory objects, mappings, clocks and process checks. Every `unsafe` of the shared
//! memory code lives here; the rest of `shm` is safe code over [`Mapping::words`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::sync::AtomicU64;

/// The segment name as a C string, if it follows [`crate::segment_name`]'s rule.
pub fn check_name(name: &str) -> Result<CString, String> {
    let name = crate::segment_name(name)?;
    CString::new(name.as_str())
        .map_err(|_| format!("shared-memory name {name:?} contains a NUL byte"))
}

/// `shm_open(name, flags, mode)`, close-on-exec.
pub fn shm_open(name: &CString, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call; shm_open has no other
    // memory preconditions.
    let fd = unsafe {
        libc::shm_open(
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::mode_t,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn shm_unlink(name: &CString) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::shm_unlink(name.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The parts of `fstat` the segment checks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
}

pub fn fstat(fd: &OwnedFd) -> io::Result<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open for the call; `st` points to writable memory of the size fstat writes.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(Stat {
        size: u64::try_from(st.st_size).unwrap_or(0),
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

pub fn ftruncate(fd: &OwnedFd, len: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the mode exactly (`shm_open`'s mode is filtered by the umask).
pub fn fchmod(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the object to group `gid`, keeping the owner.
pub fn fchown_group(fd: &OwnedFd, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an open descriptor; `uid_t::MAX` (-1) leaves the owner unchanged.
    if unsafe { libc::fchown(fd.as_raw_fd(), libc::uid_t::MAX, gid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

pub fn getpid() -> u32 {
    std::process::id()
}

/// Whether a process with this pid exists (in our pid namespace). `kill(pid, 0)` sends nothing.
pub fn pid_alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A group given by number or by name.
pub fn resolve_group(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let cname = CString::new(group).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, writable memory of the size passed; getgrnam_r writes the entry
    // into `grp` and its strings into `buf`, and sets `result` to `grp` or null.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            grp.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group named {group:?}"),
        ));
    }
    // SAFETY: getgrnam_r succeeded and `result` points to `grp`, which it initialised.
    Ok(unsafe { grp.assume_init() }.gr_gid)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime (vDSO, no syscall) only writes it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of V4L2 timestamps, heartbeats and ages, shared by all processes.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch (for people: when a writer started).
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// A shared mapping of a whole segment, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is only accessed through atomics
// (`words`), which may be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access goes through `&[AtomicU64]` only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, read-only unless `writable`. `len` must be > 0.
    pub fn new(fd: &OwnedFd, len: u64, writable: bool) -> io::Result<Mapping> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address the kernel chooses; it aliases no Rust object. `fd` is open.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Mapping { ptr, len })
    }

    /// Mapped bytes.
    pub fn size(&self) -> usize {
        self.len
    }

    /// The mapping as whole 64-bit words (a trailing partial word is left out).
    ///
    /// Atomic loads on a read-only mapping are sound for `AtomicU64` on the targets we build for (x86-64,
    /// AArch64): they are plain lock-free loads, never a read-modify-write (std's "atomic accesses to
    /// read-only memory"). The segment is shared with other processes, which access it only through the
    /// documented protocol (aligned whole-word atomics), so no access here is a data race.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: (1) `ptr` is page-aligned (mmap), so aligned for AtomicU64; (2) `len / 8` words lie inside
        // the mapping, which stays mapped for the lifetime of `&self`; (3) AtomicU64 has interior mutability,
        // so concurrent writes by this or another process through atomics do not violate the shared borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; no reference into the mapping outlives `self`
        // (`words` borrows `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
