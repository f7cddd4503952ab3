//! The reader: maps a segment read-only, validates it completely before trusting any of it, reads the latest
//! sample of a camera with the ring + sequence-lock protocol, reports ages and the writer's liveness, and
//! follows a restarted writer onto its new segment.

use std::ffi::CString;
use std::io;
use std::time::Duration;

use super::layout::{self, HeaderError, Layout};
use super::os::{self, Mapping};
use super::segment::{self, Segment};
use super::seqlock::{self, RingReadError};
use super::sync::Ordering::{Acquire, Relaxed};
use super::{CameraCounters, Prompts, RecorderCounts, Sample};

/// Reader settings.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// Retries of one read when writes overlap it, before [`ReadError::RetriesExhausted`].
    pub max_retries: u32,
    /// Check each sample's checksum (a second line of defence behind the sequence lock; ~ the cost of the copy).
    pub verify_checksum: bool,
    /// While the writer is stopped or stale, look for a new segment at most this often.
    pub reopen_interval: Duration,
    /// Call the writer dead after this long without a heartbeat; `None`: two of the writer's periods.
    pub stale_after: Option<Duration>,
    /// Refuse a segment not owned by this uid (`None`: any owner, as long as it is not world-writable).
    pub expected_uid: Option<u32>,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            max_retries: 1000,
            verify_checksum: true,
            reopen_interval: Duration::from_millis(50),
            stale_after: None,
            expected_uid: None,
        }
    }
}

/// Why a segment could not be opened or read.
#[derive(Debug)]
pub enum ReadError {
    NotRunning {
        name: String,
        reason: String,
    },
    Stale {
        name: String,
        pid: u64,
        heartbeat_age: Duration,
    },
    VersionMismatch {
        name: String,
        found: u64,
        expected: u64,
    },
    Foreign {
        name: String,
        reason: String,
    },
    RetriesExhausted {
        name: String,
        camera: usize,
        retries: u32,
    },
    NoSample {
        name: String,
        camera: usize,
    },
    NoSuchCamera {
        name: String,
        camera: usize,
        cameras: usize,
    },
    Io {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotRunning { name, reason } => {
                write!(f, "shared memory {name}: ocellus is not running ({reason})")
            }
            ReadError::Stale {
                name,
                pid,
                heartbeat_age,
            } => write!(
                f,
                "shared memory {name}: the writer (pid {pid}) is not alive: no heartbeat for {} ms",
                heartbeat_age.as_millis()
            ),
            ReadError::VersionMismatch {
                name,
                found,
                expected,
            } => write!(
                f,
                "shared memory {name} has layout version {found}; this reader reads version {expected}: use matching ocellus versions"
            ),
            ReadError::Foreign { name, reason } => {
                write!(f, "shared memory {name} is not a valid ocellus segment: {reason}")
            }
            ReadError::RetriesExhausted {
                name,
                camera,
                retries,
            } => write!(
                f,
                "shared memory {name}: camera {camera}: every one of {retries} retries overlapped a write"
            ),
            ReadError::NoSample { name, camera } => {
                write!(f, "shared memory {name}: camera {camera} has published nothing yet")
            }
            ReadError::NoSuchCamera {
                name,
                camera,
                cameras,
            } => write!(
                f,
                "shared memory {name}: camera {camera} does not exist (the segment has {cameras})"
            ),
            ReadError::Io { name, what, source } => {
                write!(f, "shared memory {name}: failed to {what}: {source}")
            }
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What came with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleInfo {
    /// The camera's frame sequence number.
    pub sequence: u64,
    /// Now minus the capture time (zero if the capture time is in the future).
    pub age: Duration,
    /// Now minus the writer's last heartbeat.
    pub heartbeat_age: Duration,
    /// The segment's generation (changes at every writer start).
    pub generation: u64,
    /// Retries this read took.
    pub retries: u32,
    /// How many samples the camera has published into this segment.
    pub published: u64,
    /// This read followed a restarted writer onto a new segment.
    pub remapped: bool,
}

/// The writer's identity, from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterInfo {
    pub pid: u64,
    pub generation: u64,
    pub start_realtime_ns: u64,
    pub start_monotonic_ns: u64,
    pub heartbeat_period: Duration,
    pub heartbeat_age: Duration,
    pub alive: bool,
    pub stopped: bool,
    pub model_id: String,
    pub model_sha256: String,
}

/// A read-only view of a writer's segment.
#[derive(Debug)]
pub struct ShmReader {
    name: String,
    cname: CString,
    options: ReaderOptions,
    seg: Segment,
    generation: u64,
    pid: u64,
    period_ns: u64,
    last_reopen_ns: u64,
    remaps: u64,
}

fn map_header_error(name: &str, e: HeaderError) -> ReadError {
    match e {
        HeaderError::Incomplete(reason) => ReadError::NotRunning {
            name: name.to_owned(),
            reason: format!(
                "the segment is being created or its writer died creating it: {reason}"
            ),
        },
        HeaderError::Foreign(reason) => ReadError::Foreign {
            name: name.to_owned(),
            reason,
        },
        HeaderError::Version { found } => ReadError::VersionMismatch {
            name: name.to_owned(),
            found,
            expected: layout::LAYOUT_VERSION,
        },
    }
}

/// Opens, checks and maps `name` read-only; returns the validated segment and its generation.
fn open_segment(
    name: &str,
    cname: &CString,
    options: &ReaderOptions,
) -> Result<Segment, ReadError> {
    let fd = match os::shm_open(cname, libc::O_RDONLY, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Err(ReadError::NotRunning {
                name: name.to_owned(),
                reason: format!("no segment /dev/shm{name}"),
            })
        }
        Err(source) => {
            return Err(ReadError::Io {
                name: name.to_owned(),
                what: "open the segment read-only",
                source,
            })
        }
    };
    let stat = os::fstat(&fd).map_err(|source| ReadError::Io {
        name: name.to_owned(),
        what: "stat the segment",
        source,
    })?;
    let foreign = |reason: String| ReadError::Foreign {
        name: name.to_owned(),
        reason,
    };
    if stat.mode & 0o002 != 0 {
        return Err(foreign(format!(
            "it is world-writable (mode {:o}); ocellus never creates it so",
            stat.mode & 0o777
        )));
    }
    if let Some(uid) = options.expected_uid {
        if stat.uid != uid {
            return Err(foreign(format!(
                "it is owned by uid {}, expected {uid}",
                stat.uid
            )));
        }
    }
    if stat.size < layout::HEADER_SIZE {
        // The same verdict validate_header gives: 0 bytes is being created, anything else too short is foreign.
        let header = [0u64; (layout::HEADER_SIZE / 8) as usize];
        return Err(map_header_error(
            name,
            layout::validate_header(&header, stat.size)
                .err()
                .unwrap_or(HeaderError::Incomplete("too short".into())),
        ));
    }
    let map = Mapping::new(&fd, stat.size, false).map_err(|source| ReadError::Io {
        name: name.to_owned(),
        what: "map the segment read-only",
        source,
    })?;
    let layout = validate_mapping(&map, stat.size).map_err(|e| map_header_error(name, e))?;
    Ok(Segment { map, layout })
}

