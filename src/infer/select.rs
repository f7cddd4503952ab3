//! Which variant of a bundle runs on this CPU, and why (`model.variant = "auto"`).
//!
//! tract's int8 kernels beat its f32 ones only where the CPU has int8 dot products: x86 with AVX-512 VNNI,
//! AVX-VNNI or AMX, arm64 with dotprod. Without them (an AVX2-only x86) they are 10-60x slower than f32
//! (docs/bench.md), so a "quantized" model would be a trap. On arm64 with fp16 arithmetic (the Jetson Orin's
//! Cortex-A78AE) tract has f16 kernels: the fp32 files translated at load ([`RunVariant::F16`]).
//!
//! The features are tract's own view of the machine ([`tract_linalg::isa::native`]): what it probed, edited
//! by `model.cpu-isa` (tract's `TRACT_CPU_ISA` syntax, e.g. `"-avx512vnni,-avxvnni"`), so the choice and the
//! kernels tract dispatches always agree, and an AVX2-only machine can be shown on this one.

use std::fmt;

use tract_onnx::tract_core::tract_linalg::isa::{self, Isa, IsaSet};

use crate::manifest::{EngineKind, Manifest, ModelRole, Variant};

/// What runs: a file variant of the bundle, or the fp32 files translated to f16 at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunVariant {
    Fp32,
    Int8,
    /// The fp32 files, translated to f16 at load (LayerNorm and Softmax kept in f32); arm64 with fp16 only.
    F16,
}

impl RunVariant {
    /// The bundle's file variant this runs from.
    pub fn file_variant(self) -> Variant {
        match self {
            RunVariant::Fp32 | RunVariant::F16 => Variant::Fp32,
            RunVariant::Int8 => Variant::Int8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RunVariant::Fp32 => "fp32",
            RunVariant::Int8 => "int8",
            RunVariant::F16 => "f16",
        }
    }
}

impl From<Variant> for RunVariant {
    fn from(v: Variant) -> RunVariant {
        match v {
            Variant::Fp32 => RunVariant::Fp32,
            Variant::Int8 => RunVariant::Int8,
        }
    }
}

