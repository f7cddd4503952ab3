//! The writer: creates the segment (exclusively, with ownership checks, replacing only a stale one of ours),
//! publishes samples wait-free, beats the heartbeat, and marks the segment stopped.

use std::ffi::CString;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::layout::{self, Dims, DimsError, Layout};
use super::os::{self, Mapping, Stat};
use super::segment::{self, Segment};
use super::seqlock;
use super::sync::Ordering::{Relaxed, Release};
use super::{CameraCounters, RecorderCounts, SampleRef};

/// How to create the segment.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// POSIX shared-memory name, e.g. `/ocellus` (the file `/dev/shm/ocellus`).
    pub name: String,
    pub dims: Dims,
    /// Permission bits, set exactly (not filtered by the umask). Default 0o640.
    pub mode: u32,
    /// Group that may read the segment, by name or number; `None` keeps the writer's group.
    pub group: Option<String>,
    /// How often the writer promises to beat; readers call it dead after two periods without a beat.
    pub heartbeat_period: Duration,
    /// The model's id (name and variant), at most 48 bytes of UTF-8 (cut to fit).
    pub model_id: String,
    /// The model file's sha256 in hex; its first 16 characters are stored.
    pub model_sha256: String,
}

impl WriterConfig {
    pub fn new(name: impl Into<String>, dims: Dims) -> WriterConfig {
        WriterConfig {
            name: name.into(),
            dims,
            mode: 0o640,
            group: None,
            heartbeat_period: Duration::from_millis(100),
            model_id: String::new(),
            model_sha256: String::new(),
        }
    }
}

/// Why the segment could not be created.
#[derive(Debug)]
pub enum CreateError {
    Config {
        name: String,
        reason: String,
    },
    AlreadyRunning {
        name: String,
        pid: u64,
        age_ms: u64,
    },
    Foreign {
        name: String,
        reason: String,
    },
    Io {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Config { name, reason } => {
                write!(f, "shared memory {name}: invalid configuration: {reason}")
            }
            CreateError::AlreadyRunning { name, pid, age_ms } => write!(
                f,
                "shared memory {name}: another ocellus (pid {pid}) is running and publishing there (heartbeat {age_ms} ms ago); stop it or choose another shm name"
            ),
            CreateError::Foreign { name, reason } => write!(
                f,
                "shared memory {name} exists and is not a segment this ocellus may replace: {reason}; remove /dev/shm{name} by hand if it is garbage"
            ),
            CreateError::Io { name, what, source } => {
                write!(f, "shared memory {name}: failed to {what}: {source}")
            }
        }
    }
}

impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CreateError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why one sample was not published (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    NoSuchCamera {
        camera: usize,
        cameras: usize,
    },
    Shape {
        what: &'static str,
        found: usize,
        expected: usize,
    },
    TooManyPrompts {
        found: usize,
        max: usize,
    },
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::NoSuchCamera { camera, cameras } => {
                write!(
                    f,
                    "camera {camera} does not exist (the segment has {cameras})"
                )
            }
            PublishError::Shape {
                what,
                found,
                expected,
            } => write!(f, "{what} has {found} values, the segment holds {expected}"),
            PublishError::TooManyPrompts { found, max } => {
                write!(f, "{found} prompts do not fit the segment's table of {max}")
            }
        }
    }
}

impl std::error::Error for PublishError {}

/// The single writer of a segment. Dropping it marks the segment stopped and removes its name.
#[derive(Debug)]
pub struct ShmWriter {
    name: String,
    cname: CString,
    seg: Arc<Segment>,
    stat: Stat,
    generation: u64,
    stopped: bool,
    /// Samples published per camera (the writer's own count: it never reads back shared memory).
    published: Vec<u64>,
    /// Writes of the prompt table so far.
    prompt_writes: u64,
    replaced_stale: bool,
}

/// A handle that beats the heartbeat from another thread (it keeps the mapping alive).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    seg: Arc<Segment>,
}

impl Heartbeat {
    /// Stores CLOCK_MONOTONIC now as the heartbeat.
    pub fn beat(&self) {
        self.seg
            .word(layout::H_HEARTBEAT_NS)
            .store(os::monotonic_ns(), Release);
    }

    /// Sets a camera's current state flags in the status block (`FLAG_CAMERA_LOST`, `FLAG_STALLED`).
    pub fn set_camera_flags(&self, camera: usize, flags: u64) {
        if camera < self.seg.layout.dims.cameras {
            let off = self.seg.layout.status_camera_offset(camera) + layout::C_FLAGS;
            self.seg.word(off).store(flags, Relaxed);
        }
    }

