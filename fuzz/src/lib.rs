//! The entries of the runtime's fuzz targets (`fuzz_targets/*.rs`), shared with the corpus test
//! (`tests/fuzz_corpus.rs` includes this file), so the committed corpus and every crash reproducer run
//! through exactly what the fuzzer ran. Each entry takes the bytes of one input file, does with them what the
//! runtime does with that file (through the library's public API only), and asserts the documented
//! behaviour: no panic, no allocation the input alone chooses, and either a value that keeps the documented
//! limits or an error that names the file (and the key) and says what is wrong. An entry returns `Ok` with a
//! short description of what it got, or the error message the runtime would print.
//!
//! The entries read no file the input names (a config's replay path, a manifest's model files): those are
//! what the `replay` and `manifest` entries feed with their own bytes.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ocellus::config::{Config, ConfigError, Origin};
use ocellus::manifest::{Manifest, Variant, FORMATS};
use ocellus::prepare::{PrepareError, Preparer};
use ocellus::prompts::{PromptError, PromptSettings, TextEncoder};
use ocellus::shm::layout::{pack_str, unpack_str, LABEL_BYTES};
use ocellus::source::replay::{probe, RAW_MAGIC};
use ocellus::source::{
    CameraSettings, FrameSource as _, ReplaySource, SourceError, SourceSettings, SyntheticSource,
};
use ocellus::{FrameBuf, PixelFormat};

/// The repository root (this file is built from `fuzz/` by cargo-fuzz and from the root by `cargo test`).
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        if here.join("models/demo/manifest.toml").is_file() {
            here.to_owned()
        } else {
            here.join("..")
        }
    })
}

/// The bundled demo model's manifest: its `[preprocess]` is the fixed model input of the `mjpeg` entry, it
/// plans the memory of a fuzzed config, and its tokenizer reads fuzzed prompts.
pub fn demo_manifest() -> &'static Manifest {
    static DEMO: OnceLock<Manifest> = OnceLock::new();
    DEMO.get_or_init(|| {
        Manifest::load(&repo_root().join("models/demo/manifest.toml")).expect("the demo manifest")
    })
}

/// The embedded default configuration: what a fuzzed manifest's memory is planned with.
pub fn default_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::embedded().expect("the embedded default config"))
}

thread_local! {
    /// A directory of this thread for the files the entries write (a replay recording, a prompts file).
    static SCRATCH: PathBuf = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ocellus-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("images")).expect("scratch directory");
        dir
    };
}

fn scratch() -> PathBuf {
    SCRATCH.with(PathBuf::clone)
}

/// Removes this thread's scratch directory (the corpus test calls it; a fuzzer leaves it in the temp dir).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch());
}

// ---- config ------------------------------------------------------------------------------------------------

/// Where the fuzzed config claims to come from (error messages name it; relative paths resolve against it).
pub const CONFIG_PATH: &str = "/fuzz/etc/ocellus.toml";

/// `ocellus run --config F` up to the point where files are opened: read the file as text (not UTF-8 is the
/// read error), parse and validate it ([`Config::parse`]), then plan its memory against the demo model as
/// start-up phase 3 does, and check the plan against the budget.
pub fn config(data: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("not UTF-8: {e}"))?;
    let origin = Origin::File(PathBuf::from(CONFIG_PATH));
    let config = match Config::parse(text, origin.clone()) {
        Ok(c) => c,
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("config {CONFIG_PATH}")),
                "a config error names the file: {message}"
            );
            match &e {
                ConfigError::Invalid { key, message, .. } => {
                    assert!(!key.is_empty() && !message.is_empty(), "{e}")
                }
                ConfigError::Syntax { message, .. } => assert!(!message.is_empty(), "{e}"),
                ConfigError::Read { .. } => panic!("parse read a file: {e}"),
            }
            return Err(message);
        }
    };
    assert_eq!(
        Config::parse(text, origin).ok().as_ref(),
        Some(&config),
        "parsing is deterministic"
    );
    config_limits(&config);
    let _ = config.require_cameras();
    // Phase 3, without touching the paths the config names: the harness does not read files a fuzzed input
    // names (a replay path could be any file of this machine).
    let mut planned = config.clone();
    for cam in &mut planned.cameras {
        if let SourceSettings::Replay { path, .. } = &mut cam.source {
            *path = PathBuf::from("/nonexistent/ocellus-fuzz/replay.raw");
        }
    }
    let plan =
        ocellus::runtime::memory::plan(&planned, demo_manifest(), Variant::Fp32, true, None, &[]);
    let verdict = match plan.check() {
        Ok(()) => "fits".to_owned(),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("budgets.memory-mib"), "{m}");
            "over budget".to_owned()
        }
    };
    Ok(format!(
        "{} cameras, {} MiB planned: {verdict}",
        config.cameras.len(),
        plan.total_bytes() >> 20
    ))
}

