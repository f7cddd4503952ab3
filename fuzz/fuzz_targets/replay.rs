//! A recorded raw-frame file (or a JPEG in an image directory): `ocellus_fuzz::replay` (probe, start, every frame, prepare).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ocellus_fuzz::replay(data);
});
