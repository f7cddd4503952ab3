//! A bundle's reference data (docs/manifest.md, `reference/`): the index the tools write, its `.npy` files, and
//! the normalisation the runtime applies to image_embeds. Shared by the parity tests of each engine.
#![allow(dead_code)] // each test binary reads the parts it compares

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::ArrayD;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Index {
    /// The engine and version that computed the outputs (onnxruntime in Python).
    pub engine: String,
    pub images: Vec<ImageRef>,
    pub text: TextRef,
}

#[derive(Deserialize)]
pub struct ImageRef {
    pub id: String,
    pub pixel_values: String,
    /// Per file variant (`fp32`, `int8`, `int8-ort`).
    pub outputs: BTreeMap<String, ImageOutputs>,
}

#[derive(Deserialize)]
pub struct ImageOutputs {
    pub patch_tokens: String,
    pub image_embeds: String,
    pub latents: String,
}

#[derive(Deserialize)]
pub struct TextRef {
    pub prompts: Vec<String>,
    pub input_ids: String,
    pub attention_mask: String,
    pub outputs: BTreeMap<String, TextOutputs>,
}

#[derive(Deserialize)]
pub struct TextOutputs {
    pub text_embeds: String,
}

/// `dir/reference/index.toml`; panics naming the file and the fix.
pub fn load_index(dir: &Path) -> Index {
    let path = dir.join("reference/index.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build the bundle with ocellus-tools)",
            path.display()
        )
    });
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `dir/reference/<rel>` as f32.
pub fn npy_f32(dir: &Path, rel: &str) -> ArrayD<f32> {
    let path = dir.join("reference").join(rel);
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// L2-normalised copy (the runtime's image_embeds are normalised; the reference's are not).
pub fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}
