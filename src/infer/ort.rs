//! The onnxruntime engine (cargo feature `onnxruntime`): the vision encoder and resampler run by a
//! libonnxruntime loaded at run time (`[onnxruntime] library`), through the `ort` crate.
//!
//! Lifecycle: [`OrtEngine::load`] verifies the files onnxruntime runs (`Manifest::file_for(..,
//! EngineKind::Onnxruntime)`: the fp32 files and the int8 files marked for onnxruntime; size, sha256 and
//! ONNX signature, as for tract), loads the library once per process, creates one session per model
//! (graph optimisation level "all", `model.threads` intra-op threads, one inter-op thread, the configured
//! execution providers), allocates every input and output tensor once and binds them (an `IoBinding` per
//! session; the encoder's `patch_tokens` output tensor is bound as the resampler's input, so the tokens are
//! never copied between the models), then runs once to warm up and measure what the engine took.
//!
//! Per frame, [`InferenceEngine::run`] copies `pixel_values` into the bound input tensor, runs both sessions
//! on their bindings, and copies the outputs into the caller's [`VisionOutput`] (image_embeds
//! L2-normalised), exactly as the tract engine does. Nothing is allocated on the Rust side (the runs call
//! the C API's `RunWithBinding` directly: `ort`'s wrapper would build an output list per run). What
//! onnxruntime allocates inside goes through malloc: `ocellus bench` counts it.
//!
//! The text encoder stays on tract: it runs at start-up and when the prompts change, off the frame path.

#[allow(unsafe_code)]
mod sys;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use ::ort::environment::Environment;
use ::ort::memory::Allocator;
use ::ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ::ort::session::{IoBinding, Session};
use ::ort::value::Tensor;

use super::{
    check_manifest_for, l2_normalise, read_verified_for, EngineInfo, EngineMemory, EngineSettings,
    InferError, InferenceEngine, LoadError, MeasuredMemory, OnnxruntimeSettings, PlanMemory,
    Provider, RunVariant, StageTimes, VisionOutput, ORT_DYLIB_PATH_VAR, ORT_MIN_VERSION,
};
use crate::manifest::{EngineKind, Manifest, ModelRole};

/// Where the tools' venv keeps a libonnxruntime (`make setup-python` installs it), for error messages.
const VENV_LIBRARY_HINT: &str =
    "~/.cache/ocellus/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0";

/// The library this process loaded and its environment: onnxruntime is loaded once per process and
/// cannot be swapped for another.
struct Loaded {
    path: PathBuf,
    env: Environment,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// Vision encoder then resampler in onnxruntime, bound once, run once per frame.
pub struct OrtEngine {
    info: EngineInfo,
    encoder: Session,
    resampler: Session,
    encoder_binding: IoBinding,
    resampler_binding: IoBinding,
    pixel_values: Tensor<f32>,
    patch_tokens: Tensor<f32>,
    image_embeds: Tensor<f32>,
    latents: Tensor<f32>,
    input_len: usize,
    patch_shape: (usize, usize),
    latents_shape: (usize, usize),
    embed_dim: usize,
    memory: EngineMemory,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The library `settings` name: `library`, else the `ORT_DYLIB_PATH` environment variable.
pub(crate) fn library_path(settings: &OnnxruntimeSettings) -> Result<PathBuf, LoadError> {
    if let Some(path) = &settings.library {
        return Ok(path.clone());
    }
    match std::env::var_os(ORT_DYLIB_PATH_VAR) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(LoadError::OrtLibrary {
            path: None,
            problem: "no library is configured".into(),
            fix: format!(
                "set `library = \"/path/to/libonnxruntime.so\"` in the config's [onnxruntime] table or the \
                 {ORT_DYLIB_PATH_VAR} environment variable (onnxruntime {ORT_MIN_VERSION} or later; the \
                 tools' venv has one: {VENV_LIBRARY_HINT})"
            ),
        }),
    }
}

/// Loads the library (once per process) and returns its environment.
fn environment(settings: &OnnxruntimeSettings) -> Result<(Environment, PathBuf), LoadError> {
    let path = library_path(settings)?;
    let fail = |problem: String, fix: String| LoadError::OrtLibrary {
        path: Some(path.clone()),
        problem,
        fix,
    };
    let where_from = if settings.library.is_some() {
        "[onnxruntime] library".to_owned()
    } else {
        format!("the {ORT_DYLIB_PATH_VAR} environment variable")
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(fail(
                "is not a file".into(),
                format!("point {where_from} at libonnxruntime.so itself (e.g. {VENV_LIBRARY_HINT})"),
            ))
        }
        Err(e) => {
            return Err(fail(
                format!("does not exist ({e})"),
                format!(
                    "point {where_from} at an existing libonnxruntime.so (onnxruntime {ORT_MIN_VERSION} or \
                     later; `pip install onnxruntime` ships one in onnxruntime/capi/, the tools' venv has \
                     {VENV_LIBRARY_HINT})"
                ),
            ))
        }
    }
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = loaded.as_ref() {
        if l.path != path {
            return Err(fail(
                format!(
                    "this process loaded onnxruntime from {} already, and a process holds one",
                    l.path.display()
                ),
                "use one [onnxruntime] library for every engine of the process".into(),
            ));
        }
        return Ok((l.env.clone(), path));
    }
    let builder = ::ort::init_from(&path).map_err(|e| match e {
        ::ort::LoadDynamicError::Dlopen { error, .. } => fail(
            format!("cannot be loaded ({error})"),
            format!(
                "point {where_from} at a libonnxruntime.so built for this machine's architecture and C \
                 library, with its dependencies on the loader's path"
            ),
        ),
        ::ort::LoadDynamicError::MissingApi { .. } => fail(
            "is not an onnxruntime library (it exports no OrtGetApiBase)".into(),
            format!("point {where_from} at libonnxruntime.so"),
        ),
        ::ort::LoadDynamicError::BadVersion { version_str, .. } => fail(
            format!("is onnxruntime {version_str}, older than the {ORT_MIN_VERSION} this ocellus is built for"),
            format!("install onnxruntime {ORT_MIN_VERSION} or later (`pip install -U onnxruntime`) and point {where_from} at its library"),
        ),
        ::ort::LoadDynamicError::InvalidVersionString => fail(
            "reports a malformed version string".into(),
            format!("point {where_from} at an official onnxruntime {ORT_MIN_VERSION}+ library"),
        ),
    })?;
    let env = builder
        .with_name("ocellus")
        .with_telemetry(false)
        .build()
        .map_err(|e| {
            fail(
                format!("cannot create an environment ({e})"),
                "check the library's installation".into(),
            )
        })?;
    tracing::info!(library = %path.display(), "onnxruntime loaded");
    *loaded = Some(Loaded {
        path: path.clone(),
        env: env.clone(),
    });
    Ok((env, path))
}

