//! V4L2 capture without a camera: the config keys of a v4l2 camera, the pure pieces of the source (FourCC
//! names, driver timestamps, stall timeouts, sequence gaps), the source's errors on things that are not
//! cameras, `ocellus cameras` with no device, and the capture loop's handling of stalls, disconnects and
//! sequence gaps through a scripted source in the real pipeline. The real-device tests are in tests/hil.rs
//! (vivid in a VM).
//!
//! Every test that waits on threads does so under a watchdog that fails it instead of hanging.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ocellus::clock::monotonic_ns;
use ocellus::config::{Config, Origin};
use ocellus::frame::{FrameBuf, PixelFormat};
use ocellus::infer::{InferenceEngine, RunVariant, TractEngine};
use ocellus::manifest::{Manifest, Variant};
use ocellus::pipeline::{CameraSpec, Pipeline, PipelineSettings};
use ocellus::prompts::{PromptSet, TextEncoder};
use ocellus::scene::{render_into, Rng, SceneParams, PROMPTS};
use ocellus::source::v4l2::{
    driver_timestamp, fourcc_name, fourccs_of, interval_fps, list_devices, list_rates, list_sizes,
    stall_timeout, timeval_ns, FrameIntervals, FrameSizes, FIRST_FRAME_TIMEOUT, MIN_STALL_TIMEOUT,
    TIMESTAMP_MAX_AHEAD, UNKNOWN_FRAME_PERIOD,
};
use ocellus::source::{self, FrameSource, SequenceGaps, SourceError, V4l2Source};
use ocellus::source::{CameraSettings, SourceSettings, StallTimeout};
use ocellus::stats::{Stats, StatusLine};

const WATCHDOG: Duration = Duration::from_secs(300);

// ---- config ----

fn parse(camera_keys: &str) -> Result<Config, String> {
    let toml = format!("[[camera]]\nname = \"usb\"\n{camera_keys}\n");
    Config::parse(&toml, Origin::File("test.toml".into())).map_err(|e| e.to_string())
}

fn v4l2_of(config: &Config) -> (std::path::PathBuf, u32, StallTimeout) {
    match &config.cameras[0].source {
        SourceSettings::V4l2 {
            device,
            buffers,
            stall,
        } => (device.clone(), *buffers, *stall),
        other => panic!("not a v4l2 camera: {other:?}"),
    }
}

#[test]
fn v4l2_keys_have_defaults() {
    let config = parse("source = \"v4l2\"\ndevice = \"/dev/video0\"").expect("valid");
    assert_eq!(
        v4l2_of(&config),
        ("/dev/video0".into(), 4, StallTimeout::Periods(10))
    );
}

#[test]
fn v4l2_keys_are_read() {
    let config = parse(
        "source = \"v4l2\"\ndevice = \"/dev/v4l/by-id/usb-cam-video-index0\"\nbuffers = 6\nstall-periods = 4",
    )
    .expect("valid");
    assert_eq!(
        v4l2_of(&config),
        (
            "/dev/v4l/by-id/usb-cam-video-index0".into(),
            6,
            StallTimeout::Periods(4)
        )
    );
    let config = parse("source = \"v4l2\"\ndevice = \"/dev/video1\"\nstall-timeout-ms = 750")
        .expect("valid");
    assert_eq!(
        v4l2_of(&config).2,
        StallTimeout::Fixed(Duration::from_millis(750))
    );
}

