//! One ONNX file, optimised and planned once by tract, with its run state and input tensors kept across runs.

use std::path::PathBuf;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;

use super::verify::{shape_str, LoadError, Verified};

pub(crate) use tract_onnx::tract_core::tract_linalg::multithread::Executor;

/// Sizes of the tensors one run of a planned model produces, from the optimised model's facts: what an
/// arena in front of tract's per-run allocations must hold. Weights and op scratch space are not included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanMemory {
    /// Sum of every intermediate and output tensor of one run (a bump arena reset per run needs this much).
    pub tensor_bytes: u64,
    /// The largest total of tensors alive at once, following tract's plan order and release points.
    pub peak_live_bytes: u64,
    /// Bytes of the model's input tensors, allocated once and reused.
    pub input_bytes: u64,
}

/// The arithmetic a planned model runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precision {
    /// As the file says (f32, or int8 for quantized files).
    AsFile,
    /// f32 tensors translated to f16 after decluttering (tract's float translator), except the nodes of
    /// LayerNormalization and Softmax, which stay in f32 (their sums and exponentials overflow or lose too
    /// much in f16). Inputs and outputs become f16.
    F16,
}

/// Whether `node` stays in f32 in an f16 model: LayerNormalization's expansion (its nodes are named after the
/// ONNX node, `.../LayerNormalization...`) and Softmax.
fn keeps_f32(node: &TypedNode) -> bool {
    let name = node.name.as_str();
    name.contains("LayerNormalization")
        || name.contains("layer_norm")
        || name.contains("Softmax")
        || node
            .op_as::<tract_onnx::tract_core::ops::nn::Softmax>()
            .is_some()
}

pub(crate) struct Planned {
    pub path: PathBuf,
    state: SimpleState<TypedFact, Box<dyn TypedOp>>,
    inputs: Vec<Arc<Tensor>>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    pub memory: PlanMemory,
}

fn datum_type(dtype: &str) -> Option<DatumType> {
    Some(match dtype {
        "float32" => f32::datum_type(),
        "int64" => i64::datum_type(),
        "int32" => i32::datum_type(),
        "float64" => f64::datum_type(),
        "int8" => i8::datum_type(),
        "uint8" => u8::datum_type(),
        _ => return None,
    })
}