/// The limits a validated config keeps (bsp/ocellus.example.toml documents each).
fn config_limits(c: &Config) {
    let mut names = std::collections::HashSet::new();
    for cam in &c.cameras {
        assert!(names.insert(cam.name.clone()), "camera names are unique");
        assert!(!cam.name.trim().is_empty() && !cam.name.chars().any(char::is_control));
        assert!(cam.format.check_size(cam.width, cam.height).is_ok());
        assert!(cam.fps <= 1000 && (3..=64).contains(&cam.pool_size));
        assert!(cam.max_frame_bytes() > 0);
        if let SourceSettings::Replay { path, .. } = &cam.source {
            assert!(
                path.is_absolute(),
                "resolved against the config's directory"
            );
        }
    }
    let p = &c.prompts;
    assert!((1..=1024).contains(&p.max));
    assert!(p.labels.len() <= p.max);
    assert!(p.file.is_some() || !p.labels.is_empty());
    assert!((1..=256).contains(&c.model.threads));
    assert!(ocellus::shm::segment_name(&c.shm.name).is_ok());
    assert!(c.shm.mode <= 0o777 && c.shm.mode & 0o600 == 0o600);
    assert!(c.budgets.memory_mib >= 1);
    let b = &c.budgets;
    for d in [
        b.dequeue,
        b.prepare,
        b.encoder,
        b.resampler,
        b.publish,
        b.end_to_end,
    ]
    .into_iter()
    .flatten()
    {
        assert!(!d.is_zero() && d.as_secs() <= 60);
    }
}

// ---- manifest ----------------------------------------------------------------------------------------------

/// Where the fuzzed manifest claims to be (errors name it; its files would be beside it).
pub const MANIFEST_PATH: &str = "/fuzz/bundle/manifest.toml";

/// `ocellus check` on a bundle, up to reading the model files: parse the manifest ([`Manifest::parse`]), check
/// its entries against the fixed tensor names and each other for both variants
/// ([`ocellus::infer::check_consistency`], layer 1 of the verification), and plan the memory of the default
/// config with it (start-up phase 3, which runs before the files are verified).
pub fn manifest(data: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("not UTF-8: {e}"))?;
    let m = Manifest::parse(text, Path::new(MANIFEST_PATH)).map_err(|e| {
        let message = e.to_string();
        assert!(message.contains(MANIFEST_PATH), "names the file: {message}");
        message
    })?;
    assert!(FORMATS.contains(&m.format));
    assert_eq!(m.dir, Path::new("/fuzz/bundle"));
    let mut consistent = Vec::new();
    for variant in [Variant::Fp32, Variant::Int8] {
        match ocellus::infer::check_consistency(&m, variant) {
            Ok(roles) => {
                for role in roles {
                    let entry = m.file(role, variant).expect("a checked role has a file");
                    assert!(
                        m.path_of(entry).starts_with(&m.dir)
                            || Path::new(&entry.path).is_absolute()
                    );
                }
                consistent.push(variant.to_string());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        let plan = ocellus::runtime::memory::plan(default_config(), &m, variant, true, None, &[]);
        let _ = plan.check().map_err(|e| e.to_string());
    }
    let _ = (m.has_text(), m.tokenizer_path());
    Ok(format!("consistent: [{}]", consistent.join(", ")))
}

// ---- replay ------------------------------------------------------------------------------------------------

/// A small real JPEG (the synthetic camera's MJPEG frame, 16x12), the first image of the image-directory case.
fn seed_jpeg() -> &'static [u8] {
    static JPEG: OnceLock<Vec<u8>> = OnceLock::new();
    JPEG.get_or_init(|| synthetic_frame(PixelFormat::Mjpeg, 16, 12, 0))
}

