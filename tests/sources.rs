//! The frame-source conformance suite (tests/common/conformance.rs, written once over the `FrameSource`
//! trait) run against the synthetic camera in every format and replay of a raw recording and of image
//! directories; tests/hil.rs runs the same suite against the V4L2 source on a real (virtual) camera.

#[path = "common/conformance.rs"]
mod conformance;

use std::path::Path;

use conformance::{conformance, Expect};

use ocellus::frame::{FrameBuf, PixelFormat};
use ocellus::source::{
    self, write_raw_file, FrameSource, ReplaySource, SourceError, SyntheticSource,
};
use ocellus::source::{CameraSettings, SourceSettings};

fn synthetic_camera(format: PixelFormat, width: u32, height: u32, fps: u32) -> CameraSettings {
    CameraSettings {
        name: format!("synthetic-{format}"),
        source: SourceSettings::Synthetic {
            seed: 7,
            hold_frames: 4,
        },
        format,
        width,
        height,
        fps,
        pool_size: 3,
    }
}

fn replay_camera(
    path: &Path,
    format: PixelFormat,
    width: u32,
    height: u32,
    looping: bool,
) -> CameraSettings {
    CameraSettings {
        name: "replay".into(),
        source: SourceSettings::Replay {
            path: path.to_owned(),
            looping,
        },
        format,
        width,
        height,
        fps: 0,
        pool_size: 3,
    }
}

#[test]
fn synthetic_conforms_in_every_format() {
    for format in PixelFormat::ALL {
        let camera = synthetic_camera(format, 64, 48, 0);
        let mut source = source::open(0, &camera).expect("synthetic opens");
        conformance(
            source.as_mut(),
            &Expect {
                format,
                width: 64,
                height: 48,
                labels: true,
            },
            10,
        );
    }
}

#[test]
fn synthetic_paces_to_its_frame_rate() {
    // 200 fps: 6 frames are 5 periods apart, at least 25 ms (a lower bound only: no maximum is asserted).
    let camera = synthetic_camera(PixelFormat::Grey, 32, 32, 200);
    let mut source = SyntheticSource::new(0, &camera).unwrap();
    source.start().unwrap();
    let mut buf = FrameBuf::new(source.max_frame_bytes());
    let mut times = Vec::new();
    for _ in 0..6 {
        source.next_frame(&mut buf).unwrap();
        times.push(buf.meta.capture_ns);
    }
    assert!(times[5] - times[0] >= 25_000_000 - 1_000_000, "{:?}", times);
}

#[test]
fn synthetic_holds_each_scene_then_draws_a_new_one() {
    let camera = synthetic_camera(PixelFormat::Rgb24, 48, 32, 0);
    let run = || {
        let mut source = SyntheticSource::new(0, &camera).unwrap();
        source.start().unwrap();
        let mut buf = FrameBuf::new(source.max_frame_bytes());
        (0..40)
            .map(|_| {
                source.next_frame(&mut buf).unwrap();
                (buf.meta.label, buf.bytes().to_vec())
            })
            .collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a, run(), "the same seed gives the same frames and labels");
    for hold in a.chunks(4) {
        assert!(
            hold.iter().all(|(l, _)| *l == hold[0].0),
            "a class is held for hold-frames frames"
        );
    }
    let distinct: std::collections::HashSet<_> = a.iter().map(|(l, _)| *l).collect();
    assert!(distinct.len() >= 3, "new scenes are drawn: {distinct:?}");
}

#[test]
fn replay_of_a_raw_recording_conforms_and_keeps_labels() {
    let dir = tempfile::tempdir().unwrap();
    for format in [PixelFormat::Nv12, PixelFormat::Mjpeg] {
        // Record 5 synthetic frames, then replay them (looping) for 12.
        let mut synth = SyntheticSource::new(0, &synthetic_camera(format, 64, 48, 0)).unwrap();
        synth.start().unwrap();
        let mut buf = FrameBuf::new(synth.max_frame_bytes());
        let mut recorded = Vec::new();
        for _ in 0..5 {
            synth.next_frame(&mut buf).unwrap();
            recorded.push((buf.bytes().to_vec(), buf.meta.label));
        }
        let path = dir.path().join(format!("rec-{format}.raw"));
        write_raw_file(
            &path,
            format,
            64,
            48,
            recorded.iter().map(|(d, l)| (d.as_slice(), *l)),
        )
        .unwrap();

        let camera = replay_camera(&path, format, 64, 48, true);
        let mut replay = source::open(1, &camera).expect("replay opens");
        conformance(
            replay.as_mut(),
            &Expect {
                format,
                width: 64,
                height: 48,
                labels: true,
            },
            12,
        );

        // Frames come back byte for byte, in order, looping.
        let mut replay = ReplaySource::new(1, &camera).unwrap();
        replay.start().unwrap();
        assert_eq!(replay.frame_count(), 5);
        let mut out = FrameBuf::new(replay.max_frame_bytes());
        for n in 0..7 {
            replay.next_frame(&mut out).unwrap();
            assert_eq!(
                out.bytes(),
                recorded[n % 5].0.as_slice(),
                "{format} frame {n}"
            );
            assert_eq!(out.meta.label, recorded[n % 5].1);
            assert_eq!(out.meta.camera, 1);
        }
    }
}

fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.write_header().unwrap().write_image_data(rgb).unwrap();
}

