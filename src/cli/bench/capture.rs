//! First measurement: each camera's capture alone.

use ocellus::clock::monotonic_ns;
use ocellus::config::Config;
use ocellus::frame::FrameBuf;

use super::report::Samples;
use crate::cli::Failure;

/// Per camera: the histogram of `next_frame` durations of its source, unpaced, nothing else running.
pub(super) fn measure_capture(config: &Config, samples: u64) -> Result<Vec<Samples>, Failure> {
    let mut out = Vec::with_capacity(config.cameras.len());
    for (index, cam) in config.cameras.iter().enumerate() {
        let mut cam = cam.clone();
        cam.fps = 0;
        let fail = |e: &dyn std::fmt::Display| {
            Failure::config(format!(
                "config {}: camera[{index}] ({}): {e}",
                config.origin, cam.name
            ))
        };
        let mut source = ocellus::source::open(index, &cam).map_err(|e| fail(&e))?;
        source.start().map_err(|e| fail(&e))?;
        let mut buf = FrameBuf::new(source.max_frame_bytes());
        let mut times = Vec::with_capacity(samples as usize);
        for _ in 0..samples {
            let t = monotonic_ns();
            match source.next_frame(&mut buf) {
                Ok(()) => times.push(monotonic_ns() - t),
                Err(ocellus::source::SourceError::EndOfStream { .. }) => break,
                Err(e) => return Err(fail(&e)),
            }
        }
        source.stop();
        out.push(Samples::new(times));
    }
    Ok(out)
}