/// Frame `n` of the synthetic camera at `format`, `width` x `height` (the demo scenes).
pub fn synthetic_frame(format: PixelFormat, width: u32, height: u32, n: usize) -> Vec<u8> {
    let camera = CameraSettings {
        name: "seed".into(),
        source: SourceSettings::Synthetic {
            seed: 1,
            hold_frames: 1,
        },
        format,
        width,
        height,
        fps: 0,
        pool_size: 3,
    };
    let mut source = SyntheticSource::new(0, &camera).expect("a synthetic source");
    source.start().expect("start");
    let mut buf = FrameBuf::new(camera.max_frame_bytes());
    for _ in 0..=n {
        source.next_frame(&mut buf).expect("a frame");
    }
    buf.bytes().to_vec()
}

/// Frames whose preparation the `replay` entry runs (at most this many pixels, so a huge recording stays
/// quick; a recording's size is bounded by its header, which the entry checks against the file).
const PREPARE_MAX_PIXELS: u64 = 1 << 20;

/// A replay camera given `path`: probe it (start-up phase 2), configure the camera as the probe says (what a
/// user does after `ocellus check` names the format and size), open and start the source (which reads every
/// frame), take every frame into a buffer no larger than the file, and prepare the first frames for the demo
/// model. Input starting with the raw-file magic `OCFRAMES` is a recorded `.raw` file; anything else is the
/// second image of a two-image directory (the first is a real 16x12 JPEG).
pub fn replay(data: &[u8]) -> Result<String, String> {
    with_decoder_panics_caught(|| replay_frames(data))
}

fn replay_frames(data: &[u8]) -> Result<String, String> {
    let dir = scratch();
    let raw = data.starts_with(&RAW_MAGIC);
    let path = if raw {
        let path = dir.join("recording.raw");
        std::fs::write(&path, data).expect("write the recording");
        path
    } else {
        let images = dir.join("images");
        std::fs::write(images.join("a.jpg"), seed_jpeg()).expect("write a.jpg");
        std::fs::write(images.join("b.jpg"), data).expect("write b.jpg");
        images
    };
    let p = probe(&path).map_err(|e| source_error(&e, &path))?;
    let (width, height) = p.size.expect("a probe knows the frame size");
    // What the replay will hold once started is known before: at most the files' bytes (raw, MJPEG) or the
    // decoded frames (images), never more than the input can carry.
    assert!(!p.formats.is_empty(), "a probe offers a format");
    // Both formats of an image directory (decoded RGB, or the JPEG files as MJPEG frames), by input length.
    let format = p.formats[data.len() % p.formats.len()];
    let camera = CameraSettings {
        name: "fuzz".into(),
        source: SourceSettings::Replay {
            path: path.clone(),
            looping: false,
        },
        format,
        width,
        height,
        fps: 0,
        pool_size: 3,
    };
    let mut source = ReplaySource::new(0, &camera).map_err(|e| source_error(&e, &path))?;
    source.start().map_err(|e| source_error(&e, &path))?;
    let frames = source.frame_count();
    assert!(frames > 0, "a started replay has frames");
    // A recorded frame is no larger than the file it came from; an image directory's frames have the size of
    // its first image (16x12 here).
    let cap = if raw {
        camera.max_frame_bytes().min(data.len())
    } else {
        camera.max_frame_bytes()
    };
    let mut buf = FrameBuf::new(cap);
    let small = u64::from(width) * u64::from(height) <= PREPARE_MAX_PIXELS;
    let mut preparer = if small {
        Some(
            Preparer::new(&demo_manifest().preprocess, format, width, height)
                .expect("a size the replay accepted can be prepared"),
        )
    } else {
        None
    };
    let mut tensor = vec![0f32; preparer.as_ref().map_or(0, Preparer::output_len)];
    let mut delivered = 0;
    loop {
        match source.next_frame(&mut buf) {
            Ok(()) => {}
            Err(SourceError::EndOfStream { .. }) => break,
            Err(e) => panic!("frame {delivered} of a started replay: {e}"),
        }
        let meta = buf.meta;
        assert_eq!(
            (meta.width, meta.height, meta.format),
            (width, height, format)
        );
        assert_eq!(meta.sequence, delivered as u64);
        if let Some(exact) = format.frame_bytes(width, height) {
            assert_eq!(meta.bytes, exact);
        }
        if let (Some(p), true) = (preparer.as_mut(), delivered < 3) {
            match p.prepare(buf.bytes(), &mut tensor) {
                Ok(()) => assert!(tensor.iter().all(|v| v.is_finite())),
                Err(e) => assert!(
                    matches!(
                        e,
                        PrepareError::CorruptJpeg { .. } | PrepareError::JpegSize { .. }
                    ),
                    "only a compressed frame can fail to prepare: {e}"
                ),
            }
        }
        delivered += 1;
    }
    assert_eq!(delivered, frames);
    Ok(format!("{frames} {format} {width}x{height} frames"))
}

