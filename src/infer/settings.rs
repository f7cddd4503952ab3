//! `[onnxruntime]`: which libonnxruntime the onnxruntime engine loads and which execution providers it asks
//! for. Owned here, filled in by `config`; read only when `model.engine = "onnxruntime"`, so a config file
//! with the table works in a plain (tract-only) build too.

use std::fmt;
use std::path::PathBuf;

/// The environment variable the library path falls back to when `[onnxruntime] library` is not set (the
/// name the `ort` crate and onnxruntime's own tools use).
pub const ORT_DYLIB_PATH_VAR: &str = "ORT_DYLIB_PATH";

/// The oldest onnxruntime the engine runs with: the `ort` crate is built against C API 24 (`api-24`).
pub const ORT_MIN_VERSION: &str = "1.24";

/// An onnxruntime execution provider, in the order they are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// onnxruntime's CPU kernels (MLAS); always there.
    Cpu,
    /// NVIDIA CUDA; needs a libonnxruntime built with it (onnxruntime-gpu) and the CUDA libraries. Untested
    /// here (no GPU on the build machines).
    Cuda,
    /// NVIDIA TensorRT; needs a libonnxruntime built with it and TensorRT. Untested here.
    Tensorrt,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Cpu, Provider::Cuda, Provider::Tensorrt];

    /// The name in the config (`providers = ["cuda", "cpu"]`).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }

    /// Parses a config name.
    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[onnxruntime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxruntimeSettings {
    /// `library`: the libonnxruntime shared library to load. `None`: the [`ORT_DYLIB_PATH_VAR`] environment
    /// variable when the engine loads, else an error saying how to set it.
    pub library: Option<PathBuf>,
    /// `providers`: execution providers in order of preference (default `["cpu"]`). A provider that cannot
    /// be registered is an error, not a silent fallback.
    pub providers: Vec<Provider>,
}

impl Default for OnnxruntimeSettings {
    fn default() -> Self {
        OnnxruntimeSettings {
            library: None,
            providers: vec![Provider::Cpu],
        }
    }
}
