//! `ocellus cameras`: the V4L2 devices of this machine, with what each can deliver.
//!
//! For every `/dev/video*` node: its `/dev/v4l/by-id` and `/dev/v4l/by-path` names, driver, card and bus,
//! and for capture nodes each pixel format with its sizes and frame rates (`VIDIOC_ENUM_FMT`,
//! `VIDIOC_ENUM_FRAMESIZES`, `VIDIOC_ENUM_FRAMEINTERVALS`), marking the formats ocellus reads with their
//! `pixel-format` name, and a `[[camera]]` table to start from. Nodes that are not capture nodes (a camera's
//! metadata node, output or radio nodes) are listed in one line each. Exit code 0, also when there is no
//! device (the output says what to check).

use std::fmt::Write as _;
use std::path::PathBuf;

use ocellus::frame::PixelFormat;
use ocellus::source::v4l2::{
    fourcc_name, interval_fps, list_devices, list_rates, size_text, DeviceInfo, FormatInfo,
    FrameIntervals, FrameSizes,
};

use super::{init_logging, Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct CamerasArgs {
    /// Also list the formats ocellus does not read (Bayer, 10-bit, other YUV packings...).
    #[arg(long)]
    pub all: bool,
    /// Directory holding the device nodes and v4l/by-id, v4l/by-path (for chroots and tests).
    #[arg(long, default_value = "/dev", value_name = "DIR")]
    pub dev_dir: PathBuf,
}

pub fn cameras(args: CamerasArgs, v: Verbosity) -> Result<(), Failure> {
    init_logging(None, v);
    let devices = list_devices(&args.dev_dir);
    print!("{}", render(&devices, args.all, &args.dev_dir));
    Ok(())
}

/// The whole listing as text.
pub fn render(devices: &[DeviceInfo], all: bool, dev_dir: &std::path::Path) -> String {
    let mut out = String::new();
    let capture = devices.iter().filter(|d| d.is_capture()).count();
    if capture == 0 {
        let _ = writeln!(
            out,
            "no V4L2 capture devices found in {}; is the camera plugged in and its driver loaded \
             (`lsmod | grep uvcvideo` for USB cameras)? In a container, pass the device in \
             (e.g. --device /dev/video0); a user outside the video group cannot open it.",
            dev_dir.display()
        );
    }
    for d in devices {
        device(&mut out, d, all);
    }
    out
}

fn device(out: &mut String, d: &DeviceInfo, all: bool) {
    let caps = match &d.caps {
        Err(why) => {
            let _ = writeln!(out, "{}: {why}", d.path.display());
            return;
        }
        Ok(c) => c,
    };
    if !d.is_capture() {
        let what = if caps.can_capture_mplane() {
            "multi-planar capture, not read by ocellus"
        } else if caps.can_capture() {
            "capture without streaming I/O, not read by ocellus"
        } else {
            "not a video capture node"
        };
        let _ = writeln!(
            out,
            "{}: {} (driver {}): {what}",
            d.path.display(),
            caps.card,
            caps.driver
        );
        return;
    }
    let _ = writeln!(
        out,
        "{}: {} (driver {}, bus {})",
        d.path.display(),
        caps.card,
        caps.driver,
        caps.bus
    );
    for link in &d.by_id {
        let _ = writeln!(out, "  by-id:   {}", link.display());
    }
    for link in &d.by_path {
        let _ = writeln!(out, "  by-path: {}", link.display());
    }
    if let Some(cur) = &d.current {
        let _ = writeln!(
            out,
            "  now:     {} {}x{}",
            fourcc_name(cur.fourcc),
            cur.width,
            cur.height
        );
    }
    let mut others = Vec::new();
    for f in &d.formats {
        if f.pixel_format.is_none() && !all {
            others.push(fourcc_name(f.desc.fourcc));
            continue;
        }
        format(out, f);
    }
    if d.formats.is_empty() {
        let _ = writeln!(out, "  (the driver lists no capture formats)");
    }
    if !others.is_empty() {
        let _ = writeln!(
            out,
            "  also (not read by ocellus; --all shows them): {}",
            others.join(", ")
        );
    }
    if let Some(table) = suggestion(d) {
        let _ = writeln!(out, "  config to start from:");
        for line in table.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
}

fn format(out: &mut String, f: &FormatInfo) {
    let ours = match f.pixel_format {
        Some(p) => format!("pixel-format = \"{p}\""),
        None => "not read by ocellus".into(),
    };
    let _ = writeln!(
        out,
        "  {:<8} {:<28} {ours}{}",
        fourcc_name(f.desc.fourcc),
        f.desc.description,
        if f.desc.emulated { " (emulated)" } else { "" }
    );
    if f.sizes.is_empty() {
        let _ = writeln!(out, "           (the driver does not list sizes)");
    }
    for (size, rates) in &f.sizes {
        let stepwise = matches!(size, FrameSizes::Stepwise { .. });
        let size = format!(
            "{}{}",
            size_text(size),
            if stepwise {
                " (rates at the largest)"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "           {size}: {}", list_rates(rates));
    }
}

/// A `[[camera]]` table (TOML) for the device: its by-id name if it has one, the first format ocellus reads, the
/// device's current size if that format offers it (else the format's first size), at the highest rate.
fn suggestion(d: &DeviceInfo) -> Option<String> {
    let f = d.formats.iter().find(|f| f.pixel_format.is_some())?;
    let format: PixelFormat = f.pixel_format?;
    let (w, h, rates) = f
        .sizes
        .iter()
        .filter_map(|(s, r)| match *s {
            FrameSizes::Discrete { width, height } => Some((width, height, r)),
            FrameSizes::Stepwise { .. } => None,
        })
        .find(|&(w, h, _)| {
            d.current
                .as_ref()
                .is_some_and(|c| (c.width, c.height) == (w, h))
        })
        .or_else(|| {
            f.sizes.iter().find_map(|(s, r)| match *s {
                FrameSizes::Discrete { width, height } => Some((width, height, r)),
                FrameSizes::Stepwise { .. } => None,
            })
        })?;
    let fps = rates
        .iter()
        .filter_map(|r| match *r {
            FrameIntervals::Discrete(i) => interval_fps(i),
            FrameIntervals::Stepwise { min, .. } => interval_fps(min),
        })
        .fold(0.0f64, f64::max);
    let device = d.by_id.first().unwrap_or(&d.path);
    let mut table = format!(
        "[[camera]]\nsource = \"v4l2\"\ndevice = \"{}\"\npixel-format = \"{format}\"\nwidth = {w}\nheight = {h}\n",
        device.display()
    );
    // fps is a whole number; the source accepts the driver's rate within 2 % (29.97 for 30).
    if fps >= 1.0 {
        let _ = writeln!(table, "fps = {}", fps.round() as u32);
    }
    Some(table)
}