#[test]
fn bad_v4l2_keys_name_the_key_and_the_fix() {
    let cases = [
        ("source = \"v4l2\"", "camera[0].device", "/dev/video0"),
        ("source = \"v4l2\"\ndevice = \" \"", "camera[0].device", "ocellus cameras"),
        (
            "source = \"v4l2\"\ndevice = \"/dev/video0\"\nbuffers = 1",
            "camera[0].buffers",
            "2..=32",
        ),
        (
            "source = \"v4l2\"\ndevice = \"/dev/video0\"\nbuffers = 33",
            "camera[0].buffers",
            "2..=32",
        ),
        (
            "source = \"v4l2\"\ndevice = \"/dev/video0\"\nstall-periods = 1",
            "camera[0].stall-periods",
            "2..=1000",
        ),
        (
            "source = \"v4l2\"\ndevice = \"/dev/video0\"\nstall-timeout-ms = 5",
            "camera[0].stall-timeout-ms",
            "100",
        ),
        (
            "source = \"v4l2\"\ndevice = \"/dev/video0\"\nstall-timeout-ms = 500\nstall-periods = 5",
            "camera[0].stall-timeout-ms",
            "give one of them",
        ),
        (
            "source = \"synthetic\"\nbuffers = 4",
            "camera[0].buffers",
            "only applies to source = \"v4l2\"",
        ),
        (
            "source = \"replay\"\nstall-periods = 4",
            "camera[0].stall-periods",
            "remove the key",
        ),
        (
            "source = \"v4l2\"\ndevice = \"/dev/video0\"\nbuffers = \"many\"",
            "camera[0].buffers",
            "",
        ),
    ];
    for (keys, key, fix) in cases {
        let err = parse(keys).expect_err(keys);
        assert!(err.contains("test.toml"), "{keys}: {err}");
        assert!(err.contains(key), "{keys}: expected key {key}: {err}");
        assert!(err.contains(fix), "{keys}: expected '{fix}': {err}");
    }
}

// ---- pure pieces ----

#[test]
fn fourcc_names_and_the_formats_ocellus_reads() {
    assert_eq!(fourcc_name(u32::from_le_bytes(*b"YUYV")), "YUYV");
    assert_eq!(fourcc_name(u32::from_le_bytes(*b"Y16 ")), "Y16");
    // Big-endian variant: bit 31 set (the v4l crate prints these as empty).
    assert_eq!(
        fourcc_name(u32::from_le_bytes(*b"Y16 ") | (1 << 31)),
        "Y16-BE"
    );
    assert_eq!(fourcc_name(0x0102_0304), "....");
    for format in PixelFormat::ALL {
        let codes = fourccs_of(format);
        assert_eq!(codes[0], format.fourcc(), "{format}");
        for code in codes {
            assert_eq!(PixelFormat::from_fourcc(*code), Some(format), "{format}");
        }
    }
    assert_eq!(fourccs_of(PixelFormat::Mjpeg), &[*b"MJPG", *b"JPEG"]);
}

#[test]
fn driver_timevals_become_monotonic_nanoseconds() {
    assert_eq!(timeval_ns(0, 0), Some(0));
    assert_eq!(timeval_ns(12, 345_678), Some(12_345_678_000));
    assert_eq!(timeval_ns(1, 999_999), Some(1_999_999_000));
    assert_eq!(timeval_ns(-1, 0), None);
    assert_eq!(timeval_ns(1, 1_000_000), None);
    assert_eq!(timeval_ns(1, -1), None);
    assert_eq!(timeval_ns(i64::MAX, 0), None);
}

#[test]
fn driver_timestamps_are_used_when_monotonic_and_plausible() {
    let now = 50_000_000_000u64;
    assert_eq!(
        driver_timestamp(true, (49, 990_000), now),
        Ok(49_990_000_000)
    );
    // A driver stamping the end of exposure from its schedule can be a frame period ahead.
    assert_eq!(
        driver_timestamp(true, (50, 40_000), now),
        Ok(50_040_000_000)
    );
    let ahead = TIMESTAMP_MAX_AHEAD.as_secs() as i64 + 1;
    assert!(driver_timestamp(true, (50 + ahead, 0), now).is_err());
    assert!(driver_timestamp(true, (0, 0), now).is_err(), "unset");
    assert!(driver_timestamp(true, (-1, 0), now).is_err());
    let why = driver_timestamp(false, (49, 0), now).unwrap_err();
    assert!(why.contains("CLOCK_MONOTONIC"), "{why}");
}