/// One session: graph optimisation "all", `threads` intra-op threads, the providers in order.
fn session(
    env: &Environment,
    path: &Path,
    threads: usize,
    providers: &[Provider],
) -> Result<Session, LoadError> {
    let failed = |stage: &'static str| {
        move |e: ::ort::Error<SessionBuilder>| LoadError::Onnxruntime {
            path: path.to_owned(),
            stage,
            message: e.to_string(),
        }
    };
    let mut eps = Vec::with_capacity(providers.len());
    for p in providers {
        eps.push(match p {
            // `ort`'s CPU provider turns onnxruntime's memory arena off unless asked; onnxruntime's own
            // default (and Python's) is on. Off, every kernel's scratch is a malloc: 2,522 calls a frame and
            // 1.10x ort-bench's time at ViT-B/32 int8 (docs/engines.md).
            Provider::Cpu => ::ort::ep::CPU::default()
                .with_arena_allocator(true)
                .build()
                .error_on_failure(),
            Provider::Cuda => ::ort::ep::CUDA::default().build().error_on_failure(),
            Provider::Tensorrt => ::ort::ep::TensorRT::default().build().error_on_failure(),
        });
    }
    let builder = Session::builder(env).map_err(|e| LoadError::Onnxruntime {
        path: path.to_owned(),
        stage: "create a session for",
        message: e.to_string(),
    })?;
    builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(failed("set the optimisation level for"))?
        .with_intra_threads(threads)
        .map_err(failed("set the threads for"))?
        .with_inter_threads(1)
        .map_err(failed("set the threads for"))?
        .with_execution_providers(eps)
        .map_err(failed(
            "register the execution providers (a GPU provider needs a libonnxruntime built with it) for",
        ))?
        .commit_from_file(path)
        .map_err(|e| LoadError::Onnxruntime {
            path: path.to_owned(),
            stage: "load",
            message: e.to_string(),
        })
}

/// The session's input or output names, checked against what the engine feeds and reads.
fn expect_names(
    path: &Path,
    kind: &str,
    actual: Vec<&str>,
    expected: &[&str],
) -> Result<(), LoadError> {
    let mut a = actual.clone();
    a.sort_unstable();
    let mut e = expected.to_vec();
    e.sort_unstable();
    if a != e {
        return Err(LoadError::Signature {
            path: path.to_owned(),
            problem: format!(
                "onnxruntime sees {kind}s {} but the engine needs exactly {}",
                actual.join(", "),
                expected.join(", ")
            ),
        });
    }
    Ok(())
}

