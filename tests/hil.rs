//! Hardware-in-the-loop tests: real V4L2 capture through ocellus's V4L2 source and pipeline.
//!
//! Every test here needs a camera, so every test is `#[ignore]`d in a plain `cargo test`. They run
//! - in a VM against the kernel's virtual camera (vivid, /dev/video0) and a v4l2loopback device
//!   (/dev/video1): `make test-hil` (tests/hil/run.sh boots a kernel whose init runs this binary);
//! - against a real camera on the robot: `OCELLUS_HIL_DEVICE=/dev/video2 cargo test --test hil --
//!   --ignored camera_`. Tests named `vivid_*` need vivid's test controls and `loopback_*` a v4l2loopback
//!   device: the `camera_` filter leaves them out (and they refuse to run on another driver).
//!
//! Environment (set by tests/hil/init in the VM): `OCELLUS_HIL_DEVICE` (the camera, default /dev/video0),
//! `OCELLUS_HIL_LOOPBACK` (the v4l2loopback node), `OCELLUS_HIL_ROOT` (repository root holding models/ and
//! tests/hil/; default: this crate's directory). See docs/hil.md.
//!
//! Every test that waits on a thread does so under a watchdog that fails it instead of hanging.

#[path = "common/conformance.rs"]
mod conformance;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use v4l::control::{Control, MenuItem, Value};
use v4l::video::Output;
use v4l::{Device, FourCC};

use ocellus::frame::{FrameBuf, PixelFormat};
use ocellus::infer::{InferenceEngine, RunVariant, TractEngine};
use ocellus::manifest::{Manifest, Variant};
use ocellus::pipeline::{CameraSpec, Pipeline, PipelineSettings};
use ocellus::prompts::{PromptSet, TextEncoder};
use ocellus::scene::PROMPTS;
use ocellus::sink::{FrameResult, FLAG_CAMERA_RESTARTED};
use ocellus::sink::{Sink, SinkError};
use ocellus::source::v4l2::{list_devices, DeviceInfo, FrameSizes};
use ocellus::source::{self, write_raw_file, FrameSource, SourceError};
use ocellus::source::{CameraSettings, SourceSettings, StallTimeout};
use ocellus::stats::Stats;

/// Longest a test waits for the pipeline to reach a state before it fails (TCG runs inference 10-30x slower
/// than the host).
const WATCHDOG: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------------------
// Devices, paths, vivid's controls

fn root() -> PathBuf {
    std::env::var_os("OCELLUS_HIL_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn camera_path() -> PathBuf {
    std::env::var_os("OCELLUS_HIL_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/video0"))
}

fn loopback_path() -> PathBuf {
    std::env::var_os("OCELLUS_HIL_LOOPBACK")
        .map(PathBuf::from)
        .expect("OCELLUS_HIL_LOOPBACK is not set: loopback_* tests need a v4l2loopback node (tests/hil/run.sh)")
}

/// The camera as `ocellus cameras` sees it; fails with what to fix if it is not a capture device.
fn camera_info() -> DeviceInfo {
    let path = camera_path();
    let parent = path.parent().unwrap_or(Path::new("/dev"));
    let real = std::fs::canonicalize(&path).unwrap_or_else(|e| {
        panic!(
            "camera {}: {e} (set OCELLUS_HIL_DEVICE to the camera's node)",
            path.display()
        )
    });
    let info = list_devices(parent)
        .into_iter()
        .find(|d| std::fs::canonicalize(&d.path).is_ok_and(|p| p == real))
        .unwrap_or_else(|| panic!("{} is not a V4L2 device node", path.display()));
    assert!(
        info.is_capture(),
        "{} is not a streaming capture node: {:?}",
        path.display(),
        info.caps
    );
    info
}

fn driver_of(info: &DeviceInfo) -> String {
    info.caps
        .as_ref()
        .map(|c| c.driver.clone())
        .unwrap_or_default()
}

/// vivid-only tests refuse to run on another driver instead of failing obscurely.
fn require_vivid() {
    let driver = driver_of(&camera_info());
    assert_eq!(
        driver, "vivid",
        "this test drives vivid's test controls; {} is a '{driver}' device (run only camera_* tests there)",
        camera_path().display()
    );
}

/// A V4L2 camera config, as the TOML `source = "v4l2"` would make it.
fn v4l2_camera(
    device: &Path,
    format: PixelFormat,
    width: u32,
    height: u32,
    fps: u32,
) -> CameraSettings {
    CameraSettings {
        name: format!("hil-{format}"),
        source: SourceSettings::V4l2 {
            device: device.to_owned(),
            // 8 buffers: 320 ms of slack at 25 fps for a capture thread that TCG schedules late.
            buffers: 8,
            stall: StallTimeout::Periods(10),
        },
        format,
        width,
        height,
        fps,
        pool_size: 4,
    }
}

