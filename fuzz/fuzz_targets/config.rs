//! A config file's bytes: `ocellus_fuzz::config` (parse, validate, plan the memory).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ocellus_fuzz::config(data);
});