    /// Stores `camera`'s counters in the status block (each word on its own, relaxed).
    pub fn set_counters(&self, camera: usize, c: &CameraCounters) {
        self.seg.store_counters(camera, c);
    }

    /// Stores the process's memory high-water mark in bytes.
    pub fn set_memory_high_water(&self, bytes: u64) {
        self.seg
            .word(self.seg.layout.status_offset + layout::S_MEMORY_HIGH_WATER)
            .store(bytes, Relaxed);
    }

    /// Stores the recorder's counters: recordings written, triggers dropped, failed writes.
    pub fn set_recordings(&self, c: &RecorderCounts) {
        let base = self.seg.layout.status_offset;
        for (off, v) in [
            (layout::S_RECORDINGS_MADE, c.made),
            (layout::S_RECORDINGS_DROPPED, c.dropped),
            (layout::S_RECORDING_ERRORS, c.errors),
        ] {
            self.seg.word(base + off).store(v, Relaxed);
        }
    }

    /// How many samples `camera` has published (its ring's publish counter).
    pub fn published(&self, camera: usize) -> u64 {
        if camera < self.seg.layout.dims.cameras {
            self.seg.slot_latest(camera).load(Relaxed)
        } else {
            0
        }
    }
}

/// What a name currently holds.
enum Existing {
    Gone,
    Replaceable(Stat),
}

fn random_generation() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(os::realtime_ns());
    h.write_u32(os::getpid());
    h.finish().max(1)
}

impl ShmWriter {
    /// Creates the segment `config.name`, sized and laid out for `config.dims`, state running.
    ///
    /// An existing object of that name is replaced only if it is an ocellus segment owned by this user whose
    /// writer is gone (state stopped, pid not alive, or heartbeat older than two periods). A live one is
    /// refused with [`CreateError::AlreadyRunning`]; anything else (another owner, another magic, too short)
    /// with [`CreateError::Foreign`], and left untouched.
    pub fn create(config: &WriterConfig) -> Result<ShmWriter, CreateError> {
        let name = config.name.clone();
        let cfg_err = |reason: String| CreateError::Config {
            name: name.clone(),
            reason,
        };
        let cname = os::check_name(&config.name).map_err(&cfg_err)?;
        let layout = Layout::new(config.dims).map_err(|e: DimsError| cfg_err(e.to_string()))?;
        if config.mode & !0o777 != 0 || config.mode & 0o002 != 0 {
            return Err(cfg_err(format!(
                "mode {:o} must be permission bits without world write",
                config.mode
            )));
        }
        let period_ns = u64::try_from(config.heartbeat_period.as_nanos()).unwrap_or(u64::MAX);
        if period_ns == 0 {
            return Err(cfg_err("heartbeat period must be > 0".into()));
        }
        let gid = match &config.group {
            Some(g) => Some(os::resolve_group(g).map_err(|source| CreateError::Io {
                name: name.clone(),
                what: "resolve the segment's group",
                source,
            })?),
            None => None,
        };

        let io_err = |what: &'static str| {
            let name = name.clone();
            move |source: io::Error| CreateError::Io { name, what, source }
        };
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let mut replaced = false;
        let mut replaced_stale = false;
        let fd = loop {
            match os::shm_open(&cname, flags, config.mode) {
                Ok(fd) => break fd,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !replaced => {
                    match inspect_existing(&config.name, &cname)? {
                        Existing::Gone => {}
                        Existing::Replaceable(stat) => {
                            // Unlink only if the name still holds the object we judged stale.
                            if let Ok(fd) = os::shm_open(&cname, libc::O_RDONLY, 0) {
                                let now =
                                    os::fstat(&fd).map_err(io_err("inspect the old segment"))?;
                                if now.dev == stat.dev && now.ino == stat.ino {
                                    match os::shm_unlink(&cname) {
                                        Ok(()) => {}
                                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                                        Err(e) => {
                                            return Err(io_err("remove the stale segment")(e))
                                        }
                                    }
                                    replaced_stale = true;
                                }
                            }
                        }
                    }
                    replaced = true;
                }
                Err(e) => return Err(io_err("create the segment (O_CREAT|O_EXCL)")(e)),
            }
        };

        let init = || -> Result<(Mapping, Stat), CreateError> {
            os::fchmod(&fd, config.mode).map_err(io_err("set the segment's mode"))?;
            if let Some(gid) = gid {
                os::fchown_group(&fd, gid).map_err(io_err("give the segment to its group"))?;
            }
            os::ftruncate(&fd, layout.total_size).map_err(io_err("size the segment"))?;
            let map =
                Mapping::new(&fd, layout.total_size, true).map_err(io_err("map the segment"))?;
            let stat = os::fstat(&fd).map_err(io_err("stat the segment"))?;
            Ok((map, stat))
        };
        let (map, stat) = match init() {
            Ok(x) => x,
            Err(e) => {
                let _ = os::shm_unlink(&cname);
                return Err(e);
            }
        };
        drop::<OwnedFd>(fd);