#[test]
fn replay_of_an_image_directory_conforms_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (40u32, 30u32);
    let mut synth =
        SyntheticSource::new(0, &synthetic_camera(PixelFormat::Rgb24, w, h, 0)).unwrap();
    synth.start().unwrap();
    let mut buf = FrameBuf::new(synth.max_frame_bytes());
    let mut frames = Vec::new();
    for name in ["c.png", "a.png", "b.png"] {
        synth.next_frame(&mut buf).unwrap();
        write_png(&dir.path().join(name), w, h, buf.bytes());
        frames.push((name, buf.bytes().to_vec()));
    }
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    frames.sort_by_key(|(n, _)| *n);

    let camera = replay_camera(dir.path(), PixelFormat::Rgb24, w, h, false);
    let mut replay = source::open(0, &camera).unwrap();
    conformance(
        replay.as_mut(),
        &Expect {
            format: PixelFormat::Rgb24,
            width: w,
            height: h,
            labels: false,
        },
        3,
    );

    let mut replay = ReplaySource::new(0, &camera).unwrap();
    replay.start().unwrap();
    let mut out = FrameBuf::new(replay.max_frame_bytes());
    for (name, data) in &frames {
        replay.next_frame(&mut out).unwrap();
        assert_eq!(out.bytes(), data.as_slice(), "{name}");
        assert_eq!(out.meta.label, None);
    }
    assert!(
        matches!(
            replay.next_frame(&mut out),
            Err(SourceError::EndOfStream { .. })
        ),
        "loop = false ends"
    );
}

#[test]
fn replay_of_jpegs_delivers_mjpeg_or_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let mut synth =
        SyntheticSource::new(0, &synthetic_camera(PixelFormat::Mjpeg, 64, 48, 0)).unwrap();
    synth.start().unwrap();
    let mut buf = FrameBuf::new(synth.max_frame_bytes());
    for name in ["0.jpg", "1.JPEG"] {
        synth.next_frame(&mut buf).unwrap();
        std::fs::write(dir.path().join(name), buf.bytes()).unwrap();
    }
    for format in [PixelFormat::Mjpeg, PixelFormat::Rgb24] {
        let camera = replay_camera(dir.path(), format, 64, 48, true);
        let mut replay = source::open(0, &camera).unwrap();
        conformance(
            replay.as_mut(),
            &Expect {
                format,
                width: 64,
                height: 48,
                labels: false,
            },
            4,
        );
    }
}

#[test]
fn replay_refuses_what_its_files_cannot_deliver() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 4, 2, &[9u8; 24]);
    // A PNG directory cannot deliver YUYV, nor another size.
    for (format, w, h) in [
        (PixelFormat::Yuyv, 4, 2),
        (PixelFormat::Rgb24, 8, 2),
        (PixelFormat::Mjpeg, 4, 2),
    ] {
        let mut replay =
            ReplaySource::new(0, &replay_camera(dir.path(), format, w, h, true)).unwrap();
        let err = replay.start().expect_err("cannot deliver");
        assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
    }
    // A truncated recording is refused at start with the frame it broke in.
    let frame = vec![1u8; 16 * 8 * 2];
    let path = dir.path().join("cut.raw");
    write_raw_file(
        &path,
        PixelFormat::Yuyv,
        16,
        8,
        [(frame.as_slice(), None), (frame.as_slice(), None)],
    )
    .unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 10).unwrap();
    let mut replay =
        ReplaySource::new(0, &replay_camera(&path, PixelFormat::Yuyv, 16, 8, true)).unwrap();
    let err = replay.start().expect_err("truncated");
    assert!(
        err.to_string().contains("frame 1") && err.to_string().contains("truncated"),
        "{err}"
    );
    // Not a recording at all.
    std::fs::write(dir.path().join("junk.raw"), b"hello").unwrap();
    let mut replay = ReplaySource::new(
        0,
        &replay_camera(&dir.path().join("junk.raw"), PixelFormat::Yuyv, 16, 8, true),
    )
    .unwrap();
    assert!(matches!(replay.start(), Err(SourceError::BadFile { .. })));
}

#[test]
fn v4l2_without_the_device_says_which_and_how_to_find_one() {
    let camera = CameraSettings {
        name: "usb".into(),
        source: SourceSettings::V4l2 {
            device: "/dev/video-ocellus-missing".into(),
            buffers: 4,
            stall: ocellus::source::StallTimeout::Periods(10),
        },
        format: PixelFormat::Yuyv,
        width: 640,
        height: 480,
        fps: 30,
        pool_size: 4,
    };
    let mut source =
        source::open(0, &camera).expect("a v4l2 source is made without opening the device");
    let mut buf = FrameBuf::new(source.max_frame_bytes());
    assert!(matches!(
        source.next_frame(&mut buf),
        Err(SourceError::NotStarted { .. })
    ));
    let err = source.start().expect_err("no such device");
    assert!(
        matches!(err, SourceError::Disconnected { .. }),
        "a missing node is a device that is not there (yet): {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("/dev/video-ocellus-missing"), "{text}");
    assert!(text.contains("by-id"), "{text}");
}

#[test]
fn a_small_buffer_is_refused_not_overrun() {
    let mut source =
        SyntheticSource::new(0, &synthetic_camera(PixelFormat::Rgb24, 32, 32, 0)).unwrap();
    source.start().unwrap();
    let mut small = FrameBuf::new(100);
    assert!(matches!(
        source.next_frame(&mut small),
        Err(SourceError::BufferTooSmall { .. })
    ));
}