#[test]
fn stall_timeout_is_periods_of_the_rate_or_fixed_with_a_floor() {
    let p30 = Some(Duration::from_nanos(1_000_000_000 / 30));
    assert_eq!(
        stall_timeout(StallTimeout::Periods(10), p30),
        Duration::from_nanos(10 * (1_000_000_000 / 30))
    );
    assert_eq!(
        stall_timeout(StallTimeout::Periods(5), Some(Duration::from_millis(200))),
        Duration::from_secs(1)
    );
    assert_eq!(
        stall_timeout(StallTimeout::Periods(4), None),
        UNKNOWN_FRAME_PERIOD * 4
    );
    assert_eq!(
        stall_timeout(StallTimeout::Periods(2), Some(Duration::from_millis(5))),
        MIN_STALL_TIMEOUT
    );
    assert_eq!(
        stall_timeout(StallTimeout::Fixed(Duration::from_millis(750)), p30),
        Duration::from_millis(750)
    );
    assert_eq!(
        stall_timeout(StallTimeout::Fixed(Duration::from_millis(1)), None),
        MIN_STALL_TIMEOUT
    );
    assert!(FIRST_FRAME_TIMEOUT > MIN_STALL_TIMEOUT);
}

#[test]
fn sequence_gaps_count_missing_frames_and_resync() {
    let mut g = SequenceGaps::new();
    assert_eq!(g.observe(10), 0, "the first number is no gap");
    assert_eq!(g.observe(11), 0);
    assert_eq!(g.observe(14), 2);
    assert_eq!(g.observe(15), 0);
    assert_eq!(g.observe(3), 0, "a count that went back resyncs");
    assert_eq!(g.observe(5), 1);
    g.reset();
    assert_eq!(g.observe(100), 0, "after a restart the count starts over");
    assert_eq!(g.missing, 3);
}

#[test]
fn sizes_and_rates_read_as_a_person_would_write_them() {
    assert_eq!(interval_fps((1, 30)), Some(30.0));
    assert_eq!(
        interval_fps((1001, 30000)).map(|f| (f * 100.0).round()),
        Some(2997.0)
    );
    assert_eq!(interval_fps((0, 0)), None);
    let rates = [
        FrameIntervals::Discrete((1, 30)),
        FrameIntervals::Discrete((1001, 30000)),
        FrameIntervals::Discrete((1, 15)),
    ];
    assert_eq!(list_rates(&rates), "30, 29.97, 15 fps");
    let stepwise = [FrameIntervals::Stepwise {
        min: (1, 60),
        max: (1, 1),
        step: (1, 1),
    }];
    assert_eq!(list_rates(&stepwise), "1 to 60 fps");
    assert_eq!(list_rates(&[]), "(the driver does not list them)");
    let sizes = [
        FrameSizes::Discrete {
            width: 640,
            height: 480,
        },
        FrameSizes::Discrete {
            width: 1280,
            height: 720,
        },
    ];
    assert_eq!(list_sizes(&sizes), "640x480, 1280x720");
    let stepwise = [FrameSizes::Stepwise {
        min_width: 16,
        max_width: 1920,
        step_width: 2,
        min_height: 16,
        max_height: 1080,
        step_height: 2,
    }];
    assert_eq!(list_sizes(&stepwise), "16x16 to 1920x1080 in steps of 2x2");
}

// ---- the source on things that are not cameras ----

fn v4l2_camera(device: &str) -> CameraSettings {
    CameraSettings {
        name: "usb".into(),
        source: SourceSettings::V4l2 {
            device: device.into(),
            buffers: 4,
            stall: StallTimeout::Periods(10),
        },
        format: PixelFormat::Yuyv,
        width: 640,
        height: 480,
        fps: 30,
        pool_size: 4,
    }
}