        let seg = Segment { map, layout };
        let generation = random_generation();
        let now = os::monotonic_ns();
        for (offset, value) in layout.geometry_words() {
            seg.word(offset).store(value, Relaxed);
        }
        seg.word(layout::H_GENERATION).store(generation, Relaxed);
        seg.word(layout::H_WRITER_PID)
            .store(u64::from(os::getpid()), Relaxed);
        seg.word(layout::H_START_REALTIME_NS)
            .store(os::realtime_ns(), Relaxed);
        seg.word(layout::H_START_MONOTONIC_NS).store(now, Relaxed);
        seg.word(layout::H_HEARTBEAT_PERIOD_NS)
            .store(period_ns, Relaxed);
        seg.word(layout::H_HEARTBEAT_NS).store(now, Relaxed);
        seg.store_str(layout::H_MODEL_ID, layout::MODEL_ID_BYTES, &config.model_id);
        seg.store_str(
            layout::H_MODEL_SHA256,
            layout::MODEL_SHA_BYTES,
            &config.model_sha256,
        );
        seg.word(layout::H_STATE)
            .store(layout::STATE_RUNNING, Relaxed);
        // Last, with release: a reader that sees the magic (acquire) sees every field above.
        seg.word(layout::H_MAGIC).store(layout::MAGIC, Release);

        Ok(ShmWriter {
            name: config.name.clone(),
            cname,
            seg: Arc::new(seg),
            stat,
            generation,
            stopped: false,
            published: vec![0; layout.dims.cameras],
            prompt_writes: 0,
            replaced_stale,
        })
    }

    /// Whether creating this segment replaced a stale one left by a writer that is gone (the caller logs it).
    pub fn replaced_stale(&self) -> bool {
        self.replaced_stale
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn layout(&self) -> &Layout {
        &self.seg.layout
    }

    /// This start's generation (random, never 0).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Publishes `sample` as `camera`'s latest. Wait-free; returns the slot's publish count.
    pub fn publish(&mut self, camera: usize, sample: &SampleRef<'_>) -> Result<u64, PublishError> {
        let l = self.seg.layout;
        let d = l.dims;
        if camera >= d.cameras {
            return Err(PublishError::NoSuchCamera {
                camera,
                cameras: d.cameras,
            });
        }
        let shape = |what, found, expected| {
            if found == expected {
                Ok(())
            } else {
                Err(PublishError::Shape {
                    what,
                    found,
                    expected,
                })
            }
        };
        shape("embedding", sample.embedding.len(), d.embed_dim)?;
        shape(
            "latents",
            sample.latents.len(),
            d.num_latents * d.latent_dim,
        )?;
        if sample.scores.len() > d.max_prompts {
            return Err(PublishError::Shape {
                what: "scores",
                found: sample.scores.len(),
                expected: d.max_prompts,
            });
        }
        let n = self.published[camera] + 1;
        self.published[camera] = n;
        let seg = &*self.seg;
        seqlock::publish_ring(
            seg.slot_latest(camera),
            n,
            layout::BUFFERS_PER_SLOT as usize,
            |b| &seg.buffer(camera, b)[(layout::B_SEQ / 8) as usize],
            |b| segment::store_buffer(seg.buffer(camera, b), &l, sample, os::monotonic_ns),
        );
        Ok(n)
    }

    /// Stores CLOCK_MONOTONIC now as the heartbeat.
    pub fn heartbeat(&self) {
        self.heartbeat_handle().beat();
    }

    /// A handle for a heartbeat thread.
    pub fn heartbeat_handle(&self) -> Heartbeat {
        Heartbeat {
            seg: self.seg.clone(),
        }
    }

    /// Replaces the prompt table (under its own sequence lock).
    pub fn set_prompts<S: AsRef<str>>(
        &mut self,
        version: u64,
        labels: &[S],
    ) -> Result<(), PublishError> {
        let l = self.seg.layout;
        let k = l.dims.max_prompts;
        if labels.len() > k {
            return Err(PublishError::TooManyPrompts {
                found: labels.len(),
                max: k,
            });
        }
        self.prompt_writes += 1;
        let seg = &*self.seg;
        let base = l.prompts_offset;
        seqlock::write(seg.word(base + layout::P_SEQ), self.prompt_writes, || {
            seg.word(base + layout::P_VERSION).store(version, Relaxed);
            seg.word(base + layout::P_COUNT)
                .store(labels.len() as u64, Relaxed);
            for i in 0..k {
                let text = labels.get(i).map(AsRef::as_ref).unwrap_or("");
                let off = base + layout::P_LABELS + i as u64 * layout::LABEL_BYTES;
                seg.store_str(off, layout::LABEL_BYTES as usize, text);
            }
        });
        Ok(())
    }

    /// Stores `camera`'s counters in the status block (each word on its own, relaxed).
    pub fn set_counters(&self, camera: usize, c: &CameraCounters) {
        self.seg.store_counters(camera, c);
    }

    /// Stores the process's memory high-water mark in bytes.
    pub fn set_memory_high_water(&self, bytes: u64) {
        self.seg
            .word(self.seg.layout.status_offset + layout::S_MEMORY_HIGH_WATER)
            .store(bytes, Relaxed);
    }

    /// Stores the recorder's counters: recordings written, triggers dropped, failed writes.
    pub fn set_recordings(&self, c: &RecorderCounts) {
        let base = self.seg.layout.status_offset;
        for (off, v) in [
            (layout::S_RECORDINGS_MADE, c.made),
            (layout::S_RECORDINGS_DROPPED, c.dropped),
            (layout::S_RECORDING_ERRORS, c.errors),
        ] {
            self.seg.word(base + off).store(v, Relaxed);
        }
    }

    /// Marks the segment stopped: readers report [`super::ReadError::NotRunning`] instead of stale data.
    pub fn mark_stopped(&mut self) {
        self.seg
            .word(layout::H_STATE)
            .store(layout::STATE_STOPPED, Release);
        self.stopped = true;
    }
}

