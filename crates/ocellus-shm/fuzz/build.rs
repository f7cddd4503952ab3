//! Compiles the C report (`c/report.c`, the C header's reader) into the fuzz target. Under cargo-fuzz (rustc
//! with `-Zsanitizer=address`) the C code is built with AddressSanitizer too, so an out-of-bounds read in the
//! header faults like one in Rust would.

fn main() {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let mut build = cc::Build::new();
    build
        .file("c/report.c")
        .include("../../../include")
        .flag("-std=c99")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .opt_level(1)
        .debug(true);
    if flags.contains("sanitizer=address") {
        build
            .flag("-fsanitize=address")
            .flag("-fno-omit-frame-pointer");
    }
    build.compile("ocellus_fuzz_c_report");
    println!("cargo:rerun-if-changed=c/report.c");
    println!("cargo:rerun-if-changed=../../../include/ocellus/shm.h");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
}
