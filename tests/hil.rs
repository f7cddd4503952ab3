//! Hardware-in-the-loop tests: real V4L2 capture.
//!
//! Every test here needs a camera, so every test is `#[ignore]`d in a normal `cargo test`. They run
//! - in a VM against the kernel's virtual camera (vivid) and a v4l2loopback device: `tests/hil/run.sh`
//!   (`make test-hil`), which boots a kernel with this binary as its init's payload;
//! - against a real camera on the robot: `OCELLUS_HIL_DEVICE=/dev/video2 cargo test --test hil -- --ignored
//!   camera_` (tests named `vivid_*` and `loopback_*` need the virtual devices and are left out by the
//!   filter). See docs/hil.md.
//!
//! Device paths come from the environment: `OCELLUS_HIL_DEVICE` (the camera, default /dev/video0) and
//! `OCELLUS_HIL_LOOPBACK` (the v4l2loopback device, VM only). `OCELLUS_HIL_ROOT` is the repository root
//! (the VM copies models/ and tests/hil/ there; default: this crate's directory).

use std::path::PathBuf;
use std::time::Instant;

use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::prelude::*;
use v4l::video::Capture;
use v4l::FourCC;

fn camera_path() -> PathBuf {
    std::env::var_os("OCELLUS_HIL_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/video0"))
}

fn open_camera() -> Device {
    let path = camera_path();
    Device::with_path(&path).unwrap_or_else(|e| {
        panic!(
            "cannot open the camera {}: {e} (set OCELLUS_HIL_DEVICE to the camera's device node)",
            path.display()
        )
    })
}

fn driver(dev: &Device) -> String {
    dev.query_caps().expect("VIDIOC_QUERYCAP").driver
}

#[test]
#[ignore = "needs a camera: run by tests/hil/run.sh in a VM, or with OCELLUS_HIL_DEVICE on a robot"]
fn camera_streams_yuyv_with_continuous_sequence_numbers() {
    let dev = open_camera();
    eprintln!("camera {}: driver {}", camera_path().display(), driver(&dev));
    let mut fmt = dev.format().expect("VIDIOC_G_FMT");
    fmt.width = 640;
    fmt.height = 480;
    fmt.fourcc = FourCC::new(b"YUYV");
    let fmt = dev.set_format(&fmt).expect("VIDIOC_S_FMT");
    assert_eq!(fmt.fourcc, FourCC::new(b"YUYV"), "camera refused YUYV");
    let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, 4).expect("mmap stream");
    let start = Instant::now();
    let mut last = None;
    let mut gaps = 0;
    let frames = 20;
    for _ in 0..frames {
        let (data, meta) = stream.next().expect("capture a frame");
        assert_eq!(meta.bytesused as usize, 640 * 480 * 2);
        assert!(data.len() >= 640 * 480 * 2);
        if let Some(prev) = last {
            gaps += meta.sequence - prev - 1;
        }
        last = Some(meta.sequence);
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "captured {frames} frames in {secs:.2} s ({:.1} fps), {gaps} sequence gaps",
        frames as f64 / secs
    );
}
