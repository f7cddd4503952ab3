//! Link settings of the `ocellus` executable.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // src/malloc_count.rs defines the malloc family in the executable so `ocellus bench` can count the
        // heap activity of C and C++ libraries (onnxruntime). An executable does not export its symbols
        // unless asked, and the dynamic linker binds a shared library's `malloc` only to an exported
        // definition: export exactly these (GNU ld >= 2.35).
        for symbol in [
            "malloc",
            "calloc",
            "realloc",
            "memalign",
            "aligned_alloc",
            "posix_memalign",
            "valloc",
            "pvalloc",
        ] {
            println!("cargo:rustc-link-arg-bin=ocellus=-Wl,--export-dynamic-symbol={symbol}");
        }
    }
}