impl Planned {
    /// Parses the verified protobuf, fixes the input facts from the manifest, optimises and plans.
    pub(crate) fn build(
        verified: Verified,
        executor: Executor,
        precision: Precision,
    ) -> Result<Planned, LoadError> {
        let Verified {
            entry, path, proto, ..
        } = verified;
        let tract = |stage: &'static str| {
            let path = path.clone();
            move |e: anyhow::Error| LoadError::Tract {
                path,
                stage,
                message: format!("{e:#}"),
            }
        };
        let signature = |problem: String| LoadError::Signature {
            path: path.clone(),
            problem,
        };
        let dir = path.parent().and_then(|d| d.to_str());
        let parsed = tract_onnx::onnx()
            .parse(&proto, dir)
            .map_err(tract("parse"))?;
        drop(proto);
        if !parsed.unresolved_inputs.is_empty() {
            return Err(signature(format!(
                "the graph reads undefined tensors {}",
                parsed.unresolved_inputs.join(", ")
            )));
        }
        let mut model = parsed.model;
        let input_names: Vec<String> = model
            .input_outlets()
            .map_err(tract("parse"))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let mut inputs = Vec::with_capacity(input_names.len());
        for (ix, name) in input_names.iter().enumerate() {
            let spec = entry
                .inputs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| signature(format!("the manifest lists no input {name}")))?;
            let dt = datum_type(&spec.dtype).ok_or_else(|| {
                signature(format!(
                    "input {name} has dtype {} which ocellus does not feed",
                    spec.dtype
                ))
            })?;
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, spec.shape.clone()))
                .map_err(tract("set the input facts of"))?;
            let run_dt = if precision == Precision::F16 && dt == f32::datum_type() {
                f16::datum_type()
            } else {
                dt
            };
            inputs.push(Arc::new(
                Tensor::zero_dt(run_dt, &spec.shape).map_err(tract("allocate the inputs of"))?,
            ));
        }
        let typed = match precision {
            Precision::AsFile => model.into_optimized().map_err(tract("optimise"))?,
            Precision::F16 => {
                use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
                use tract_onnx::tract_core::transform::ModelTransform;
                let mut typed = model
                    .into_typed()
                    .and_then(|m| m.into_decluttered())
                    .map_err(tract("optimise"))?;
                FloatPrecisionTranslator::with_filter(
                    f32::datum_type(),
                    f16::datum_type(),
                    |node| !keeps_f32(node),
                )
                .transform(&mut typed)
                .map_err(tract("translate to f16"))?;
                typed.into_optimized().map_err(tract("optimise"))?
            }
        };

        let output_names: Vec<String> = match typed.output_outlets() {
            Ok(outlets) => outlets
                .iter()
                .map(|o| {
                    typed
                        .outlet_label(*o)
                        .map(str::to_owned)
                        .unwrap_or_else(|| typed.node(o.node).name.clone())
                })
                .collect(),
            Err(e) => return Err(tract("optimise")(e)),
        };
        for (ix, name) in output_names.iter().enumerate() {
            let spec = entry
                .outputs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| signature(format!("output {name} is not in the manifest")))?;
            let fact = typed.output_fact(ix).map_err(tract("optimise"))?;
            let concrete = fact.shape.as_concrete();
            let expected = match (precision, datum_type(&spec.dtype)) {
                (Precision::F16, Some(dt)) if dt == f32::datum_type() => Some(f16::datum_type()),
                (_, dt) => dt,
            };
            if concrete != Some(spec.shape.as_slice()) || Some(fact.datum_type) != expected {
                return Err(signature(format!(
                    "output {name} is {:?} {} after tract's shape inference, the manifest says {} {}",
                    fact.datum_type,
                    concrete.map_or_else(|| format!("{:?}", fact.shape), shape_str),
                    spec.dtype,
                    shape_str(&spec.shape)
                )));
            }
        }

        let options = RunOptions {
            executor: Some(executor),
            ..RunOptions::default()
        };
        let plan = typed
            .into_runnable_with_options(&options)
            .map_err(tract("plan"))?;
        let mut memory = plan_memory(&plan);
        memory.input_bytes = inputs
            .iter()
            .map(|t| (t.len() * t.datum_type().size_of()) as u64)
            .sum();
        let state = SimpleState::new(&plan).map_err(tract("plan"))?;
        Ok(Planned {
            path,
            state,
            inputs,
            input_names,
            output_names,
            memory,
        })
    }

    pub(crate) fn input_index(&self, name: &str) -> Option<usize> {
        self.input_names.iter().position(|n| n == name)
    }

    pub(crate) fn output_index(&self, name: &str) -> Option<usize> {
        self.output_names.iter().position(|n| n == name)
    }

    pub(crate) fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// Hands input `ix`'s buffer to `f` for writing. The buffer is the one allocated at load: after a run
    /// tract holds no reference to it, so it is written in place (it is copied only if a reference leaked).
    pub(crate) fn with_input<T: Datum, R>(
        &mut self,
        ix: usize,
        f: impl FnOnce(&mut [T]) -> R,
    ) -> TractResult<R> {
        let tensor = self
            .inputs
            .get_mut(ix)
            .ok_or_else(|| anyhow::anyhow!("no input {ix}"))?;
        let mut view = Arc::make_mut(tensor).try_as_plain_ram_mut()?;
        Ok(f(view.as_slice_mut::<T>()?))
    }

    /// Runs on the inputs written through [`Planned::with_input`].
    pub(crate) fn run(&mut self) -> TractResult<TVec<TValue>> {
        let inputs: TVec<TValue> = self
            .inputs
            .iter()
            .map(|t| TValue::from_const(Arc::clone(t)))
            .collect();
        self.state.run(inputs)
    }

    /// Runs on caller-provided values (the encoder's output fed to the resampler without a copy).
    pub(crate) fn run_with(&mut self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.state.run(inputs)
    }
}

/// Walks the plan order the way tract's `SimpleState` does: a node's outputs live from its step to the
/// step of its last consumer (model outputs to the end).
fn plan_memory(plan: &TypedSimplePlan) -> PlanMemory {
    let model = plan.model();
    let order = plan.order_without_consts();
    let mut step_of = vec![usize::MAX; model.nodes().len()];
    for (step, &n) in order.iter().enumerate() {
        step_of[n] = step;
    }
    let outputs: Vec<usize> = model
        .output_outlets()
        .map(|o| o.iter().map(|o| o.node).collect())
        .unwrap_or_default();
    let mut release_at: Vec<Vec<usize>> = vec![Vec::new(); order.len() + 1];
    let mut bytes_of = vec![0u64; model.nodes().len()];
    let mut total = 0u64;
    for (step, &n) in order.iter().enumerate() {
        let node = model.node(n);
        let bytes: u64 = node
            .outputs
            .iter()
            .filter_map(|o| {
                let dims = o.fact.shape.as_concrete()?;
                Some(dims.iter().product::<usize>() as u64 * o.fact.datum_type.size_of() as u64)
            })
            .sum();
        bytes_of[n] = bytes;
        total += bytes;
        let last = if outputs.contains(&n) {
            order.len()
        } else {
            node.outputs
                .iter()
                .flat_map(|o| o.successors.iter())
                .map(|s| step_of[s.node])
                .filter(|&s| s != usize::MAX)
                .max()
                .unwrap_or(step)
        };
        release_at[last].push(n);
    }
    let (mut live, mut peak) = (0u64, 0u64);
    for (step, &n) in order.iter().enumerate() {
        live += bytes_of[n];
        peak = peak.max(live);
        for &r in &release_at[step] {
            live -= bytes_of[r];
        }
    }
    PlanMemory {
        tensor_bytes: total,
        peak_live_bytes: peak,
        input_bytes: 0,
    }
}