impl fmt::Display for RunVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `model.variant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VariantChoice {
    /// The fastest variant the bundle has for this CPU ([`choose`]).
    Auto,
    Fixed(RunVariant),
}

impl fmt::Display for VariantChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VariantChoice::Auto => f.write_str("auto"),
            VariantChoice::Fixed(v) => v.fmt(f),
        }
    }
}

/// The CPU as tract sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    set: IsaSet,
}

impl CpuFeatures {
    /// tract's probed features, edited by `model.cpu-isa` if it was applied ([`force_isa`]).
    pub fn native() -> CpuFeatures {
        CpuFeatures { set: isa::native() }
    }

    /// A given feature set (tract's syntax: `"avx2,fma"`): for tests and reasoning about other machines.
    pub fn parse(spec: &str) -> Result<CpuFeatures, String> {
        spec.parse::<IsaSet>()
            .map(|set| CpuFeatures { set })
            .map_err(|e| format!("{e}"))
    }

    /// The features, as tract names them (`x86_64, avx, avx2, fma, ..., avx512vnni`).
    pub fn names(&self) -> Vec<&'static str> {
        self.set.iter().map(|i| i.name()).collect()
    }

    /// Whether tract has fast int8 kernels here: int8 dot products (VNNI, AVX-VNNI, AMX; arm64 dotprod).
    pub fn int8_is_fast(&self) -> bool {
        [
            Isa::X86_64Avx512Vnni,
            Isa::X86_64AvxVnni,
            Isa::X86_64AmxInt8,
            Isa::Aarch64DotProd,
        ]
        .iter()
        .any(|&i| self.set.has(i))
    }

    /// Whether the CPU computes in f16 (arm64 fp16): where tract's f16 kernels run.
    pub fn has_f16_arithmetic(&self) -> bool {
        self.set.has(Isa::Aarch64Fp16)
    }

    /// The one feature that decides the int8 question, for messages.
    fn int8_reason(&self) -> &'static str {
        for (isa, name) in [
            (Isa::X86_64AmxInt8, "AMX"),
            (Isa::X86_64Avx512Vnni, "AVX-512 VNNI"),
            (Isa::X86_64AvxVnni, "AVX-VNNI"),
            (Isa::Aarch64DotProd, "arm64 dotprod"),
        ] {
            if self.set.has(isa) {
                return name;
            }
        }
        "no int8 dot product instructions (VNNI, AVX-VNNI, AMX or arm64 dotprod)"
    }
}

impl fmt::Display for CpuFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Checks `model.cpu-isa`: comma-separated features tract knows, each optionally after `+` or `-`.
pub fn check_isa_spec(spec: &str) -> Result<(), String> {
    let mut any = false;
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        any = true;
        let name = token.trim_start_matches(['+', '-']);
        if !Isa::ALL.iter().any(|i| i.name() == name) {
            let known: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
            return Err(format!(
                "'{name}' is not an instruction-set feature tract knows (known: {})",
                known.join(", ")
            ));
        }
    }
    if !any {
        return Err(
            "is empty: give features like \"-avx512vnni,-avxvnni\", or remove the key".into(),
        );
    }
    Ok(())
}

/// Sets up the instruction set tract will use, before it probes the machine: what the kernel's hardware
/// capabilities say (std's feature detection reads them) where tract's probe would miss it, then the user's
/// `model.cpu-isa` edits on top. tract reads arm64 fp16 from the `Features` line of /proc/cpuinfo, which
/// user-mode emulation (qemu-user) and some containers do not provide; the hwcaps are the truth there.
pub fn prepare_isa(user: Option<&str>) -> Result<(), String> {
    let mut spec: Vec<String> = Vec::new();
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("fp16") {
            spec.push("+fp16".into());
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            spec.push("+dotprod".into());
        }
    }
    if let Some(user) = user {
        check_isa_spec(user)?;
        spec.push(user.to_owned());
    }
    if spec.is_empty() {
        return Ok(());
    }
    force_isa(&spec.join(","))
}

/// Applies `model.cpu-isa` (tract's `TRACT_CPU_ISA` syntax: comma-separated features, `-` removes, `+` adds)
/// before tract probes the machine. Must run before any model is loaded; fails if tract has probed already
/// with another setting, or a token is not a feature tract knows.
pub fn force_isa(spec: &str) -> Result<(), String> {
    check_isa_spec(spec)?;
    let knob = &tract_onnx::tract_core::tract_linalg::knobs::TRACT_CPU_ISA;
    if knob.get().as_deref() == Some(spec) {
        return Ok(());
    }
    knob.set(Some(spec.to_owned()));
    if knob.get().as_deref() != Some(spec) {
        return Err("tract's instruction set is fixed already in this process".into());
    }
    Ok(())
}

/// The variant [`choose`] picked, and why (one line for the log and `ocellus check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The pick by the CPU's features; the one to run unless `candidates` are measured.
    pub variant: RunVariant,
    pub reason: String,
    /// More than one: `auto` cannot tell from the CPU alone which of these is faster for this model (small
    /// models can be slower in int8 even with int8 dot products), so the runtime measures them on this
    /// machine and keeps the fastest (remembering the answer). Empty or one: nothing to measure.
    pub candidates: Vec<RunVariant>,
}