/// Snapshots the header (magic first, with acquire) and validates it against the segment's size.
fn validate_mapping(map: &Mapping, size: u64) -> Result<Layout, HeaderError> {
    let words = map.words();
    let n = (layout::HEADER_SIZE / 8) as usize;
    let mut header = vec![0u64; n];
    if let Some(magic) = words.first() {
        header[0] = magic.load(Acquire);
    }
    for (h, w) in header.iter_mut().zip(words).skip(1) {
        *h = w.load(Relaxed);
    }
    let layout = layout::validate_header(&header, size)?;
    if map.size() as u64 != layout.total_size {
        return Err(HeaderError::Foreign(
            "mapping size differs from the layout".into(),
        ));
    }
    Ok(layout)
}

/// Validates `bytes` as a segment image exactly as [`ShmReader::open`] validates a mapped segment (for tests
/// and tools): the typed error a reader would give, or the layout.
pub fn validate_bytes(bytes: &[u8]) -> Result<Layout, HeaderError> {
    let mut header = vec![0u64; (layout::HEADER_SIZE / 8) as usize];
    for (h, chunk) in header.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *h = u64::from_le_bytes(b);
    }
    layout::validate_header(&header, bytes.len() as u64)
}

impl ShmReader {
    /// Opens `name` (e.g. `/ocellus`) with default options.
    pub fn open(name: &str) -> Result<ShmReader, ReadError> {
        ShmReader::open_with(name, ReaderOptions::default())
    }