/// vivid's controls, looked up by name on a second file handle (closed on drop, which matters for
/// Disconnect: vivid comes back once its last handle is closed).
struct Controls {
    dev: Device,
    by_name: HashMap<String, (u32, Vec<(u32, String)>)>,
}

impl Controls {
    fn open(path: &Path) -> Controls {
        let dev = Device::with_path(path)
            .unwrap_or_else(|e| panic!("cannot open {} for its controls: {e}", path.display()));
        // v4l 0.14 unwraps on control types it does not know: guard it.
        let described = std::panic::catch_unwind(AssertUnwindSafe(|| dev.query_controls()))
            .expect("v4l's query_controls panicked on an unknown control type")
            .expect("VIDIOC_QUERY_EXT_CTRL");
        let by_name = described
            .into_iter()
            .map(|d| {
                let items = d
                    .items
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(i, item)| match item {
                        MenuItem::Name(n) => Some((i, n)),
                        MenuItem::Value(_) => None,
                    })
                    .collect();
                (d.name, (d.id, items))
            })
            .collect();
        Controls { dev, by_name }
    }

    fn id(&self, name: &str) -> u32 {
        self.by_name
            .get(name)
            .unwrap_or_else(|| panic!("the device has no control '{name}'"))
            .0
    }

    fn set(&self, name: &str, value: Value) {
        let id = self.id(name);
        self.dev
            .set_control(Control { id, value })
            .unwrap_or_else(|e| panic!("setting control '{name}': {e}"));
    }

    fn set_int(&self, name: &str, value: i64) {
        self.set(name, Value::Integer(value));
    }

    fn set_menu(&self, name: &str, item: &str) {
        let (_, items) = &self.by_name[name];
        let index = items
            .iter()
            .find(|(_, n)| n == item)
            .unwrap_or_else(|| panic!("control '{name}' has no item '{item}': {items:?}"))
            .0;
        self.set(name, Value::Integer(index as i64));
    }

    /// A button control (vivid's Disconnect).
    fn press(&self, name: &str) {
        self.set(name, Value::None);
    }
}

/// vivid's picture for the golden checksums: the 75% colour bar with the text overlay off, no movement.
fn vivid_colour_bars() {
    let c = Controls::open(&camera_path());
    c.set_menu("Test Pattern", "75% Colorbar");
    c.set_menu("OSD Text Mode", "None");
    c.set_int("Percentage of Dropped Buffers", 0);
}

/// Puts vivid's drop percentage back to 0 however the test ends.
struct NoDrops;

