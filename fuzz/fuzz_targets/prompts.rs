//! A prompts file's bytes: `ocellus_fuzz::prompts` (the prompt rules, tokenization, shared-memory labels).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ocellus_fuzz::prompts(data);
});