#[test]
fn a_file_that_is_not_a_v4l2_device_is_refused_with_a_pointer_to_ocellus_cameras() {
    let mut source = V4l2Source::new(0, &v4l2_camera("/dev/null")).expect("made");
    assert_eq!(source.max_frame_bytes(), 640 * 480 * 2);
    assert!(source.describe().contains("/dev/null"));
    let err = source.start().expect_err("/dev/null is no camera");
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("not a V4L2 device"), "{text}");
    assert!(text.contains("ocellus cameras"), "{text}");
    let mut buf = FrameBuf::new(source.max_frame_bytes());
    assert!(matches!(
        source.next_frame(&mut buf),
        Err(SourceError::NotStarted { .. })
    ));
}

#[test]
fn a_missing_device_is_disconnected_not_a_config_error() {
    let mut source = source::open(0, &v4l2_camera("/dev/v4l/by-id/usb-ocellus-no-such-camera"))
        .expect("made without opening");
    let err = source.start().expect_err("missing");
    assert!(matches!(err, SourceError::Disconnected { .. }), "{err:?}");
    // Stopping a source that never started, or twice, is harmless.
    source.stop();
    source.stop();
}

#[test]
fn a_v4l2_source_refuses_another_kind_of_camera() {
    let mut cam = v4l2_camera("/dev/video0");
    cam.source = SourceSettings::Synthetic {
        seed: 1,
        hold_frames: 1,
    };
    assert!(matches!(
        V4l2Source::new(0, &cam),
        Err(SourceError::Unsupported { .. })
    ));
}

// ---- listing ----

#[test]
fn listing_an_empty_dev_finds_nothing_and_a_non_device_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    assert!(list_devices(dir.path()).is_empty());
    std::fs::write(dir.path().join("video3"), b"").unwrap();
    std::fs::write(dir.path().join("video10"), b"").unwrap();
    std::fs::write(dir.path().join("videoX"), b"").unwrap();
    std::fs::create_dir_all(dir.path().join("v4l/by-id")).unwrap();
    std::os::unix::fs::symlink("../../video3", dir.path().join("v4l/by-id/usb-cam")).unwrap();
    let found = list_devices(dir.path());
    let names: Vec<_> = found
        .iter()
        .map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["video3", "video10"],
        "numeric order, videoX skipped"
    );
    assert_eq!(found[0].by_id, [dir.path().join("v4l/by-id/usb-cam")]);
    assert!(found[1].by_id.is_empty());
    for d in &found {
        assert!(!d.is_capture());
        let why = d.caps.as_ref().expect_err("a regular file");
        assert!(why.contains("not a V4L2 device"), "{why}");
    }
}

fn ocellus(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ocellus"))
        .args(args)
        .output()
        .expect("run ocellus")
}

#[test]
fn ocellus_cameras_without_a_device_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = ocellus(&["cameras", "--dev-dir", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with("no V4L2 capture devices found in "),
        "{stdout}"
    );
    assert!(stdout.contains("uvcvideo"), "{stdout}");
    // A node that is not a device is listed with the reason.
    std::fs::write(dir.path().join("video0"), b"").unwrap();
    let out = ocellus(&["cameras", "--dev-dir", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("video0: not a V4L2 device"), "{stdout}");
}

// ---- the capture loop: stalls, disconnects, gaps ----

fn demo() -> (Manifest, Box<dyn InferenceEngine>, Arc<ArcSwap<PromptSet>>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/manifest.toml");
    let manifest = Manifest::load(&path).expect("demo manifest (build models/demo first)");
    let engine: Box<dyn InferenceEngine> =
        Box::new(TractEngine::load(&manifest, RunVariant::Fp32, 1).expect("load demo engine"));
    let labels: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let set = TextEncoder::load(&manifest, Variant::Fp32)
        .and_then(|mut t| t.embed(&labels))
        .expect("embed demo prompts");
    (manifest, engine, Arc::new(ArcSwap::from_pointee(set)))
}

const SIZE: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A frame with this sequence number.
    Frame(u64),
    /// No frame in time.
    Stall,
    /// The device goes away; it comes back after this many failed `start`s.
    Disconnect(u32),
    /// Record the status line and the stalled flag now.
    Observe,
}

