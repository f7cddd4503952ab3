//! `ocellus infer IMAGE...`: the models on image files, top prompts with scores.
//!
//! Each image is decoded to RGB24 and goes through the same [`Preparer`] as camera frames, so what this
//! prints is what the pipeline would publish for that picture. Output, per image:
//!
//! ```text
//! scene.png
//!   0.9731  a red circle
//!   0.0112  a red square
//! ```

use std::path::{Path, PathBuf};

use ocellus::frame::PixelFormat;
use ocellus::infer::Engine;
use ocellus::manifest::Manifest;
use ocellus::prepare::Preparer;
use ocellus::prompts::TextEncoder;
use ocellus::source::replay::{decode_jpeg_rgb, decode_png_rgb};

use super::{init_logging, load_config, Failure, Verbosity};

/// Most prompts `--top` may ask for (ranked on the stack).
const MAX_TOP: usize = 64;

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// Image files (PNG or JPEG, any size).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Configuration file (TOML) naming the model and prompts; without it, the built-in default.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// How many prompts to print per image.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=MAX_TOP as i64))]
    pub top: u16,
}

pub fn infer(args: InferArgs, v: Verbosity) -> Result<(), Failure> {
    let config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    let manifest = Manifest::load(&config.model.manifest).map_err(Failure::config)?;
    let variant = config.model.variant;
    let mut engine =
        Engine::load(&manifest, variant, config.model.threads).map_err(Failure::config)?;
    let labels = config
        .prompts
        .current()
        .map_err(|e| Failure::config(format!("config {}: {e}", config.origin)))?;
    let prompts = TextEncoder::load(&manifest, variant)
        .and_then(|mut enc| enc.embed(&labels))
        .map_err(Failure::config)?;

    let mut input = vec![0.0f32; engine.input_len()];
    let mut output = engine.new_output();
    let mut scores = vec![0.0f32; prompts.len()];
    let mut failures = Vec::new();
    for path in &args.images {
        let (width, height, rgb) = match decode(path) {
            Ok(i) => i,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let prepared = Preparer::new(&manifest.preprocess, PixelFormat::Rgb24, width, height)
            .and_then(|mut p| p.prepare(&rgb, &mut input));
        if let Err(e) = prepared {
            failures.push(format!("{}: cannot prepare the image: {e}", path.display()));
            continue;
        }
        if let Err(e) = engine.run(&input, &mut output) {
            failures.push(format!("{}: {e}", path.display()));
            continue;
        }
        prompts.score(&output.image_embeds, &mut scores);
        println!("{}", path.display());
        for r in prompts.top::<MAX_TOP>(&scores, usize::from(args.top)) {
            println!("  {:.4}  {}", r.score, prompts.labels()[r.index]);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(failures.join("\n")))
    }
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
