//! One MJPEG frame: `ocellus_fuzz::mjpeg` (decode and prepare into the demo model's input).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ocellus_fuzz::mjpeg(data);
});