/// Plays a script of frames and faults, as a V4L2 camera would report them.
struct Faulty {
    script: VecDeque<Event>,
    absent_for: u32,
    starts: Arc<Mutex<Vec<bool>>>,
    stats: Arc<OnceLock<Arc<Stats>>>,
    observed: Arc<Mutex<Option<(String, bool)>>>,
    rgb: Vec<u8>,
}

impl FrameSource for Faulty {
    fn describe(&self) -> String {
        "faulty".into()
    }
    fn start(&mut self) -> Result<(), SourceError> {
        let gone = self.absent_for > 0;
        self.starts.lock().unwrap().push(!gone);
        if gone {
            self.absent_for -= 1;
            return Err(SourceError::Disconnected {
                camera: "faulty".into(),
                path: "/dev/v4l/by-id/faulty".into(),
                reason: "cannot open it: No such file or directory".into(),
            });
        }
        Ok(())
    }
    fn next_frame(&mut self, buf: &mut FrameBuf) -> Result<(), SourceError> {
        loop {
            match self.script.pop_front() {
                None => {
                    return Err(SourceError::EndOfStream {
                        camera: "faulty".into(),
                    })
                }
                Some(Event::Observe) => {
                    if let Some(stats) = self.stats.get() {
                        let mut line = StatusLine::new(stats);
                        let text = line.render(stats, Instant::now()).to_owned();
                        let stalled = stats.camera(0).counters.stalled.load(Relaxed);
                        *self.observed.lock().unwrap() = Some((text, stalled));
                    }
                }
                Some(Event::Stall) => {
                    return Err(SourceError::Stalled {
                        camera: "faulty".into(),
                        waited_ms: 333,
                    })
                }
                Some(Event::Disconnect(n)) => {
                    self.absent_for = n;
                    return Err(SourceError::Disconnected {
                        camera: "faulty".into(),
                        path: "/dev/v4l/by-id/faulty".into(),
                        reason: "VIDIOC_DQBUF: No such device".into(),
                    });
                }
                Some(Event::Frame(seq)) => {
                    buf.data[..self.rgb.len()].copy_from_slice(&self.rgb);
                    buf.meta.sequence = seq;
                    buf.meta.capture_ns = monotonic_ns();
                    buf.meta.width = SIZE;
                    buf.meta.height = SIZE;
                    buf.meta.format = PixelFormat::Rgb24;
                    buf.meta.bytes = self.rgb.len();
                    buf.meta.label = None;
                    return Ok(());
                }
            }
        }
    }
    fn stop(&mut self) {}
    fn max_frame_bytes(&self) -> usize {
        (SIZE * SIZE * 3) as usize
    }
}

