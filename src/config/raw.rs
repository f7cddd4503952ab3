//! The file's shape: what serde reads, before validation. Every table denies unknown keys.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    pub(super) camera: Option<Vec<RawCamera>>,
    #[serde(default)]
    pub(super) model: RawModel,
    #[serde(default)]
    pub(super) prompts: RawPrompts,
    #[serde(default)]
    pub(super) budgets: RawBudgets,
    #[serde(default)]
    pub(super) shm: RawShm,
    #[serde(default)]
    pub(super) logging: RawLogging,
    #[serde(default)]
    pub(super) memory: RawMemory,
    #[serde(default)]
    pub(super) realtime: RawRealtime,
    #[serde(default)]
    pub(super) testing: RawTesting,
    #[serde(default)]
    pub(super) onnxruntime: RawOnnxruntime,
    #[serde(default)]
    pub(super) recorder: RawRecorder,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawCamera {
    pub(super) name: Option<String>,
    pub(super) source: Option<String>,
    pub(super) device: Option<String>,
    pub(super) path: Option<String>,
    pub(super) pixel_format: Option<String>,
    pub(super) width: Option<u32>,
    pub(super) height: Option<u32>,
    pub(super) fps: Option<u32>,
    pub(super) pool_size: Option<usize>,
    pub(super) hold_frames: Option<u32>,
    pub(super) seed: Option<u64>,
    #[serde(rename = "loop")]
    pub(super) looping: Option<bool>,
    pub(super) buffers: Option<u32>,
    pub(super) stall_periods: Option<u32>,
    pub(super) stall_timeout_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawModel {
    pub(super) manifest: Option<String>,
    pub(super) engine: Option<String>,
    pub(super) variant: Option<String>,
    pub(super) threads: Option<usize>,
    pub(super) cpu_isa: Option<String>,
    pub(super) measurements: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPrompts {
    pub(super) labels: Option<Vec<String>>,
    pub(super) file: Option<String>,
    pub(super) max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawBudgets {
    pub(super) memory_mib: Option<u64>,
    /// Renamed `dequeue-ms`; read only to say so.
    pub(super) capture_ms: Option<f64>,
    pub(super) dequeue_ms: Option<f64>,
    pub(super) prepare_ms: Option<f64>,
    pub(super) encoder_ms: Option<f64>,
    pub(super) resampler_ms: Option<f64>,
    pub(super) publish_ms: Option<f64>,
    pub(super) end_to_end_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawShm {
    pub(super) name: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) group: Option<String>,
    pub(super) latents: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLogging {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawMemory {
    pub(super) lock: Option<bool>,
    pub(super) lock_required: Option<bool>,
    pub(super) arena_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRealtime {
    pub(super) capture_cpus: Option<Vec<usize>>,
    pub(super) inference_cpus: Option<Vec<usize>>,
    pub(super) capture_priority: Option<i64>,
    pub(super) inference_priority: Option<i64>,
    pub(super) strict: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTesting {
    pub(super) delay_stage: Option<String>,
    pub(super) delay_ms: Option<f64>,
    pub(super) delay_after_frames: Option<u64>,
    pub(super) stall_after_frames: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawOnnxruntime {
    pub(super) library: Option<String>,
    pub(super) providers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRecorder {
    pub(super) enabled: Option<bool>,
    pub(super) seconds: Option<f64>,
    pub(super) frames: Option<usize>,
    pub(super) after: Option<f64>,
    pub(super) dir: Option<String>,
    pub(super) quota_mib: Option<u64>,
    pub(super) socket: Option<String>,
    pub(super) on_late: Option<Vec<String>>,
    pub(super) on_camera_fault: Option<bool>,
}