impl OrtEngine {
    /// Verifies the vision and resampler files onnxruntime runs for `settings.variant`, loads the library
    /// (`settings.onnxruntime`), creates and binds both sessions, and runs them once.
    pub fn load(manifest: &Manifest, settings: &EngineSettings) -> Result<OrtEngine, LoadError> {
        let run = settings.variant;
        if run == RunVariant::F16 {
            return Err(LoadError::Variant {
                variant: run,
                problem: "f16 is a tract variant; onnxruntime runs fp32 or int8".into(),
            });
        }
        if settings.threads == 0 {
            return Err(LoadError::Threads {
                threads: 0,
                message: "zero threads".into(),
            });
        }
        let variant = run.file_variant();
        let engine = EngineKind::Onnxruntime;
        let roles = [ModelRole::Vision, ModelRole::Resampler];
        check_manifest_for(manifest, variant, &roles, engine)?;
        let vision = read_verified_for(manifest, ModelRole::Vision, variant, engine)?;
        let resampler = read_verified_for(manifest, ModelRole::Resampler, variant, engine)?;
        let files = vec![vision.size.clone(), resampler.size.clone()];
        let (vision_path, resampler_path) = (vision.path.clone(), resampler.path.clone());
        // The parsed protobufs were for verification only; onnxruntime reads the files itself.
        drop((vision, resampler));

        let pre = &manifest.preprocess;
        // check_manifest_for guarantees the vision entry's patch_tokens is [1, N, D].
        let patch_shape = manifest
            .file_for(ModelRole::Vision, variant, engine)
            .and_then(|e| e.outputs.iter().find(|s| s.name == "patch_tokens"))
            .map(|s| (s.shape[1], s.shape[2]))
            .ok_or_else(|| LoadError::Signature {
                path: vision_path.clone(),
                problem: "the manifest entry has no patch_tokens".into(),
            })?;
        let latents_shape = (
            manifest.resampler.num_latents,
            manifest.resampler.latent_dim,
        );
        let embed_dim = manifest.embed_dim;

        let rss_before = crate::alloc::process_memory().map(|m| m.rss);
        let heap_before = crate::alloc::heap_in_use();
        let (env, _library) = environment(&settings.onnxruntime)?;
        let providers = &settings.onnxruntime.providers;
        let encoder = session(&env, &vision_path, settings.threads, providers)?;
        let resampler = session(&env, &resampler_path, settings.threads, providers)?;
        expect_names(
            &vision_path,
            "input",
            encoder.inputs().iter().map(|o| o.name()).collect(),
            &["pixel_values"],
        )?;
        expect_names(
            &vision_path,
            "output",
            encoder.outputs().iter().map(|o| o.name()).collect(),
            &["patch_tokens", "image_embeds"],
        )?;
        expect_names(
            &resampler_path,
            "input",
            resampler.inputs().iter().map(|o| o.name()).collect(),
            &["patch_tokens"],
        )?;
        expect_names(
            &resampler_path,
            "output",
            resampler.outputs().iter().map(|o| o.name()).collect(),
            &["latents"],
        )?;

        let bind = |path: &Path, stage: &'static str| {
            let path = path.to_owned();
            move |e: ::ort::Error| LoadError::Onnxruntime {
                path,
                stage,
                message: e.to_string(),
            }
        };
        let cpu = Allocator::default();
        let (h, w) = (pre.height, pre.width);
        let pixel_values = Tensor::<f32>::new(&cpu, [1, 3, h, w])
            .map_err(bind(&vision_path, "allocate the input of"))?;
        let mut patch_tokens = Tensor::<f32>::new(&cpu, [1, patch_shape.0, patch_shape.1])
            .map_err(bind(&vision_path, "allocate the outputs of"))?;
        let mut image_embeds = Tensor::<f32>::new(&cpu, [1, embed_dim])
            .map_err(bind(&vision_path, "allocate the outputs of"))?;
        let mut latents = Tensor::<f32>::new(&cpu, [1, latents_shape.0, latents_shape.1])
            .map_err(bind(&resampler_path, "allocate the output of"))?;

        let mut encoder_binding = encoder
            .create_binding()
            .map_err(bind(&vision_path, "bind"))?;
        encoder_binding
            .bind_input("pixel_values", &pixel_values)
            .map_err(bind(&vision_path, "bind the input of"))?;
        encoder_binding
            .bind_output("patch_tokens", &mut patch_tokens)
            .map_err(bind(&vision_path, "bind the outputs of"))?;
        encoder_binding
            .bind_output("image_embeds", &mut image_embeds)
            .map_err(bind(&vision_path, "bind the outputs of"))?;
        let mut resampler_binding = resampler
            .create_binding()
            .map_err(bind(&resampler_path, "bind"))?;
        resampler_binding
            .bind_input("patch_tokens", &patch_tokens)
            .map_err(bind(&resampler_path, "bind the input of"))?;
        resampler_binding
            .bind_output("latents", &mut latents)
            .map_err(bind(&resampler_path, "bind the output of"))?;

