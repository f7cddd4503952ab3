//! Any bytes as a shared-memory segment, read by the Rust reader and by the C header's reader; they must not
//! fault and must agree (see `src/lib.rs`).
#![no_main]

use std::ffi::CString;
use std::os::raw::c_char;

use libfuzzer_sys::fuzz_target;

extern "C" {
    fn ocellus_fuzz_c_report(name: *const c_char, out: *mut c_char, cap: usize) -> usize;
}

fn c_report(name: &str) -> String {
    let name = CString::new(name).expect("no NUL in a segment name");
    let mut out = vec![0u8; 1 << 20];
    // SAFETY: `name` is NUL-terminated and `out` is writable for `out.len()` bytes, which is what the function
    // takes; it writes at most that many bytes, NUL included, and returns the text's length.
    let len = unsafe { ocellus_fuzz_c_report(name.as_ptr(), out.as_mut_ptr().cast(), out.len()) };
    out.truncate(len);
    String::from_utf8(out).expect("the C report is ASCII")
}

fuzz_target!(|data: &[u8]| {
    ocellus_shm_fuzz::check(data, c_report);
});