    /// Opens `name`: maps it read-only and validates magic, version, size, layout hash and every header field.
    pub fn open_with(name: &str, options: ReaderOptions) -> Result<ShmReader, ReadError> {
        let cname = os::check_name(name).map_err(|reason| ReadError::Foreign {
            name: name.to_owned(),
            reason,
        })?;
        let seg = open_segment(name, &cname, &options)?;
        let mut reader = ShmReader {
            name: name.to_owned(),
            cname,
            options,
            seg,
            generation: 0,
            pid: 0,
            period_ns: 0,
            last_reopen_ns: os::monotonic_ns(),
            remaps: 0,
        };
        reader.load_identity();
        Ok(reader)
    }

    fn load_identity(&mut self) {
        self.generation = self.seg.load(layout::H_GENERATION);
        self.pid = self.seg.load(layout::H_WRITER_PID);
        self.period_ns = self.seg.load(layout::H_HEARTBEAT_PERIOD_NS).max(1);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current segment's layout (it changes only when a restarted writer is followed).
    pub fn layout(&self) -> &Layout {
        &self.seg.layout
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Times this reader followed a restarted writer.
    pub fn remaps(&self) -> u64 {
        self.remaps
    }

    /// A sample sized for the current layout (allocate once, reuse for every read).
    pub fn new_sample(&self) -> Sample {
        Sample::new(&self.seg.layout.dims)
    }

    fn stale_after_ns(&self) -> u64 {
        match self.options.stale_after {
            Some(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            None => self.period_ns.saturating_mul(2),
        }
    }

    /// The writer's identity and liveness.
    pub fn writer(&self) -> WriterInfo {
        let now = os::monotonic_ns();
        let state = self.seg.word(layout::H_STATE).load(Acquire);
        let hb_age = now.saturating_sub(self.seg.load(layout::H_HEARTBEAT_NS));
        WriterInfo {
            pid: self.pid,
            generation: self.generation,
            start_realtime_ns: self.seg.load(layout::H_START_REALTIME_NS),
            start_monotonic_ns: self.seg.load(layout::H_START_MONOTONIC_NS),
            heartbeat_period: Duration::from_nanos(self.period_ns),
            heartbeat_age: Duration::from_nanos(hb_age),
            alive: state == layout::STATE_RUNNING && hb_age < self.stale_after_ns(),
            stopped: state == layout::STATE_STOPPED,
            model_id: self
                .seg
                .load_str(layout::H_MODEL_ID, layout::MODEL_ID_BYTES),
            model_sha256: self
                .seg
                .load_str(layout::H_MODEL_SHA256, layout::MODEL_SHA_BYTES),
        }
    }

    /// Checks the writer's liveness; if it is stopped or stale, looks (rate-limited) for a new segment under
    /// the name and switches to it. Returns the heartbeat age and whether it switched.
    fn ensure_alive(&mut self) -> Result<(u64, bool), ReadError> {
        let mut remapped = false;
        loop {
            let now = os::monotonic_ns();
            let state = self.seg.word(layout::H_STATE).load(Acquire);
            let hb_age = now.saturating_sub(self.seg.load(layout::H_HEARTBEAT_NS));
            if state == layout::STATE_RUNNING && hb_age < self.stale_after_ns() {
                return Ok((hb_age, remapped));
            }
            let interval =
                u64::try_from(self.options.reopen_interval.as_nanos()).unwrap_or(u64::MAX);
            if !remapped && now.saturating_sub(self.last_reopen_ns) >= interval {
                self.last_reopen_ns = now;
                match open_segment(&self.name, &self.cname, &self.options) {
                    Ok(seg) if seg.load(layout::H_GENERATION) != self.generation => {
                        self.seg = seg;
                        self.load_identity();
                        self.remaps += 1;
                        remapped = true;
                        continue;
                    }
                    Ok(_) | Err(ReadError::NotRunning { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            return Err(if state == layout::STATE_STOPPED {
                ReadError::NotRunning {
                    name: self.name.clone(),
                    reason: format!("the writer (pid {}) stopped", self.pid),
                }
            } else {
                ReadError::Stale {
                    name: self.name.clone(),
                    pid: self.pid,
                    heartbeat_age: Duration::from_nanos(hb_age),
                }
            });
        }
    }

    /// Copies `camera`'s latest complete sample into `out` (resized only if a restarted writer's dimensions
    /// grew). Errors: the writer stopped ([`ReadError::NotRunning`]) or dead ([`ReadError::Stale`]), nothing
    /// published yet, or every attempt overlapped a write ([`ReadError::RetriesExhausted`]).
    pub fn read_latest(
        &mut self,
        camera: usize,
        out: &mut Sample,
    ) -> Result<SampleInfo, ReadError> {
        let (hb_age, remapped) = self.ensure_alive()?;
        let l = self.seg.layout;
        if camera >= l.dims.cameras {
            return Err(ReadError::NoSuchCamera {
                name: self.name.clone(),
                camera,
                cameras: l.dims.cameras,
            });
        }
        out.fit(&l.dims);
        let seg = &self.seg;
        let verify = self.options.verify_checksum;
        let latest = seg.slot_latest(camera);
        let result = seqlock::read_ring(
            latest,
            layout::BUFFERS_PER_SLOT as usize,
            |b| &seg.buffer(camera, b)[(layout::B_SEQ / 8) as usize],
            self.options.max_retries,
            |b| segment::load_buffer(seg.buffer(camera, b), &l, out, verify).then_some(()),
        );
        let ((), retries) = result.map_err(|e| match e {
            RingReadError::Empty => ReadError::NoSample {
                name: self.name.clone(),
                camera,
            },
            RingReadError::RetriesExhausted => ReadError::RetriesExhausted {
                name: self.name.clone(),
                camera,
                retries: self.options.max_retries,
            },
        })?;
        let now = os::monotonic_ns();
        Ok(SampleInfo {
            sequence: out.meta.sequence,
            age: Duration::from_nanos(now.saturating_sub(out.meta.capture_ns)),
            heartbeat_age: Duration::from_nanos(hb_age),
            generation: self.generation,
            retries,
            published: latest.load(Relaxed),
            remapped,
        })
    }

    /// The prompt table (allocates; for tools, not for the control loop).
    pub fn prompts(&self) -> Result<Prompts, ReadError> {
        let l = &self.seg.layout;
        let base = l.prompts_offset;
        let k = l.dims.max_prompts;
        for _ in 0..=self.options.max_retries {
            let read = seqlock::try_read(self.seg.word(base + layout::P_SEQ), || {
                let version = self.seg.load(base + layout::P_VERSION);
                let count = usize::try_from(self.seg.load(base + layout::P_COUNT))
                    .unwrap_or(usize::MAX)
                    .min(k);
                let labels: Vec<String> = (0..count)
                    .map(|i| {
                        let off = base + layout::P_LABELS + i as u64 * layout::LABEL_BYTES;
                        self.seg.load_str(off, layout::LABEL_BYTES as usize)
                    })
                    .collect();
                Prompts { version, labels }
            });
            if let Some(p) = read {
                return Ok(p);
            }
            std::hint::spin_loop();
        }
        Err(ReadError::RetriesExhausted {
            name: self.name.clone(),
            camera: usize::MAX,
            retries: self.options.max_retries,
        })
    }

    /// `camera`'s counters from the status block (each value whole; not a snapshot of the set).
    pub fn counters(&self, camera: usize) -> Result<CameraCounters, ReadError> {
        if camera >= self.seg.layout.dims.cameras {
            return Err(ReadError::NoSuchCamera {
                name: self.name.clone(),
                camera,
                cameras: self.seg.layout.dims.cameras,
            });
        }
        let base = self.seg.layout.status_camera_offset(camera);
        let get = |off: u64| self.seg.load(base + off);
        let mut late = [0u64; layout::STAGES];
        for (s, v) in late.iter_mut().enumerate() {
            *v = get(layout::C_LATE + 8 * s as u64);
        }
        Ok(CameraCounters {
            captured: get(layout::C_CAPTURED),
            dropped: get(layout::C_DROPPED),
            late,
            reconnects: get(layout::C_RECONNECTS),
            processed: get(layout::C_PROCESSED),
            corrupt: get(layout::C_CORRUPT),
            errors: get(layout::C_ERRORS),
            flags: get(layout::C_FLAGS),
            last_overrun_ns: get(layout::C_LAST_OVERRUN_NS),
            last_late_stages: get(layout::C_LAST_LATE_STAGES),
        })
    }

    /// The writer's memory high-water mark in bytes.
    pub fn memory_high_water(&self) -> u64 {
        self.seg
            .load(self.seg.layout.status_offset + layout::S_MEMORY_HIGH_WATER)
    }

    /// The writer's flight-recorder counters (all 0 without a recorder).
    pub fn recordings(&self) -> RecorderCounts {
        let base = self.seg.layout.status_offset;
        RecorderCounts {
            made: self.seg.load(base + layout::S_RECORDINGS_MADE),
            dropped: self.seg.load(base + layout::S_RECORDINGS_DROPPED),
            errors: self.seg.load(base + layout::S_RECORDING_ERRORS),
        }
    }
}