impl Drop for NoDrops {
    fn drop(&mut self) {
        // A panic here while the test unwinds would abort the whole run.
        let reset = std::panic::catch_unwind(|| {
            Controls::open(&camera_path()).set_int("Percentage of Dropped Buffers", 0)
        });
        if reset.is_err() {
            eprintln!("could not reset vivid's Percentage of Dropped Buffers to 0");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Capture through ocellus's V4L2 source

/// What `capture` saw.
struct Capture {
    frames: Vec<FrameBuf>,
    /// Frames missing between consecutive sequence numbers.
    gaps: u64,
    /// Frame rate from the driver's timestamps of the first and last frame.
    fps: f64,
}

/// Starts the source of `camera`, captures `n` frames into fresh buffers, stops it.
fn capture(camera: &CameraSettings, n: usize) -> Capture {
    let mut src = source::open(0, camera).unwrap_or_else(|e| panic!("open: {e}"));
    src.start()
        .unwrap_or_else(|e| panic!("start {}: {e}", src.describe()));
    eprintln!("{}", src.describe());
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        let mut buf = FrameBuf::new(src.max_frame_bytes());
        src.next_frame(&mut buf)
            .unwrap_or_else(|e| panic!("next_frame from {}: {e}", src.describe()));
        frames.push(buf);
    }
    src.stop();
    let gaps = frames
        .windows(2)
        .map(|w| {
            assert!(
                w[1].meta.sequence > w[0].meta.sequence,
                "sequence went from {} to {}",
                w[0].meta.sequence,
                w[1].meta.sequence
            );
            w[1].meta.sequence - w[0].meta.sequence - 1
        })
        .sum();
    let span_ns = frames[n - 1].meta.capture_ns - frames[0].meta.capture_ns;
    let fps = (n - 1) as f64 / (span_ns as f64 / 1e9);
    eprintln!(
        "  {} frames, sequence {}..{}, {gaps} gaps, {fps:.2} fps (driver timestamps)",
        n,
        frames[0].meta.sequence,
        frames[n - 1].meta.sequence
    );
    Capture { frames, gaps, fps }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The configured size of a format the camera offers: 640x480 if it has it, else its first size.
fn size_for(info: &DeviceInfo, format: PixelFormat) -> Option<(u32, u32)> {
    let f = info
        .formats
        .iter()
        .find(|f| f.pixel_format == Some(format))?;
    let sizes: Vec<(u32, u32)> = f
        .sizes
        .iter()
        .map(|(s, _)| match *s {
            FrameSizes::Discrete { width, height } => (width, height),
            FrameSizes::Stepwise {
                min_width,
                max_width,
                min_height,
                max_height,
                ..
            } => (
                640.clamp(min_width, max_width),
                480.clamp(min_height, max_height),
            ),
        })
        .collect();
    sizes
        .iter()
        .copied()
        .find(|&s| s == (640, 480))
        .or_else(|| sizes.first().copied())
}

// ---------------------------------------------------------------------------------------------------------
// The pipeline with the demo model

fn demo_manifest() -> Manifest {
    let path = root().join("models/demo/manifest.toml");
    Manifest::load(&path).unwrap_or_else(|e| panic!("demo manifest {}: {e}", path.display()))
}

fn demo_prompts(manifest: &Manifest) -> Arc<ArcSwap<PromptSet>> {
    let labels: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let set = TextEncoder::load(manifest, Variant::Fp32)
        .and_then(|mut t| t.embed(&labels))
        .expect("embed the demo prompts");
    Arc::new(ArcSwap::from_pointee(set))
}

/// What a source delivered to the pipeline's capture thread, in order.
#[derive(Debug, Clone, PartialEq)]
enum Tapped {
    Started,
    Frame { sequence: u64, fingerprint: u64 },
    Failed(String),
}

/// Wraps a source and records what it delivers (sequence numbers and a content fingerprint), so a test can
/// compare the pipeline's counters with the frames the driver actually handed over.
struct Tap {
    inner: Box<dyn FrameSource>,
    log: Arc<Mutex<Vec<Tapped>>>,
    /// Lockstep: hand over the next frame only once the sink has seen a result for every frame delivered
    /// so far (the replay side of the parity test, so that no scene is skipped by "latest wins").
    gate: Option<Collect>,
    delivered: usize,
}

impl Tap {
    fn push(&self, t: Tapped) {
        if let Ok(mut log) = self.log.lock() {
            log.push(t);
        }
    }
}

impl FrameSource for Tap {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn start(&mut self) -> Result<(), SourceError> {
        let r = self.inner.start();
        match &r {
            Ok(()) => self.push(Tapped::Started),
            Err(e) => self.push(Tapped::Failed(e.to_string())),
        }
        r
    }
    fn next_frame(&mut self, buf: &mut FrameBuf) -> Result<(), SourceError> {
        if let Some(gate) = &self.gate {
            let start = Instant::now();
            while gate.len() < self.delivered && start.elapsed() < WATCHDOG {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let r = self.inner.next_frame(buf);
        match &r {
            Ok(()) => self.push(Tapped::Frame {
                sequence: buf.meta.sequence,
                fingerprint: fingerprint(buf.bytes()),
            }),
            Err(e) => self.push(Tapped::Failed(e.to_string())),
        }
        if r.is_ok() {
            self.delivered += 1;
        }
        r
    }
    fn stop(&mut self) {
        self.inner.stop();
    }
    fn max_frame_bytes(&self) -> usize {
        self.inner.max_frame_bytes()
    }
}

/// FNV-1a over every 61st byte and the length: cheap enough for the capture thread under TCG, and distinct
/// for distinct scenes.
fn fingerprint(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ data.len() as u64;
    for b in data.iter().step_by(61) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One result as a sink saw it (results borrow the pipeline's buffers).
#[derive(Debug, Clone)]
struct Seen {
    sequence: u64,
    flags: u32,
    scores: Vec<f32>,
    top: Option<usize>,
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Seen>>>);

impl Collect {
    fn seen(&self) -> Vec<Seen> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or_default()
    }
}

impl Sink for Collect {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        let seen = Seen {
            sequence: r.sequence,
            flags: r.flags,
            scores: r.scores.to_vec(),
            top: r.top().map(|(i, _)| i),
        };
        self.0
            .lock()
            .map_err(|_| SinkError::Closed { sink: "collect" })?
            .push(seen);
        Ok(())
    }
}

/// A running pipeline over one tapped camera with the demo model (fp32, one thread).
struct Run {
    pipeline: Pipeline,
    tap: Arc<Mutex<Vec<Tapped>>>,
    sink: Collect,
}

impl Run {
    fn start(camera: &CameraSettings) -> Run {
        Run::start_with(camera, false)
    }

    /// `lockstep`: every frame the source delivers is processed (see [`Tap::gate`]).
    fn start_with(camera: &CameraSettings, lockstep: bool) -> Run {
        let manifest = demo_manifest();
        let engine: Box<dyn InferenceEngine> = Box::new(
            TractEngine::load(&manifest, RunVariant::Fp32, 1).expect("load the demo engine"),
        );
        let prompts = demo_prompts(&manifest);
        let tap = Arc::new(Mutex::new(Vec::new()));
        let inner = source::open(0, camera).unwrap_or_else(|e| panic!("open: {e}"));
        let sink = Collect::default();
        let spec = CameraSpec {
            name: camera.name.clone(),
            source: Box::new(Tap {
                inner,
                log: tap.clone(),
                gate: lockstep.then(|| sink.clone()),
                delivered: 0,
            }),
            format: camera.format,
            width: camera.width,
            height: camera.height,
            pool_size: camera.pool_size,
        };
        let settings = PipelineSettings {
            restart_backoff_min: Duration::from_millis(50),
            restart_backoff_max: Duration::from_millis(500),
            ..PipelineSettings::default()
        };
        let mut pipeline = Pipeline::new(
            settings,
            vec![spec],
            engine,
            &manifest.preprocess,
            prompts,
            vec![Box::new(sink.clone())],
        )
        .expect("pipeline");
        pipeline.start().expect("start the pipeline");
        Run {
            pipeline,
            tap,
            sink,
        }
    }

    fn stats(&self) -> Arc<Stats> {
        self.pipeline.stats().clone()
    }

    fn counter(&self, f: impl Fn(&ocellus::stats::CameraCounters) -> &AtomicU64) -> u64 {
        f(&self.stats().camera(0).counters).load(Relaxed)
    }

    /// Waits until `done` holds, failing the test after [`WATCHDOG`] or if the pipeline stops.
    fn wait_for(&self, what: &str, done: impl Fn(&Run) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                self.pipeline.is_running(),
                "the pipeline stopped while waiting for {what}"
            );
            assert!(
                start.elapsed() < WATCHDOG,
                "watchdog: {what} did not happen within {WATCHDOG:?}; stats: {}",
                self.stats().summary()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn tapped(&self) -> Vec<Tapped> {
        self.tap.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn stop(mut self) -> (Vec<Tapped>, Vec<Seen>, Arc<Stats>) {
        self.pipeline.stop();
        let stats = self.stats();
        eprintln!("{}", stats.summary());
        (self.tapped(), self.sink.seen(), stats)
    }
}

/// Frames missing between consecutive delivered sequence numbers, restarting the count at each start (as
/// the pipeline's driver-dropped counter does).
fn sequence_gaps(tapped: &[Tapped]) -> u64 {
    let mut last = None;
    let mut gaps = 0;
    for t in tapped {
        match t {
            Tapped::Started => last = None,
            Tapped::Frame { sequence, .. } => {
                if let Some(l) = last {
                    assert!(*sequence > l, "sequence went back from {l} to {sequence}");
                    gaps += sequence - l - 1;
                }
                last = Some(*sequence);
            }
            Tapped::Failed(_) => {}
        }
    }
    gaps
}

// ---------------------------------------------------------------------------------------------------------
// Camera tests: any camera (vivid in the VM, the robot's camera on the robot)

#[test]
#[ignore = "needs a camera: tests/hil/run.sh runs it in a VM; on a robot set OCELLUS_HIL_DEVICE"]
fn camera_negotiates_yuyv_and_a_second_format_and_streams_continuously() {
    let info = camera_info();
    eprintln!(
        "camera {} ({}): formats {:?}",
        info.path.display(),
        driver_of(&info),
        info.formats
            .iter()
            .filter_map(|f| f.pixel_format)
            .collect::<Vec<_>>()
    );
    let second = [PixelFormat::Nv12, PixelFormat::Grey]
        .into_iter()
        .find(|f| size_for(&info, *f).is_some());
    let mut formats = vec![PixelFormat::Yuyv];
    formats.extend(second);
    assert!(
        size_for(&info, PixelFormat::Yuyv).is_some() && formats.len() == 2,
        "the camera must offer YUYV and NV12 or GREY for this test; it offers {:?}",
        info.formats
            .iter()
            .map(|f| f.desc.description.clone())
            .collect::<Vec<_>>()
    );
    for format in formats {
        let (w, h) = size_for(&info, format).expect("size");
        // fps 0: the driver's rate, whatever camera this is.
        let cam = v4l2_camera(&camera_path(), format, w, h, 0);
        let cap = capture(&cam, 20);
        let expected = format.frame_bytes(w, h).expect("raw format");
        for f in &cap.frames {
            assert_eq!(f.meta.format, format);
            assert_eq!((f.meta.width, f.meta.height), (w, h));
            assert_eq!(f.meta.bytes, expected, "{format} {w}x{h} frame size");
        }
        assert!(cap.fps > 1.0, "{format}: {:.2} fps", cap.fps);
        // Continuity: a healthy camera drops at most a few frames in 20 while we only copy.
        assert!(cap.gaps <= 3, "{format}: {} frames missing in 20", cap.gaps);
    }
}

#[test]
#[ignore = "needs a camera: tests/hil/run.sh runs it in a VM; on a robot set OCELLUS_HIL_DEVICE"]
fn camera_conforms_to_the_frame_source_contract() {
    let info = camera_info();
    let (w, h) = size_for(&info, PixelFormat::Yuyv).expect("the camera offers YUYV");
    let cam = v4l2_camera(&camera_path(), PixelFormat::Yuyv, w, h, 0);
    let mut src = source::open(0, &cam).expect("open");
    let expect = conformance::Expect {
        format: PixelFormat::Yuyv,
        width: w,
        height: h,
        labels: false,
    };
    conformance::conformance(src.as_mut(), &expect, 20);
    // Twice: stop releases the device and start opens it again.
    conformance::conformance(src.as_mut(), &expect, 5);
}

#[test]
#[ignore = "needs a camera: tests/hil/run.sh runs it in a VM; on a robot set OCELLUS_HIL_DEVICE"]
fn camera_refuses_a_size_it_cannot_deliver_and_lists_its_sizes() {
    let cam = v4l2_camera(&camera_path(), PixelFormat::Yuyv, 10, 10, 0);
    let mut src = source::open(0, &cam).expect("open");
    let err = src.start().expect_err("a 10x10 frame should be refused");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err:?}");
    assert!(msg.contains("10x10"), "{msg}");
    assert!(
        msg.contains("width and height"),
        "the message says what to fix: {msg}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// vivid: golden frames, frame rate, fault injection

/// The golden checksums, `tests/hil/golden.toml`.
fn golden(key: &str) -> String {
    let path = root().join("tests/hil/golden.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let table: toml::Table = text.parse().expect("golden.toml is TOML");
    table
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{} has no key {key}", path.display()))
        .to_owned()
}

#[test]
#[ignore = "needs vivid: run by tests/hil/run.sh in a VM"]
fn vivid_colour_bars_match_the_golden_checksums_at_the_set_frame_rate() {
    require_vivid();
    vivid_colour_bars();
    let mut mismatches = Vec::new();
    for (format, key) in [
        (PixelFormat::Yuyv, "yuyv-640x480"),
        (PixelFormat::Nv12, "nv12-640x480"),
    ] {
        // 10 fps, one of vivid's rates at 640x480 (it offers up to 25): vivid's own thread skips frames
        // when TCG on a loaded host wakes it late, and a lower rate leaves it more slack.
        let cam = v4l2_camera(&camera_path(), format, 640, 480, 10);
        let cap = capture(&cam, 20);
        let sums: Vec<String> = cap.frames.iter().map(|f| sha256_hex(f.bytes())).collect();
        eprintln!("  {key}: sha256 {}", sums[0]);
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "{key}: the colour bar changed between frames (OSD text on?)"
        );
        // The picture is the colour bar: luma of the 8 bars on the middle row, from white to black.
        let frame = cap.frames[0].bytes();
        let luma = |x: usize| match format {
            PixelFormat::Yuyv => frame[240 * 640 * 2 + x * 2],
            _ => frame[240 * 640 + x],
        };
        let bars: Vec<u8> = (0..8).map(|k| luma(40 + 80 * k)).collect();
        eprintln!("  {key}: bar luma {bars:?}");
        assert!(
            bars.windows(2).all(|w| w[0] > w[1]),
            "{key}: the 8 bars' luma should fall from white to black: {bars:?}"
        );
        // TCG keeps real time. A wide band: a broken rate is off by 2x.
        assert!(
            (5.0..=15.0).contains(&cap.fps),
            "{key}: {:.2} fps, expected about 10",
            cap.fps
        );
        // A starved VM (TCG on a loaded host) may miss a frame now and then; vivid itself drops none.
        assert!(cap.gaps <= 2, "{key}: {} frames missing in 20", cap.gaps);
        let want = golden(key);
        if sums[0] != want {
            mismatches.push(format!(
                "{key}: captured {} but golden.toml has {want}",
                sums[0]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "captured frames differ from tests/hil/golden.toml:\n{}",
        mismatches.join("\n")
    );
}

#[test]
#[ignore = "needs vivid: run by tests/hil/run.sh in a VM"]
fn vivid_dropped_buffers_are_counted_as_the_sequence_gaps_seen() {
    require_vivid();
    let _restore = NoDrops;
    vivid_colour_bars();
    Controls::open(&camera_path()).set_int("Percentage of Dropped Buffers", 30);
    let cam = v4l2_camera(&camera_path(), PixelFormat::Yuyv, 640, 480, 10);
    let run = Run::start(&cam);
    run.wait_for("40 captured frames", |r| r.counter(|c| &c.captured) >= 40);
    let (tapped, seen, stats) = run.stop();
    let c = &stats.camera(0).counters;
    let gaps = sequence_gaps(&tapped);
    let frames = tapped
        .iter()
        .filter(|t| matches!(t, Tapped::Frame { .. }))
        .count() as u64;
    eprintln!(
        "dropped-buffer injection 30%: {frames} frames delivered, {gaps} frames missing in their sequence, \
         driver_dropped {}, processed {}",
        c.driver_dropped.load(Relaxed),
        c.processed.load(Relaxed)
    );
    assert_eq!(c.captured.load(Relaxed), frames);
    assert_eq!(c.driver_dropped.load(Relaxed), gaps);
    // 30% of ~57 frame periods: so few drops would mean the injection did not reach the stream.
    assert!(gaps >= 5, "only {gaps} frames missing with 30% dropped");
    assert_eq!(c.disconnects.load(Relaxed), 0);
    assert_eq!(c.reconnects.load(Relaxed), 0);
    assert!(!seen.is_empty());
}

#[test]
#[ignore = "needs vivid: run by tests/hil/run.sh in a VM"]
fn vivid_stall_is_flagged_reopened_and_recovered_from() {
    require_vivid();
    let _restore = NoDrops;
    vivid_colour_bars();
    // 10 fps and stall-periods 10: a stall is declared one second after the last frame.
    let cam = v4l2_camera(&camera_path(), PixelFormat::Yuyv, 640, 480, 10);
    let run = Run::start(&cam);
    run.wait_for("5 processed frames", |r| r.counter(|c| &c.processed) >= 5);
    // vivid drops every buffer: the stream stays open and healthy but no frame ever arrives.
    Controls::open(&camera_path()).set_int("Percentage of Dropped Buffers", 100);
    run.wait_for("the stall to be flagged", |r| {
        r.counter(|c| &c.stalls) >= 1 && r.stats().camera(0).counters.stalled.load(Relaxed)
    });
    run.wait_for("the stalled camera to be reopened", |r| {
        r.counter(|c| &c.reconnects) >= 1
    });
    Controls::open(&camera_path()).set_int("Percentage of Dropped Buffers", 0);
    let processed_at_recovery = run.counter(|c| &c.processed);
    run.wait_for("5 more processed frames", |r| {
        r.counter(|c| &c.processed) >= processed_at_recovery + 5
    });
    run.wait_for("the stalled flag to clear", |r| {
        !r.stats().camera(0).counters.stalled.load(Relaxed)
    });
    let (tapped, seen, stats) = run.stop();
    let c = &stats.camera(0).counters;
    let stalls = c.stalls.load(Relaxed);
    let reconnects = c.reconnects.load(Relaxed);
    let starts = tapped.iter().filter(|t| **t == Tapped::Started).count() as u64;
    eprintln!(
        "stall: stalls {stalls}, reconnects {reconnects}, disconnects {}, source starts {starts}, processed {}",
        c.disconnects.load(Relaxed),
        c.processed.load(Relaxed)
    );
    assert!(stalls >= 1);
    assert_eq!(
        c.disconnects.load(Relaxed),
        0,
        "a stall is not a disconnect"
    );
    // Every stall reopens the camera, and every reopen is counted: one start plus one per reconnect.
    assert_eq!(starts, 1 + reconnects, "{tapped:?}");
    assert!(
        tapped.iter().any(
            |t| matches!(t, Tapped::Failed(m) if m.contains("no frame") || m.contains("stall"))
        ),
        "the source reported the stall: {tapped:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[1].sequence > w[0].sequence),
        "sequence numbers keep increasing across the reopen"
    );
}

#[test]
#[ignore = "needs vivid: run by tests/hil/run.sh in a VM"]
fn vivid_disconnect_is_reported_counted_and_recovered_from() {
    require_vivid();
    vivid_colour_bars();
    let cam = v4l2_camera(&camera_path(), PixelFormat::Yuyv, 640, 480, 10);
    let run = Run::start(&cam);
    run.wait_for("5 processed frames", |r| r.counter(|c| &c.processed) >= 5);
    // vivid's Disconnect unregisters its nodes: open handles get ENODEV and POLLERR/POLLHUP, open() fails,
    // until the last handle is closed; then vivid registers them again. This handle closes at once, so the
    // source's own close (when it sees the loss) brings the camera back.
    Controls::open(&camera_path()).press("Disconnect");
    run.wait_for("the disconnect to be counted", |r| {
        r.counter(|c| &c.disconnects) >= 1
    });
    let processed_at_loss = run.counter(|c| &c.processed);
    run.wait_for("the camera to reopen", |r| {
        r.counter(|c| &c.reconnects) >= 1
    });
    run.wait_for("5 more processed frames", |r| {
        r.counter(|c| &c.processed) >= processed_at_loss + 5
    });
    let (tapped, seen, stats) = run.stop();
    let c = &stats.camera(0).counters;
    eprintln!(
        "disconnect: disconnects {}, reconnects {}, source errors {}, processed {}, tap {:?}",
        c.disconnects.load(Relaxed),
        c.reconnects.load(Relaxed),
        c.source_errors.load(Relaxed),
        c.processed.load(Relaxed),
        tapped
            .iter()
            .filter(|t| !matches!(t, Tapped::Frame { .. }))
            .collect::<Vec<_>>()
    );
    assert_eq!(c.disconnects.load(Relaxed), 1);
    assert_eq!(c.reconnects.load(Relaxed), 1);
    assert_eq!(c.stalls.load(Relaxed), 0);
    let starts = tapped.iter().filter(|t| **t == Tapped::Started).count();
    assert_eq!(starts, 2, "started once, reopened once: {tapped:?}");
    assert!(
        tapped
            .iter()
            .any(|t| matches!(t, Tapped::Failed(m) if m.contains("disconnect") || m.contains("No such device"))),
        "the source reported the loss: {tapped:?}"
    );
    let restarted: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.flags & FLAG_CAMERA_RESTARTED != 0)
        .collect();
    assert_eq!(restarted.len(), 1, "one result flagged as after a restart");
    assert!(
        seen.windows(2).all(|w| w[1].sequence > w[0].sequence),
        "sequence numbers keep increasing across the reconnect"
    );
}

// ---------------------------------------------------------------------------------------------------------
// v4l2loopback: known frames in, the same scores out as through the replay source

const SCENES: usize = 8;
const LOOP_FPS: u32 = 30;

/// The demo scenes in the camera's pixel format: the synthetic source renders them (docs/scene-spec.md).
fn scene_frames(format: PixelFormat, w: u32, h: u32) -> Vec<(Vec<u8>, Option<u16>)> {
    let cam = CameraSettings {
        name: "scenes".into(),
        source: SourceSettings::Synthetic {
            seed: 2026,
            hold_frames: 1,
        },
        format,
        width: w,
        height: h,
        fps: 0,
        pool_size: 3,
    };
    let mut src = source::open(0, &cam).expect("synthetic source");
    src.start().expect("start synthetic");
    (0..SCENES)
        .map(|_| {
            let mut buf = FrameBuf::new(src.max_frame_bytes());
            src.next_frame(&mut buf).expect("scene frame");
            (buf.bytes().to_vec(), buf.meta.label)
        })
        .collect()
}

/// Writes scene number `scene` into the loopback device at [`LOOP_FPS`], again and again (the test moves
/// `scene` on once the pipeline has scored it), until `stop`; returns how many frames it wrote.
fn loopback_writer(
    frames: Arc<Vec<(Vec<u8>, Option<u16>)>>,
    w: u32,
    h: u32,
    scene: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::Write;
        let path = loopback_path();
        let mut dev = Device::with_path(&path)
            .unwrap_or_else(|e| panic!("cannot open the loopback {}: {e}", path.display()));
        let mut fmt = Output::format(&dev).expect("VIDIOC_G_FMT (output)");
        fmt.width = w;
        fmt.height = h;
        fmt.fourcc = FourCC::new(b"YUYV");
        let fmt = Output::set_format(&dev, &fmt).expect("VIDIOC_S_FMT (output)");
        assert_eq!((fmt.width, fmt.height), (w, h), "loopback format");
        let mut params = Output::params(&dev).expect("VIDIOC_G_PARM (output)");
        params.interval = v4l::Fraction::new(1, LOOP_FPS);
        let _ = Output::set_params(&dev, &params);
        let period = Duration::from_secs(1) / LOOP_FPS;
        let mut next = Instant::now();
        let mut written = 0u64;
        while !stop.load(Relaxed) {
            let (data, _) = &frames[scene.load(Relaxed) % frames.len()];
            let n = dev.write(data).expect("write a frame into the loopback");
            assert_eq!(n, data.len(), "short write into the loopback");
            written += 1;
            next += period;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        written
    })
}

#[test]
#[ignore = "needs v4l2loopback: run by tests/hil/run.sh in a VM"]
fn loopback_scenes_score_the_same_through_v4l2_as_through_replay() {
    let (w, h) = (320, 240);
    let frames = Arc::new(scene_frames(PixelFormat::Yuyv, w, h));
    let by_print: HashMap<u64, usize> = frames
        .iter()
        .enumerate()
        .map(|(i, (d, _))| (fingerprint(d), i))
        .collect();
    assert_eq!(by_print.len(), SCENES, "scene fingerprints are distinct");

    // Through the replay source: a raw recording of the same frames, each processed (lockstep).
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("scenes.raw");
    write_raw_file(
        &raw,
        PixelFormat::Yuyv,
        w,
        h,
        frames.iter().map(|(d, l)| (d.as_slice(), *l)),
    )
    .expect("write the raw recording");
    let replay = CameraSettings {
        name: "replay".into(),
        source: SourceSettings::Replay {
            path: raw,
            looping: false,
        },
        format: PixelFormat::Yuyv,
        width: w,
        height: h,
        fps: 0,
        pool_size: 4,
    };
    let run = Run::start_with(&replay, true);
    run.wait_for("every replayed scene processed", |r| {
        r.counter(|c| &c.processed) >= SCENES as u64
    });
    let (tapped, seen, _) = run.stop();
    let replay_scores = scores_by_scene(&tapped, &seen, &by_print);
    assert_eq!(replay_scores.len(), SCENES, "replay scored every scene");

    // Through the camera: the same frames written into v4l2loopback and captured by the V4L2 source, one
    // scene after the other, each until the pipeline has scored it.
    let scene = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = loopback_writer(frames.clone(), w, h, scene.clone(), stop.clone());
    // v4l2loopback offers capture once a writer has set the format and written (exclusive_caps).
    let cam = v4l2_camera(&loopback_path(), PixelFormat::Yuyv, w, h, 0);
    let start = Instant::now();
    let direct = loop {
        let mut src = source::open(0, &cam).expect("open");
        match src.start() {
            Ok(()) => {
                src.stop();
                break capture(&cam, 10);
            }
            Err(e) => {
                assert!(
                    start.elapsed() < WATCHDOG,
                    "the loopback never offered capture: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    // Byte-exact: what the V4L2 source delivers is what was written.
    for f in &direct.frames {
        assert_eq!(
            f.bytes(),
            frames[0].0.as_slice(),
            "frame {} differs from the scene written",
            f.meta.sequence
        );
    }
    let run = Run::start(&cam);
    for i in 0..SCENES {
        scene.store(i, Relaxed);
        run.wait_for(&format!("scene {i} scored through the loopback"), |r| {
            scores_by_scene(&r.tapped(), &r.sink.seen(), &by_print).contains_key(&i)
        });
    }
    let (tapped, seen, stats) = run.stop();
    stop.store(true, Relaxed);
    let written = writer.join().expect("the loopback writer panicked");
    let camera_scores = scores_by_scene(&tapped, &seen, &by_print);
    eprintln!(
        "loopback: {written} frames written, {} captured, {} processed, {} driver-dropped",
        stats.camera(0).counters.captured.load(Relaxed),
        seen.len(),
        stats.camera(0).counters.driver_dropped.load(Relaxed)
    );
    let top = |s: &[f32]| {
        s.iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i)
    };
    for i in 0..SCENES {
        let (a, b) = (&camera_scores[&i], &replay_scores[&i]);
        assert_eq!(a.len(), b.len());
        let diff = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        let truth = frames[i].1.and_then(ocellus::scene::class_prompt);
        eprintln!(
            "  scene {i} ({}): top v4l2 '{}' / replay '{}', max |score diff| {diff:e}",
            truth.unwrap_or("?"),
            PROMPTS[top(a).unwrap_or(0)],
            PROMPTS[top(b).unwrap_or(0)]
        );
        assert!(diff <= 1e-6, "scene {i}: scores differ by {diff}");
        assert_eq!(top(a), top(b), "scene {i}: top prompt differs");
    }
}

/// The scores of each scene (by index), joining the sink's results to the tapped frames by sequence number.
fn scores_by_scene(
    tapped: &[Tapped],
    seen: &[Seen],
    by_print: &HashMap<u64, usize>,
) -> HashMap<usize, Vec<f32>> {
    let scene_of: HashMap<u64, usize> = tapped
        .iter()
        .filter_map(|t| match t {
            Tapped::Frame {
                sequence,
                fingerprint,
            } => by_print.get(fingerprint).map(|i| (*sequence, *i)),
            _ => None,
        })
        .collect();
    seen.iter()
        .filter(|s| s.top.is_some())
        .filter_map(|s| Some((*scene_of.get(&s.sequence)?, s.scores.clone())))
        .collect()
}