fn synthetic(index: usize) -> CameraSpec {
    let toml = "[[camera]]\nname = \"syn\"\nsource = \"synthetic\"\npixel-format = \"yuyv\"\nwidth = 128\nheight = 96\nfps = 100\nseed = 5\n";
    let config = Config::parse(toml, Origin::Embedded).expect("config");
    let cam = &config.cameras[0];
    CameraSpec {
        name: cam.name.clone(),
        source: source::open(index, cam).expect("synthetic source"),
        format: cam.format,
        width: cam.width,
        height: cam.height,
        pool_size: cam.pool_size,
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + WATCHDOG;
    while !done() {
        assert!(Instant::now() < until, "watchdog: {what} did not happen");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stalls_and_disconnects_are_flagged_counted_and_reopened_while_the_other_camera_runs() {
    use Event::*;
    let (manifest, engine, prompts) = demo();
    let mut rgb = vec![0; (SIZE * SIZE * 3) as usize];
    render_into(&SceneParams::sample(&mut Rng::new(3)), SIZE, SIZE, &mut rgb).expect("render");
    let starts = Arc::new(Mutex::new(Vec::new()));
    let stats_cell = Arc::new(OnceLock::new());
    let observed = Arc::new(Mutex::new(None));
    let script = [
        Frame(0),
        Frame(1),
        Frame(2),
        Frame(5), // the driver dropped 3 and 4
        Stall,
        Observe,
        Frame(6),
        Frame(7),
        Disconnect(3),
        Frame(100), // after a reopen the count starts over: no gap
        Frame(101),
        Frame(105), // 102..=104 dropped
    ];
    let faulty = Faulty {
        script: script.into_iter().collect(),
        absent_for: 0,
        starts: starts.clone(),
        stats: stats_cell.clone(),
        observed: observed.clone(),
        rgb,
    };
    let mut p = Pipeline::new(
        PipelineSettings::default(),
        vec![
            CameraSpec {
                name: "faulty".into(),
                source: Box::new(faulty),
                format: PixelFormat::Rgb24,
                width: SIZE,
                height: SIZE,
                pool_size: 4,
            },
            synthetic(1),
        ],
        engine,
        &manifest.preprocess,
        prompts,
        Vec::new(),
    )
    .expect("pipeline");
    let stats = p.stats().clone();
    let _ = stats_cell.set(stats.clone());
    p.start().expect("start");
    let c = &stats.camera(0).counters;
    wait_for("the script to play out", || {
        c.captured.load(Relaxed) == 9 && stats.camera(1).counters.processed.load(Relaxed) >= 5
    });
    // The script ended with EndOfStream; give the loop a moment to notice nothing else.
    std::thread::sleep(Duration::from_millis(50));
    p.stop();

    assert_eq!(c.captured.load(Relaxed), 9);
    assert_eq!(c.stalls.load(Relaxed), 1);
    assert_eq!(c.disconnects.load(Relaxed), 1);
    assert_eq!(c.reconnects.load(Relaxed), 2, "one reopen per fault");
    assert_eq!(c.driver_dropped.load(Relaxed), 2 + 3);
    assert_eq!(c.source_errors.load(Relaxed), 1, "the disconnect");
    assert!(!c.stalled.load(Relaxed), "cleared by the next frame");
    assert!(!c.lost.load(Relaxed), "cleared by the next frame");
    // Started once, reopened after the stall, then three failed attempts while the device was gone.
    assert_eq!(
        *starts.lock().unwrap(),
        [true, true, false, false, false, true]
    );
    let (line, stalled) = observed.lock().unwrap().clone().expect("observed");
    assert!(stalled, "flagged while stalled");
    assert!(line.contains("STALLED 1"), "{line}");
    assert!(line.contains("stalls 1"), "{line}");
    // The other camera never noticed.
    let other = &stats.camera(1).counters;
    assert_eq!(other.stalls.load(Relaxed), 0);
    assert_eq!(other.source_errors.load(Relaxed), 0);
    assert_eq!(other.driver_dropped.load(Relaxed), 0);

    let summary = stats.summary();
    assert_eq!(
        (
            summary.stalls,
            summary.disconnects,
            summary.reconnects,
            summary.driver_dropped
        ),
        (1, 1, 2, 5)
    );
    let text = summary.to_string();
    assert!(
        text.contains(
            "camera faults: stalls 1, disconnects 1, reconnects 2, driver-dropped frames 5"
        ),
        "{text}"
    );
    assert!(
        text.contains("camera 0: stalls 1, disconnects 1, reconnects 2, driver-dropped frames 5"),
        "{text}"
    );
}

#[test]
fn a_camera_absent_at_start_is_waited_for_and_picked_up_without_counting_a_reconnect() {
    use Event::*;
    let (manifest, engine, prompts) = demo();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let faulty = Faulty {
        script: [Frame(0), Frame(1), Frame(2)].into_iter().collect(),
        absent_for: 2,
        starts: starts.clone(),
        stats: Arc::new(OnceLock::new()),
        observed: Arc::new(Mutex::new(None)),
        rgb: vec![0; (SIZE * SIZE * 3) as usize],
    };
    let mut p = Pipeline::new(
        PipelineSettings::default(),
        vec![CameraSpec {
            name: "faulty".into(),
            source: Box::new(faulty),
            format: PixelFormat::Rgb24,
            width: SIZE,
            height: SIZE,
            pool_size: 4,
        }],
        engine,
        &manifest.preprocess,
        prompts,
        Vec::new(),
    )
    .expect("pipeline");
    let stats = p.stats().clone();
    p.start().expect("start");
    let c = &stats.camera(0).counters;
    wait_for("the camera to appear and deliver", || {
        c.captured.load(Relaxed) == 3
    });
    p.stop();
    assert_eq!(*starts.lock().unwrap(), [false, false, true]);
    assert_eq!(c.source_errors.load(Relaxed), 1, "the absence, once");
    assert_eq!(
        c.reconnects.load(Relaxed),
        0,
        "a first open is no reconnect"
    );
    assert_eq!(c.restarts.load(Relaxed), 0);
    assert!(!c.lost.load(Relaxed), "cleared by the first frame");
}

#[test]
fn a_stalled_camera_is_flagged_in_the_shared_memory_status_block() {
    use ocellus::shm::{layout, Dims, LatentsDtype, ShmReader, WriterConfig};
    use ocellus::sink::{ShmSink, ShmSinkConfig, Sink};

    let name = format!("/ocellus-test-v4l2-stall-{}", std::process::id());
    let mut writer = WriterConfig::new(
        &name,
        Dims {
            cameras: 2,
            embed_dim: 4,
            num_latents: 2,
            latent_dim: 3,
            max_prompts: 4,
            latents_dtype: LatentsDtype::F32,
        },
    );
    writer.heartbeat_period = Duration::from_millis(10);
    let mut cfg = ShmSinkConfig::new(writer);
    // Only the capture loop's flag may mark a camera stalled here, not the sink's own idle timer.
    cfg.stall_after = Duration::from_secs(3600);
    let stats = Arc::new(Stats::new(2));
    let c = &stats.camera(1).counters;
    c.stalled.store(true, Relaxed);
    c.stalls.store(2, Relaxed);
    c.restarts.store(2, Relaxed);
    let mut sink = ShmSink::create(&cfg, Some(stats.clone())).expect("create the segment");
    let r = ShmReader::open(&name).expect("open the segment");
    let until = Instant::now() + WATCHDOG;
    let flags = loop {
        let (c0, c1) = (
            r.counters(0).expect("camera 0"),
            r.counters(1).expect("camera 1"),
        );
        if c1.flags & layout::FLAG_STALLED != 0 {
            assert_eq!(
                c0.flags & layout::FLAG_STALLED,
                0,
                "camera 0 is not stalled"
            );
            assert_eq!(c1.reconnects, 2);
            break c1.flags;
        }
        assert!(
            Instant::now() < until,
            "watchdog: the stalled flag never reached the segment"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(flags & layout::FLAG_CAMERA_LOST, 0);
    // Cleared with the next frame: the heartbeat copies that too.
    c.stalled.store(false, Relaxed);
    let until = Instant::now() + WATCHDOG;
    while r.counters(1).expect("camera 1").flags & layout::FLAG_STALLED != 0 {
        assert!(
            Instant::now() < until,
            "watchdog: the stalled flag was never cleared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    sink.stop();
    let _ = std::fs::remove_file(format!("/dev/shm{name}"));
}
