//! `ocellus infer IMAGE...`: the models on image files: top prompts with scores, the time of each stage, and
//! optionally every tensor computed (`--dump DIR`, as .npy).
//!
//! Each image is decoded to RGB24 and goes through the same preparer as camera frames, the engine, variant
//! and prompt source the runtime would choose for the configuration (`ocellus::runtime::select_engine`,
//! `prompt_source`), so what this prints is what the pipeline would publish for that picture. It opens no
//! camera: a configuration without `[[camera]]` is fine. Output, per image:
//!
//! ```text
//! scene.png  prepare 0.41 ms  encoder 3.12 ms  resampler 0.61 ms
//!   0.9731  a red circle
//!   0.0112  a red square
//! ```
//!
//! `--dump DIR` writes `DIR/<n>-<image stem>/{pixel_values,patch_tokens,image_embeds,latents,scores}.npy`
//! (f32, shapes [1,3,H,W], [1,N,D], [1,E], [1,L,Dl], [K]; image_embeds L2-normalised, as published).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ocellus::frame::PixelFormat;
use ocellus::prepare::Preparer;
use ocellus::prompts::PromptSet;
use ocellus::runtime::{prompt_source, select_engine, PromptSource};
use ocellus::source::replay::{decode_jpeg_rgb, decode_png_rgb};

use super::{init_logging, load_config, Failure, Verbosity};

/// Most prompts `--top` may ask for (ranked on the stack).
const MAX_TOP: usize = 64;

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// Image files (PNG or JPEG, any size).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Configuration file (TOML) naming the model and prompts (cameras are not needed); without it, the
    /// built-in default.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// How many prompts to print per image.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=MAX_TOP as i64))]
    pub top: u16,
    /// Write every tensor computed for each image as .npy into this directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
}

fn ms(t: std::time::Duration) -> f64 {
    t.as_secs_f64() * 1e3
}

pub fn infer(args: InferArgs, v: Verbosity) -> Result<(), Failure> {
    let config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    let manifest = ocellus::Manifest::load(&config.model.manifest).map_err(Failure::config)?;
    let selected = select_engine(&config, &manifest)?;
    let mut engine =
        ocellus::infer::load(&manifest, &selected.settings).map_err(Failure::config)?;
    let prompts = match prompt_source(&config, &manifest, &selected)? {
        PromptSource::Text(mut encoder) => {
            let labels = config
                .prompts
                .current()
                .map_err(|e| Failure::config(format!("config {}: {e}", config.origin)))?;
            encoder.embed(&labels).map_err(Failure::config)?
        }
        PromptSource::Prototypes(set) => set,
        PromptSource::Nothing => PromptSet::empty(engine.embed_dim()),
    };
    println!(
        "model {} ({}; {}), {} prompts",
        manifest.name,
        engine.info(),
        selected.reason,
        prompts.len()
    );
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::runtime(format!("cannot create {}: {e}", dir.display())))?;
    }

    let mut input = vec![0.0f32; engine.input_len()];
    let mut output = engine.new_output();
    let mut scores = vec![0.0f32; prompts.len()];
    let mut failures = Vec::new();
    for (n, path) in args.images.iter().enumerate() {
        let (width, height, rgb) = match decode(path) {
            Ok(i) => i,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let t0 = Instant::now();
        let prepared = Preparer::new(&manifest.preprocess, PixelFormat::Rgb24, width, height)
            .and_then(|mut p| {
                let t = Instant::now();
                p.prepare(&rgb, &mut input).map(|()| t.elapsed())
            });
        let prepare = match prepared {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{}: cannot prepare the image: {e}", path.display()));
                continue;
            }
        };
        let _ = t0;
        let times = match engine.run(&input, &mut output) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        prompts.score(&output.image_embeds, &mut scores);
        println!(
            "{}  prepare {:.2} ms  encoder {:.2} ms  resampler {:.2} ms",
            path.display(),
            ms(prepare),
            ms(times.encoder),
            ms(times.resampler)
        );
        for r in prompts.top::<MAX_TOP>(&scores, usize::from(args.top)) {
            println!("  {:.4}  {}", r.score, prompts.labels()[r.index]);
        }
        if let Some(dir) = &args.dump {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let out = dir.join(format!("{n}-{stem}"));
            if let Err(e) = dump(&out, &manifest.preprocess, &input, &output, &scores) {
                failures.push(format!("{}: {e}", out.display()));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(failures.join("\n")))
    }
}

/// Writes one image's tensors as .npy files into `dir`.
fn dump(
    dir: &Path,
    pre: &ocellus::manifest::Preprocess,
    input: &[f32],
    out: &ocellus::VisionOutput,
    scores: &[f32],
) -> Result<(), String> {
    use ndarray::{ArrayView, IxDyn};
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
    let (n, d) = out.patch_tokens_shape;
    let (l, dl) = out.latents_shape;
    let tensors: [(&str, &[f32], Vec<usize>); 5] = [
        ("pixel_values", input, vec![1, 3, pre.height, pre.width]),
        ("patch_tokens", &out.patch_tokens, vec![1, n, d]),
        (
            "image_embeds",
            &out.image_embeds,
            vec![1, out.image_embeds.len()],
        ),
        ("latents", &out.latents, vec![1, l, dl]),
        ("scores", scores, vec![scores.len()]),
    ];
    for (name, data, shape) in tensors {
        let view = ArrayView::from_shape(IxDyn(&shape), data)
            .map_err(|e| format!("{name}: shape {shape:?}: {e}"))?;
        let path = dir.join(format!("{name}.npy"));
        ndarray_npy::write_npy(&path, &view)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Decodes a PNG or JPEG file (told apart by its first bytes, not its name) to RGB24.
fn decode(path: &Path) -> Result<(u32, u32, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let decoded = if bytes.starts_with(b"\x89PNG") {
        decode_png_rgb(path)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg_rgb(path, &bytes)
    } else {
        return Err(format!(
            "{} is neither a PNG nor a JPEG file",
            path.display()
        ));
    };
    decoded.map_err(|e| e.to_string())
}