/// Resolves `model.variant` for `engine` on a CPU with `cpu`'s features:
/// * a fixed variant is kept if the bundle has its files (else an error naming what it has);
/// * `auto` with tract: where the CPU has int8 dot products and the bundle has int8 files for tract, int8 and
///   fp32 are the candidates to measure (with no fp32 files, int8); without int8 dot products, f16 where the
///   CPU computes in f16 (arm64), else fp32 (tract's int8 is 10-60x slower there: never a candidate);
/// * `auto` with onnxruntime: int8 and fp32 are measured when the bundle has both for onnxruntime.
pub fn choose(
    choice: VariantChoice,
    manifest: &Manifest,
    engine: EngineKind,
    cpu: &CpuFeatures,
) -> Result<Choice, String> {
    let has = |v: Variant| {
        manifest.file_for(ModelRole::Vision, v, engine).is_some()
            && manifest.file_for(ModelRole::Resampler, v, engine).is_some()
    };
    let available = || {
        [Variant::Fp32, Variant::Int8]
            .iter()
            .filter(|&&v| has(v))
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match choice {
        VariantChoice::Fixed(v) => {
            if !has(v.file_variant()) {
                return Err(format!(
                    "the bundle {} has no {} vision and resampler files for {engine} (it has: {}); choose one of those or auto",
                    manifest.name,
                    v.file_variant(),
                    available()
                ));
            }
            if v == RunVariant::F16 && engine != EngineKind::Tract {
                return Err(format!(
                    "f16 is a tract variant; {engine} runs fp32 or int8"
                ));
            }
            Ok(Choice {
                variant: v,
                reason: "model.variant".into(),
                candidates: Vec::new(),
            })
        }
        VariantChoice::Auto => {
            if !has(Variant::Fp32) && !has(Variant::Int8) {
                return Err(format!(
                    "the bundle {} has no vision and resampler files for {engine}",
                    manifest.name
                ));
            }
            let pick = |variant: RunVariant, reason: String| {
                Ok(Choice {
                    variant,
                    reason,
                    candidates: Vec::new(),
                })
            };
            let measure = |variant: RunVariant, reason: String| {
                Ok(Choice {
                    variant,
                    reason,
                    candidates: vec![RunVariant::Int8, RunVariant::Fp32],
                })
            };
            match engine {
                EngineKind::Tract => {
                    // Every variant that can be fast here is a candidate; more than one are measured.
                    let mut candidates = Vec::new();
                    let mut why = Vec::new();
                    if cpu.int8_is_fast() && has(Variant::Int8) {
                        candidates.push(RunVariant::Int8);
                        why.push(format!(
                            "this CPU has {}: tract's int8 kernels can beat its f32 ones",
                            cpu.int8_reason()
                        ));
                    }
                    if cpu.has_f16_arithmetic() && has(Variant::Fp32) {
                        candidates.push(RunVariant::F16);
                        why.push(
                            "it computes in f16 (arm64 fp16): the fp32 files can run translated to f16"
                                .into(),
                        );
                    }
                    if has(Variant::Fp32) {
                        candidates.push(RunVariant::Fp32);
                        if !cpu.int8_is_fast() {
                            why.push(format!(
                                "this CPU has {}: tract's int8 runs slower than its fp32 here",
                                cpu.int8_reason()
                            ));
                        } else if !has(Variant::Int8) {
                            why.push("the bundle has no int8 files for tract".into());
                        }
                    }
                    if candidates.is_empty() {
                        return pick(
                            RunVariant::Int8,
                            "the bundle has int8 files only (they may run slowly on this CPU)"
                                .into(),
                        );
                    }
                    let first = candidates[0];
                    Ok(Choice {
                        variant: first,
                        reason: why.join("; "),
                        candidates: if candidates.len() > 1 {
                            candidates
                        } else {
                            Vec::new()
                        },
                    })
                }
                EngineKind::Onnxruntime => {
                    if has(Variant::Int8) && has(Variant::Fp32) {
                        measure(
                            RunVariant::Int8,
                            "the bundle has int8 files made for onnxruntime".into(),
                        )
                    } else if has(Variant::Int8) {
                        pick(
                            RunVariant::Int8,
                            "the bundle has int8 files made for onnxruntime".into(),
                        )
                    } else {
                        pick(
                            RunVariant::Fp32,
                            "the bundle has no int8 files for onnxruntime".into(),
                        )
                    }
                }
            }
        }
    }
}