        let info = EngineInfo {
            engine,
            variant: run,
            threads: settings.threads,
            files: vec![vision_path.clone(), resampler_path.clone()],
        };
        let output_bytes = 4
            * (embed_dim + patch_shape.0 * patch_shape.1 + latents_shape.0 * latents_shape.1)
                as u64;
        let input_bytes = 4 * (3 * h * w) as u64;
        let mut engine = OrtEngine {
            info,
            encoder,
            resampler,
            encoder_binding,
            resampler_binding,
            pixel_values,
            patch_tokens,
            image_embeds,
            latents,
            input_len: 3 * h * w,
            patch_shape,
            latents_shape,
            embed_dim,
            memory: EngineMemory {
                files,
                // onnxruntime's per-run tensors live in its own arena, not in ocellus's frame-path region.
                encoder: PlanMemory {
                    input_bytes,
                    ..PlanMemory::default()
                },
                resampler: PlanMemory::default(),
                output_bytes,
                measured: None,
            },
        };

        // The first run plans onnxruntime's memory (its arena and memory patterns grow to what a run needs);
        // measure after it, so the budget holds the steady state.
        let zeros = vec![0.0f32; engine.input_len];
        let mut out = engine.new_output();
        engine
            .run(&zeros, &mut out)
            .map_err(|e| LoadError::Onnxruntime {
                path: vision_path.clone(),
                stage: "run (first run at start-up)",
                message: e.to_string(),
            })?;
        drop((zeros, out));
        let rss = rss_before
            .zip(crate::alloc::process_memory().map(|m| m.rss))
            .map_or(0, |(a, b)| b.saturating_sub(a));
        let heap = heap_before
            .zip(crate::alloc::heap_in_use())
            .map_or(0, |(a, b)| b.saturating_sub(a));
        let weights = engine.memory.weight_bytes();
        engine.memory.measured = Some(MeasuredMemory {
            rss_bytes: rss,
            heap_bytes: heap,
            counted_bytes: rss.max(heap).saturating_sub(weights),
        });
        tracing::debug!(
            rss,
            heap,
            weights,
            "onnxruntime sessions created and run once"
        );
        Ok(engine)
    }
}

impl InferenceEngine for OrtEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn input_len(&self) -> usize {
        self.input_len
    }

    fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    fn memory(&self) -> &EngineMemory {
        &self.memory
    }

    fn new_output(&self) -> VisionOutput {
        VisionOutput::zeroed(self.embed_dim, self.patch_shape, self.latents_shape)
    }

    /// Allocates nothing on the Rust side; onnxruntime's own allocations are its arena's (see the module
    /// documentation).
    fn run(
        &mut self,
        pixel_values: &[f32],
        out: &mut VisionOutput,
    ) -> Result<StageTimes, InferError> {
        if pixel_values.len() != self.input_len {
            return Err(InferError::InputLength {
                expected: self.input_len,
                actual: pixel_values.len(),
            });
        }
        out.check_fits(self.embed_dim, self.patch_shape, self.latents_shape)?;
        let failed =
            |role: ModelRole| move |message: String| InferError::Onnxruntime { role, message };

        let start = Instant::now();
        self.pixel_values
            .extract_tensor_mut()
            .1
            .copy_from_slice(pixel_values);
        sys::run_with_binding(&self.encoder, &self.encoder_binding)
            .map_err(failed(ModelRole::Vision))?;
        out.image_embeds
            .copy_from_slice(self.image_embeds.extract_tensor().1);
        out.patch_tokens
            .copy_from_slice(self.patch_tokens.extract_tensor().1);
        let encoder = start.elapsed();

        let start = Instant::now();
        sys::run_with_binding(&self.resampler, &self.resampler_binding)
            .map_err(failed(ModelRole::Resampler))?;
        out.latents.copy_from_slice(self.latents.extract_tensor().1);
        let resampler = start.elapsed();

        if !l2_normalise(&mut out.image_embeds) {
            return Err(InferError::NonFinite {
                role: ModelRole::Vision,
                output: "image_embeds",
            });
        }
        if !out.latents.iter().all(|x| x.is_finite()) {
            return Err(InferError::NonFinite {
                role: ModelRole::Resampler,
                output: "latents",
            });
        }
        Ok(StageTimes { encoder, resampler })
    }
}