impl Drop for ShmWriter {
    fn drop(&mut self) {
        if !self.stopped {
            self.mark_stopped();
        }
        // Remove the name only while it still refers to our object (never a successor's).
        if let Ok(fd) = os::shm_open(&self.cname, libc::O_RDONLY, 0) {
            if let Ok(st) = os::fstat(&fd) {
                if st.dev == self.stat.dev && st.ino == self.stat.ino {
                    let _ = os::shm_unlink(&self.cname);
                }
            }
        }
    }
}

/// Decides whether the object already at `cname` may be replaced.
fn inspect_existing(name: &str, cname: &CString) -> Result<Existing, CreateError> {
    let foreign = |reason: String| CreateError::Foreign {
        name: name.to_owned(),
        reason,
    };
    let fd = match os::shm_open(cname, libc::O_RDONLY, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Existing::Gone),
        Err(source) => {
            return Err(CreateError::Io {
                name: name.to_owned(),
                what: "open the existing segment",
                source,
            })
        }
    };
    let stat = os::fstat(&fd).map_err(|source| CreateError::Io {
        name: name.to_owned(),
        what: "stat the existing segment",
        source,
    })?;
    let euid = os::geteuid();
    if stat.uid != euid {
        return Err(foreign(format!(
            "it is owned by uid {}, not by this process's uid {euid}",
            stat.uid
        )));
    }
    // Header lines 0 and 1 (identity and liveness) have the same offsets in every layout version.
    const LIVENESS_BYTES: u64 = 128;
    if stat.size < LIVENESS_BYTES {
        return Err(foreign(format!(
            "it has {} bytes, too few for an ocellus header",
            stat.size
        )));
    }
    let map = Mapping::new(&fd, LIVENESS_BYTES, false).map_err(|source| CreateError::Io {
        name: name.to_owned(),
        what: "map the existing segment",
        source,
    })?;
    let w = map.words();
    let get = |off: u64| w[(off / 8) as usize].load(super::sync::Ordering::Acquire);
    let magic = get(layout::H_MAGIC);
    if magic != layout::MAGIC {
        return Err(foreign(format!("its magic {magic:#018x} is not ocellus's")));
    }
    let pid = get(layout::H_WRITER_PID);
    let state = get(layout::H_STATE);
    let heartbeat = get(layout::H_HEARTBEAT_NS);
    let period = get(layout::H_HEARTBEAT_PERIOD_NS).max(1);
    let age = os::monotonic_ns().saturating_sub(heartbeat);
    let stale =
        state == layout::STATE_STOPPED || !os::pid_alive(pid) || age >= period.saturating_mul(2);
    if stale {
        Ok(Existing::Replaceable(stat))
    } else {
        Err(CreateError::AlreadyRunning {
            name: name.to_owned(),
            pid,
            age_ms: age / 1_000_000,
        })
    }
}