fn source_error(e: &SourceError, path: &Path) -> String {
    let message = e.to_string();
    assert!(
        message.contains(&path.display().to_string()) || message.contains("camera fuzz"),
        "a replay error names the file or the camera: {message}"
    );
    message
}

// ---- mjpeg -------------------------------------------------------------------------------------------------

/// Camera sizes the `mjpeg` entry configures at most (larger frame headers leave the camera at 64x48, so
/// the frame is refused for its size, as from a camera configured smaller).
const MJPEG_MAX_SIDE: u32 = 1024;

/// The frame size a JPEG's first SOF header declares, if any.
fn sof_size(data: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    while i + 9 <= data.len() {
        if data[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = data[i + 1];
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let h = u32::from(u16::from_be_bytes([data[i + 5], data[i + 6]]));
            let w = u32::from(u16::from_be_bytes([data[i + 7], data[i + 8]]));
            return Some((w, h));
        }
        i += 2;
    }
    None
}

/// One MJPEG frame through preparation, as the inference thread prepares a camera's frame: a preparer for an
/// MJPEG camera of the frame's own declared size (up to 1024 per side; else 64x48) and the demo model's
/// input (64x64, shortest edge, centre crop), made once with every buffer, then `prepare` into the model input
/// tensor. A frame is either prepared (every value finite) or refused as corrupt or of the wrong size.
/// zune-jpeg 0.4.21 panics on some malformed streams: a `debug_assert!(bits_left >= n)` in its bit reader (only
/// with debug assertions, cargo fuzz's default), an `unwrap` on a missing Huffman table and an `assert_eq!` on a
/// component's buffer sizes (also in release). The runtime catches a panic inside the decoder and refuses the
/// frame or file as corrupt (`Preparer::decode_jpeg`, `replay::decode_jpeg_rgb`); libFuzzer's panic hook, though,
/// aborts on every panic before it can unwind to that catch. While a guard is alive, a panic located in
/// zune-jpeg's sources unwinds instead; every other panic still reaches libFuzzer's hook, and a zune-jpeg panic
/// the runtime does not catch still aborts when it leaves the entry (libFuzzer's own catch aborts then).
/// The reproducers are in fuzz/regressions/{mjpeg,replay}/, asserted by tests/fuzz_corpus.rs.
struct DecoderPanics;

thread_local! {
    static LET_DECODER_PANICS_UNWIND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl DecoderPanics {
    fn unwind() -> Self {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let in_decoder = info
                    .location()
                    .is_some_and(|l| l.file().contains("zune-jpeg"));
                if !(in_decoder && LET_DECODER_PANICS_UNWIND.with(|a| a.get())) {
                    previous(info);
                }
            }));
        });
        LET_DECODER_PANICS_UNWIND.with(|a| a.set(true));
        DecoderPanics
    }
}

impl Drop for DecoderPanics {
    fn drop(&mut self) {
        LET_DECODER_PANICS_UNWIND.with(|a| a.set(false));
    }
}

