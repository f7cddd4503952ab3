//! A bundle manifest's bytes: `ocellus_fuzz::manifest` (parse, check the entries, plan the memory).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ocellus_fuzz::manifest(data);
});