/// Runs `f` with zune-jpeg's panics let unwind to the runtime's catch ([`DecoderPanics`]).
fn with_decoder_panics_caught(
    f: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    let _unwind = DecoderPanics::unwind();
    f()
}

pub fn mjpeg(data: &[u8]) -> Result<String, String> {
    with_decoder_panics_caught(|| mjpeg_frame(data))
}

fn mjpeg_frame(data: &[u8]) -> Result<String, String> {
    let (width, height) = sof_size(data)
        .filter(|&(w, h)| (1..=MJPEG_MAX_SIDE).contains(&w) && (1..=MJPEG_MAX_SIDE).contains(&h))
        .unwrap_or((64, 48));
    let pre = &demo_manifest().preprocess;
    let mut preparer = Preparer::new(pre, PixelFormat::Mjpeg, width, height)
        .expect("an MJPEG camera of 1..=1024 per side can be prepared");
    let mut tensor = vec![0f32; preparer.output_len()];
    assert_eq!(tensor.len(), 3 * pre.width * pre.height);
    match preparer.prepare(data, &mut tensor) {
        Ok(()) => {
            assert!(tensor.iter().all(|v| v.is_finite()));
            Ok(format!("prepared {width}x{height}"))
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    PrepareError::CorruptJpeg { .. } | PrepareError::JpegSize { .. }
                ),
                "an MJPEG frame is refused as corrupt or of the wrong size: {e}"
            );
            Err(e.to_string())
        }
    }
}

// ---- prompts -----------------------------------------------------------------------------------------------

/// `prompts.max` of the fuzzed prompt set (small, so the fuzzer reaches the rule).
pub const PROMPTS_MAX: usize = 8;
/// `prompts.labels` of the fuzzed prompt set (a file prompt equal to it is a duplicate).
pub const PROMPTS_LABEL: &str = "a red circle";

thread_local! {
    /// The demo bundle's tokenizer and text model, loaded once per thread (tract plans the model).
    static ENCODER: TextEncoder =
        TextEncoder::load(demo_manifest(), Variant::Fp32).expect("the demo text encoder");
}

/// A prompts file as the runtime reads it at start-up and on every change: the file's text as prompts
/// ([`PromptSettings::current`]: the labels, then the file's lines, under the rules of `prompts.max` = 8, no
/// duplicates, not empty), then each prompt tokenized by the demo tokenizer to exactly its context length (the
/// text model's input) with the unknown-words check, and stored as a shared-memory label.
pub fn prompts(data: &[u8]) -> Result<String, String> {
    let path = scratch().join("prompts.txt");
    std::fs::write(&path, data).expect("write the prompts file");
    let settings = PromptSettings {
        labels: vec![PROMPTS_LABEL.into()],
        file: Some(path.clone()),
        max: PROMPTS_MAX,
        defaulted: false,
    };
    let prompts = settings.current().map_err(|e| {
        assert!(
            matches!(
                e,
                PromptError::Read { .. } | PromptError::Rule { .. } | PromptError::Empty { .. }
            ),
            "a prompts file is unreadable or breaks a rule: {e}"
        );
        e.to_string()
    })?;
    assert!(!prompts.is_empty() && prompts.len() <= PROMPTS_MAX);
    assert_eq!(prompts[0], PROMPTS_LABEL);
    let unique: std::collections::HashSet<&String> = prompts.iter().collect();
    assert_eq!(unique.len(), prompts.len());
    let mut unknown = 0;
    ENCODER.with(|encoder| {
        for p in &prompts {
            assert!(!p.trim().is_empty() && !p.contains('\n') && p.trim() == p);
            let (ids, mask) = encoder
                .tokenize(p)
                .unwrap_or_else(|e| panic!("a prompt that keeps the rules tokenizes: {e}"));
            assert_eq!(ids.len(), mask.len());
            if encoder.is_unknown_only(p) {
                unknown += 1;
            }
            let label = unpack_str(&pack_str(p, LABEL_BYTES as usize));
            assert!(
                p.starts_with(&label),
                "a label is cut at a character boundary"
            );
        }
    });
    Ok(format!(
        "{} prompts, {unknown} of unknown words only",
        prompts.len()
    ))
}
