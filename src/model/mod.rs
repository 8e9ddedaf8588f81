//! Loading an ONNX ConvNeXt classifier into a runnable tract plan, and running it.
//!
//! The pipeline: read the file → decode the protobuf → check it looks like an image classifier
//! (one NCHW 3-channel input, one `[batch, classes]` output) → `onnx::rewrite` exporter and
//! quantizer quirks into standard ONNX → tract parse (external `*.onnx.data` weights resolve
//! relative to the model's folder) → fix the input fact (symbolic batch kept, spatial size
//! from the file or `input_size`) → type analysis → optimisation → runnable plan with its own
//! worker threads (`kernels::threads`).
//!
//! tract internals used: `tract_onnx::pb` (protobuf types), `Onnx::parse`, and the
//! `RunOptions::executor` plan option (single-threaded: our kernels split their work on our
//! own workers); hence the exact `=0.23.9` pin.

pub mod graph;
pub mod inspect;
pub(crate) mod onnx;
pub(crate) mod passes;

pub use onnx::qdq::{Coverage, Product};
pub use onnx::Rewrites;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_linalg::multithread::Executor;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;

use crate::error::{Error, Result};
use crate::kernels::threads::Workers;
use crate::precision::{self, Precision};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Worker threads for one inference; `None` = the physical cores available.
    pub threads: Option<usize>,
    /// Spatial input size for models whose height/width are dynamic (or to override them).
    pub input_size: Option<usize>,
    /// Precision to run in; `Auto` runs the file as stored.
    pub precision: Precision,
    /// Pin the worker threads to these CPUs (one each, round-robin), and the calling thread to
    /// all of them.
    pub cpus: Option<Vec<usize>>,
    /// Largest tensor a model file may declare, in bytes; `None` = [`DEFAULT_MAX_TENSOR_BYTES`].
    /// Checked on the protobuf before anything is allocated for it.
    pub max_tensor_bytes: Option<u64>,
    /// Whether quantized models run on our integer kernels (the QDQ fusions of `model/onnx/qdq`) or on tract's float
    /// path; `Auto` picks the integer kernels where the CPU makes them pay.
    pub integer: IntegerPath,
}

/// Where the 1x1 convolutions of a QDQ model run: our integer op or tract's float kernels.
///
/// ```
/// use convnext_edge::{IntegerPath, LoadOptions};
/// let options = LoadOptions {
///     integer: IntegerPath::float_only(true),
///     ..LoadOptions::threads(1)
/// };
/// assert_eq!(options.integer, IntegerPath::Never);
/// assert!(IntegerPath::Always.enabled() && !IntegerPath::Never.enabled());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IntegerPath {
    /// Integer kernels where they beat the float ones: x86 with VNNI, or AVX2 (our own
    /// product), and arm64.
    #[default]
    Auto,
    /// Integer kernels on every CPU (tests, comparisons).
    Always,
    /// tract's float path (`--float-only`): for comparison, or as a fallback.
    Never,
}

impl IntegerPath {
    /// `Never` when asked for the float path only (`--float-only`), else `Auto`.
    pub fn float_only(float_only: bool) -> IntegerPath {
        match float_only {
            true => IntegerPath::Never,
            false => IntegerPath::Auto,
        }
    }

    /// Whether the integer kernels are used on this CPU.
    pub fn enabled(self) -> bool {
        match self {
            IntegerPath::Auto => crate::kernels::qconv::integer_kernels_pay(),
            IntegerPath::Always => true,
            IntegerPath::Never => false,
        }
    }
}

/// Default [`LoadOptions::max_tensor_bytes`]: 1 GiB, 5x the largest weight of ConvNeXt-XL.
pub const DEFAULT_MAX_TENSOR_BYTES: u64 = 1 << 30;

/// Largest input height or width accepted (from the file or `input_size`).
pub const MAX_INPUT_SIDE: usize = 8192;

impl LoadOptions {
    /// Default options with `n` worker threads.
    pub fn threads(n: usize) -> Self {
        LoadOptions {
            threads: Some(n),
            ..Default::default()
        }
    }
}

/// Element type of the model's input (and of its weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// f32 input.
    F32,
    /// f16 input.
    F16,
}

/// A loaded, optimised classifier.
///
/// ```
/// use convnext_edge::{Model, LoadOptions};
/// let path = std::path::Path::new("models/digits/convnext_digits_f32.onnx");
/// let model = Model::load(path, &LoadOptions::threads(1)).unwrap();
/// assert_eq!(model.classes(), 10);
/// let x = tract_onnx::prelude::Tensor::zero::<f32>(&[1, 3, 32, 32]).unwrap();
/// let logits = model.run(x).unwrap();
/// assert_eq!(logits.shape(), &[1, 10]);
/// ```
#[derive(Debug, Clone)]
pub struct Model {
    path: PathBuf,
    /// Plan for batch 1 (or the model's fixed batch), built at load.
    plan: Arc<TypedRunnableModel>,
    /// For a dynamic batch axis: the typed model and its batch symbol, from which a plan per
    /// batch size is optimised on first use. Concrete shapes let tract pick kernels by size;
    /// a plan over a symbolic batch runs several times slower.
    dynamic: Option<Arc<DynamicBatch>>,
    io: Io,
    /// The kernels' worker threads, when the plan has more than one.
    workers: Option<Arc<Workers>>,
}

#[derive(Debug)]
struct DynamicBatch {
    typed: TypedModel,
    symbol: Symbol,
    run_options: RunOptions,
    plans: Mutex<HashMap<usize, Arc<TypedRunnableModel>>>,
}

impl DynamicBatch {
    fn plan(&self, path: &Path, batch: usize) -> Result<Arc<TypedRunnableModel>> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = plans.get(&batch) {
            return Ok(plan.clone());
        }
        let plan = plan_for(
            path,
            self.typed.clone(),
            Some((&self.symbol, batch)),
            &self.run_options,
        )?;
        plans.insert(batch, plan.clone());
        Ok(plan)
    }
}

/// Optimises `typed` (with the batch symbol bound, if given) into a runnable plan. It takes
/// the model, so that each integer product's unpacked weights go as the plan packs them
/// (unless a clone of the model still holds them).
fn plan_for(
    path: &Path,
    typed: TypedModel,
    batch: Option<(&Symbol, usize)>,
    run_options: &RunOptions,
) -> Result<Arc<TypedRunnableModel>> {
    let bound = match batch {
        Some((symbol, n)) => {
            let subs = HashMap::from([(symbol.clone(), TDim::from(n))]);
            typed
                .set_symbols(&subs)
                .map_err(stage_error(path, "binding the batch size"))?
        }
        None => typed,
    };
    let mut optimized = bound
        .into_decluttered()
        .map_err(stage_error(path, "decluttering"))?;
    passes::apply(&mut optimized).map_err(stage_error(path, "graph passes"))?;
    optimized
        .optimize()
        .map_err(stage_error(path, "optimisation"))?;
    passes::after_optimisation(&mut optimized).map_err(stage_error(path, "graph passes"))?;
    optimized
        .into_runnable_with_options(run_options)
        .map_err(stage_error(path, "planning"))
}

/// What loading learnt about the model, besides the graph itself.
#[derive(Debug, Clone)]
pub(crate) struct Io {
    input_type: InputType,
    /// The precision the plan runs in.
    precision: Precision,
    /// `None` when the batch axis is dynamic.
    batch: Option<usize>,
    /// The name of a dynamic batch axis.
    batch_symbol: String,
    height: usize,
    width: usize,
    classes: usize,
    metadata: HashMap<String, String>,
    rewrites: Rewrites,
    coverage: Coverage,
}

impl Model {
    /// Loads and optimises the ONNX file at `path`.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Model> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // The file's bytes go as soon as they are decoded: a board with 512 MB holds the model
        // once, not three times, at the peak of loading.
        let proto = crate::error::catch_panic(|| decode(path, &bytes))
            .map_err(stage_error_str(path, "loading"))??;
        drop(bytes);
        Self::from_proto(path, proto, options)
    }

    /// Loads a model from bytes; `path` names it in errors and locates external weight files.
    pub fn from_bytes(path: &Path, bytes: &[u8], options: &LoadOptions) -> Result<Model> {
        let proto = crate::error::catch_panic(|| decode(path, bytes))
            .map_err(stage_error_str(path, "loading"))??;
        Self::from_proto(path, proto, options)
    }

    fn from_proto(path: &Path, proto: pb::ModelProto, options: &LoadOptions) -> Result<Model> {
        let model = crate::error::catch_panic(|| Self::from_proto_unguarded(path, proto, options))
            .map_err(stage_error_str(path, "loading"))?;
        release_freed_memory();
        model
    }

    fn from_proto_unguarded(
        path: &Path,
        proto: pb::ModelProto,
        options: &LoadOptions,
    ) -> Result<Model> {
        let (typed, io) = typed_model(path, proto, options)?;
        let threads = options.threads.unwrap_or_else(default_threads);
        if threads == 0 {
            return Err(Error::Config("thread count must be at least 1".into()));
        }
        let workers = workers(threads, options.cpus.as_deref()).map_err(Error::Config)?;
        // tract's own ops (element-wise, layout) stay on the calling thread: a second pool
        // would compete for the cores with our spinning workers.
        let run_options = RunOptions {
            executor: Some(Executor::SingleThread),
            ..Default::default()
        };
        let symbol = io
            .batch
            .is_none()
            .then(|| typed.symbols.sym(&io.batch_symbol));
        let (plan, dynamic) = match symbol {
            // A fixed batch: the plan is the only model left.
            None => (plan_for(path, typed, None, &run_options)?, None),
            // A dynamic one: the typed model stays, to plan other batch sizes.
            Some(symbol) => {
                let plan = plan_for(path, typed.clone(), Some((&symbol, 1)), &run_options)?;
                let plans = Mutex::new(HashMap::from([(1, plan.clone())]));
                let dynamic = Arc::new(DynamicBatch {
                    typed,
                    symbol,
                    run_options,
                    plans,
                });
                (plan, Some(dynamic))
            }
        };
        Ok(Model {
            path: path.to_owned(),
            plan,
            dynamic,
            io,
            workers,
        })
    }

    /// Runs a batch `[N, 3, H, W]` (f32 or f16) and returns f32 logits `[N, classes]`.
    pub fn run(&self, input: Tensor) -> Result<Tensor> {
        let (plan, input) = self.prepare(input)?;
        let out = self
            .on_workers(|| crate::error::catch_panic(|| plan.run(tvec!(input))))
            .map_err(stage_error_str(&self.path, "inference"))?
            .map_err(|e| self.run_error(e))?;
        self.logits(&out[0])
    }

    /// Runs `f` (the plan) with the model's workers taking a share of its kernels' loops.
    pub(crate) fn on_workers<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.workers {
            Some(workers) => workers.scope(f),
            None => f(),
        }
    }

    /// Checks and casts an input, and picks the plan for its batch size.
    pub(crate) fn prepare(&self, input: Tensor) -> Result<(Arc<TypedRunnableModel>, TValue)> {
        self.check_input(&input)?;
        let input = match self.io.input_type {
            InputType::F32 => input.cast_to::<f32>(),
            InputType::F16 => input.cast_to::<f16>(),
        }
        .map_err(|e| self.run_error(e))?
        .into_owned();
        let plan = match &self.dynamic {
            Some(d) => d.plan(&self.path, input.shape()[0])?,
            None => self.plan.clone(),
        };
        Ok((plan, input.into_tvalue()))
    }

    /// The plan's output as f32 logits.
    pub(crate) fn logits(&self, output: &TValue) -> Result<Tensor> {
        Ok(output
            .cast_to::<f32>()
            .map_err(|e| self.run_error(e))?
            .into_owned())
    }

    pub(crate) fn run_error(&self, e: anyhow::Error) -> Error {
        Error::Model {
            path: self.path.clone(),
            stage: "inference",
            reason: format!("{e:#}"),
        }
    }

    fn check_input(&self, input: &Tensor) -> Result<()> {
        let shape = input.shape();
        let batch_ok = shape
            .first()
            .is_some_and(|&n| n > 0 && self.io.batch.is_none_or(|b| b == n));
        let ok = shape.len() == 4
            && batch_ok
            && shape[1..] == [3, self.io.height, self.io.width]
            && matches!(input.datum_type(), DatumType::F32 | DatumType::F16);
        if ok {
            return Ok(());
        }
        let batch = self.io.batch.map_or("N".to_owned(), |b| b.to_string());
        Err(Error::Shape {
            what: format!("input of {}", self.path.display()),
            expected: format!(
                "f32 or f16 [{batch}, 3, {}, {}]",
                self.io.height, self.io.width
            ),
            got: format!("{:?} {:?}", input.datum_type(), shape),
        })
    }

    /// Number of output classes.
    pub fn classes(&self) -> usize {
        self.io.classes
    }

    /// Input height and width the plan was built for.
    pub fn input_hw(&self) -> (usize, usize) {
        (self.io.height, self.io.width)
    }

    /// Fixed batch size, or `None` when the batch axis is dynamic.
    pub fn batch(&self) -> Option<usize> {
        self.io.batch
    }

    /// The precision the model runs in (as stored, or as converted at load).
    pub fn precision(&self) -> Precision {
        self.io.precision
    }

    /// Element type of the model's input.
    pub fn input_type(&self) -> InputType {
        self.io.input_type
    }

    /// ONNX `metadata_props` of the file (for instance `convnext_edge.preprocess`).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.io.metadata.get(key).map(String::as_str)
    }

    /// The quirk rewrites applied while loading.
    pub fn rewrites(&self) -> &Rewrites {
        &self.io.rewrites
    }

    /// Where each quantized product of the file runs: on integer kernels, or on float and
    /// why. Empty for a float model.
    pub fn integer_coverage(&self) -> &Coverage {
        &self.io.coverage
    }

    /// The optimised tract model at batch 1 (for kernel and cost reports).
    pub fn typed_model(&self) -> &TypedModel {
        self.plan.model()
    }

    /// The file this model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The worker threads of one model, pinned one CPU each when `cpus` is given (the calling
/// thread to all of them).
fn workers(
    threads: usize,
    cpus: Option<&[usize]>,
) -> std::result::Result<Option<Arc<Workers>>, String> {
    if let Some(cpus) = cpus {
        if cpus.is_empty() {
            return Err("empty CPU list".into());
        }
        crate::machine::pin_current_thread(cpus)
            .map_err(|e| format!("cannot pin to CPUs {cpus:?}: {e}"))?;
    }
    if threads == 1 {
        return Ok(None);
    }
    Workers::new(threads, cpus)
        .map(|w| Some(Arc::new(w)))
        .map_err(|e| format!("cannot start {threads} threads: {e}"))
}

fn stage_error<'p>(path: &'p Path, stage: &'static str) -> impl Fn(anyhow::Error) -> Error + 'p {
    move |e| Error::Model {
        path: path.to_owned(),
        stage,
        reason: format!("{e:#}"),
    }
}

fn stage_error_str<'p>(path: &'p Path, stage: &'static str) -> impl Fn(String) -> Error + 'p {
    move |reason| Error::Model {
        path: path.to_owned(),
        stage,
        reason,
    }
}

/// Bytes per element of an ONNX `TensorProto.DataType`, for the size check (0 = unknown).
fn elem_bytes(data_type: i32) -> u64 {
    match data_type {
        2 | 3 | 9 => 1,        // uint8, int8, bool
        4 | 5 | 10 | 16 => 2,  // uint16, int16, float16, bfloat16
        1 | 6 | 12 => 4,       // float, int32, uint32
        7 | 11 | 13 | 14 => 8, // int64, double, uint64, complex64
        15 => 16,              // complex128
        _ => 1,
    }
}

/// Largest `axis` / `axes` attribute magnitude accepted. No real tensor has this many
/// dimensions; tract's shape inference loops up to the axis it is given (a LayerNormalization
/// with axis −2⁴⁹ hung it, found by fuzzing).
pub const MAX_AXIS: i64 = 1024;

/// Refuses `axis`/`axes` attributes beyond [`MAX_AXIS`], before tract reads them.
pub(crate) fn check_axes(path: &Path, proto: &pb::ModelProto) -> Result<()> {
    let Some(graph) = proto.graph.as_ref() else {
        return Ok(());
    };
    for node in &graph.node {
        for a in node
            .attribute
            .iter()
            .filter(|a| a.name == "axis" || a.name == "axes")
        {
            if let Some(v) = std::iter::once(a.i)
                .chain(a.ints.iter().copied())
                .find(|v| !(-MAX_AXIS..=MAX_AXIS).contains(v))
            {
                return Err(Error::InvalidOnnx {
                    path: path.to_owned(),
                    reason: format!(
                        "node {:?} ({}): attribute {} = {v} is out of range",
                        node.name, node.op_type, a.name
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Refuses tensors (initializers and Constant values) that declare more than `max` bytes, or
/// whose stored bytes do not match their shape, before tract allocates anything for them.
pub(crate) fn check_tensor_sizes(path: &Path, proto: &pb::ModelProto, max: u64) -> Result<()> {
    let Some(graph) = proto.graph.as_ref() else {
        return Ok(());
    };
    let constants = graph
        .node
        .iter()
        .flat_map(|n| n.attribute.iter())
        .filter_map(|a| a.t.as_ref());
    for t in graph.initializer.iter().chain(constants) {
        let invalid = |reason: String| Error::InvalidOnnx {
            path: path.to_owned(),
            reason: format!("tensor {:?} {reason}", t.name),
        };
        let count = t.dims.iter().try_fold(1u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        });
        let bytes = count.and_then(|c| c.checked_mul(elem_bytes(t.data_type)));
        match bytes {
            None => return Err(invalid(format!("has an invalid shape {:?}", t.dims))),
            Some(b) if b > max => {
                return Err(invalid(format!(
                    "declares {b} bytes, over the {max}-byte limit (LoadOptions::max_tensor_bytes)"
                )))
            }
            Some(b) if !t.raw_data.is_empty() && t.raw_data.len() as u64 != b => {
                return Err(invalid(format!(
                    "declares {b} bytes for shape {:?} but holds {}",
                    t.dims,
                    t.raw_data.len()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks, rewrites, parses and types a decoded model (see the module docs).
pub(crate) fn typed_model(
    path: &Path,
    mut proto: pb::ModelProto,
    options: &LoadOptions,
) -> Result<(TypedModel, Io)> {
    check_tensor_sizes(
        path,
        &proto,
        options.max_tensor_bytes.unwrap_or(DEFAULT_MAX_TENSOR_BYTES),
    )?;
    check_axes(path, &proto)?;
    let sig = Signature::of(path, &proto)?;
    let (rewrites, coverage) = onnx::rewrite(&mut proto, options.integer)
        .map_err(stage_error_str(path, "graph rewrite"))?;
    let stored = precision::of_graph(proto.graph.as_ref().expect("decode checks the graph"));
    let metadata = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    let dir = path.parent().and_then(|d| d.to_str());
    let mut parser = onnx::parser();
    if let Some(handover) = onnx::initializers::Handover::take(&mut proto, path) {
        parser.provider = handover;
    }
    let parsed = parser
        .parse(&proto, dir)
        .map_err(stage_error(path, "ONNX parsing"))?;
    // tract holds its own copy of every weight now.
    drop(proto);
    release_freed_memory();
    if !parsed.unresolved_inputs.is_empty() {
        return Err(Error::Model {
            path: path.to_owned(),
            stage: "ONNX parsing",
            reason: format!("unresolved inputs {:?}", parsed.unresolved_inputs),
        });
    }
    let mut model = parsed.model;
    let (height, width) = sig.spatial(path, options.input_size)?;
    let batch_dim: TDim = match sig.batch {
        Some(b) => b.into(),
        None => model
            .symbols
            .sym(sig.batch_symbol.as_deref().unwrap_or("batch"))
            .into(),
    };
    let dt = match sig.input_type {
        InputType::F32 => f32::datum_type(),
        InputType::F16 => f16::datum_type(),
    };
    let fact = InferenceFact::dt_shape(dt, tvec![batch_dim, 3.into(), height.into(), width.into()]);
    model
        .set_input_fact(0, fact)
        .map_err(stage_error(path, "setting the input shape"))?;
    let mut typed = model
        .into_typed()
        .map_err(stage_error(path, "type and shape analysis"))?;
    // The weight constants the integer products copied are read by nothing now: dropped
    // here, or they would stay as long as the model (the model's life, for a dynamic batch).
    typed
        .compact()
        .map_err(stage_error(path, "type and shape analysis"))?;
    release_freed_memory();
    let typed = precision::convert(typed, stored, options.precision)
        .map_err(stage_error_str(path, "precision conversion"))?;
    let input_type = match typed.input_fact(0).map(|f| f.datum_type) {
        Ok(DatumType::F16) => InputType::F16,
        _ => InputType::F32,
    };
    let classes = output_classes(path, &typed)?;
    let io = Io {
        input_type,
        precision: precision::effective(stored, options.precision),
        batch: sig.batch,
        batch_symbol: sig.batch_symbol.clone().unwrap_or_else(|| "batch".into()),
        height,
        width,
        classes,
        metadata,
        rewrites,
        coverage,
    };
    Ok((typed, io))
}

/// Hands the memory loading freed back to the system. glibc keeps freed memory for reuse, and
/// raises the size from which it maps blocks of their own as large ones are freed, so the
/// copies loading made and dropped (the file, its protobuf, the unpacked weights) would stay
/// resident beside the activations the plan allocates.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Worker threads when none are asked for: every core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<pb::ModelProto> {
    let invalid = |reason: String| Error::InvalidOnnx {
        path: path.to_owned(),
        reason,
    };
    let proto = <pb::ModelProto as prost::Message>::decode(bytes)
        .map_err(|e| invalid(format!("{e:#} (truncated or not an ONNX file?)")))?;
    match &proto.graph {
        Some(g) if !g.node.is_empty() => Ok(proto),
        _ => Err(invalid("the file holds no graph".into())),
    }
}

/// The classifier contract read from the protobuf: one NCHW input with 3 channels.
#[derive(Debug, Clone)]
pub(crate) struct Signature {
    pub input_type: InputType,
    pub batch: Option<usize>,
    /// The exporter's name for a dynamic batch axis (`batch`, `s77`, ...), reused so that the
    /// graph's own shape annotations unify with the input fact.
    pub batch_symbol: Option<String>,
    pub height: Option<usize>,
    pub width: Option<usize>,
}

impl Signature {
    pub(crate) fn of(path: &Path, proto: &pb::ModelProto) -> Result<Signature> {
        let not = |reason: String| Error::NotAClassifier {
            path: path.to_owned(),
            reason,
        };
        let graph = proto.graph.as_ref().ok_or_else(|| not("no graph".into()))?;
        let inits: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .collect();
        if inputs.len() != 1 {
            return Err(not(format!(
                "expected one image input, found {}",
                inputs.len()
            )));
        }
        if graph.output.len() != 1 {
            return Err(not(format!(
                "expected one output (logits), found {}",
                graph.output.len()
            )));
        }
        let input = inputs[0];
        let Some(pb::type_proto::Value::TensorType(tt)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(not(format!("input {:?} is not a tensor", input.name)));
        };
        let input_type = match tt.elem_type {
            1 => InputType::F32,
            10 => InputType::F16,
            other => {
                return Err(not(format!(
                    "input {:?} has element type {other}, need float or float16",
                    input.name
                )))
            }
        };
        let dims: Vec<Option<usize>> = tt
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                            Some(v as usize)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if dims.len() != 4 || dims[1].is_some_and(|c| c != 3) {
            return Err(not(format!(
                "input {:?} has shape {}, need [batch, 3, height, width]",
                input.name,
                fmt_dims(&dims)
            )));
        }
        let batch_symbol = tt.shape.as_ref().and_then(|s| match &s.dim.first()?.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                Some(p.clone())
            }
            _ => None,
        });
        Ok(Signature {
            input_type,
            batch: dims[0],
            batch_symbol,
            height: dims[2],
            width: dims[3],
        })
    }

    fn spatial(&self, path: &Path, input_size: Option<usize>) -> Result<(usize, usize)> {
        let too_large = |h: usize, w: usize| h.max(w) > MAX_INPUT_SIDE;
        match (input_size, self.height, self.width) {
            (Some(s), _, _) if too_large(s, s) => Err(Error::Config(format!(
                "input size {s} is over the {MAX_INPUT_SIDE}-pixel limit"
            ))),
            (None, Some(h), Some(w)) if too_large(h, w) => Err(Error::NotAClassifier {
                path: path.to_owned(),
                reason: format!("input {h}x{w} is over the {MAX_INPUT_SIDE}-pixel limit"),
            }),
            (Some(s), _, _) if s > 0 => Ok((s, s)),
            (Some(_), _, _) => Err(Error::Config("--input-size must be positive".into())),
            (None, Some(h), Some(w)) => Ok((h, w)),
            _ => Err(Error::Config(format!(
                "{}: the model's input height/width are dynamic; give an input size",
                path.display()
            ))),
        }
    }
}

pub(crate) fn fmt_dims(dims: &[Option<usize>]) -> String {
    let d: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".into(), |v| v.to_string()))
        .collect();
    format!("[{}]", d.join(", "))
}

fn output_classes(path: &Path, typed: &TypedModel) -> Result<usize> {
    let fact = typed.output_fact(0).map_err(|e| Error::Model {
        path: path.to_owned(),
        stage: "type and shape analysis",
        reason: format!("{e:#}"),
    })?;
    let dims: Vec<&TDim> = fact.shape.iter().collect();
    match dims.as_slice() {
        [_, classes] => classes
            .to_i64()
            .ok()
            .map(|c| c as usize)
            .filter(|&c| c > 0)
            .ok_or_else(|| Error::NotAClassifier {
                path: path.to_owned(),
                reason: format!("output class count {classes} is not a fixed number"),
            }),
        _ => Err(Error::NotAClassifier {
            path: path.to_owned(),
            reason: format!("output has shape {:?}, need [batch, classes]", fact.shape),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::qconv::QPointwiseConv;

    /// A quantized model's weights are held once: the plan's integer products keep only
    /// their packed copy, and the typed model kept for other batch sizes holds no constants
    /// left unread when the products copied theirs.
    #[test]
    fn weights_are_held_once() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/fixtures/timm_v1_qdq_pc_u8.onnx"
        ));
        let model = Model::load(path, &LoadOptions::threads(1)).unwrap();
        let products: Vec<&QPointwiseConv> = (model.plan.model().nodes())
            .iter()
            .filter_map(|n| n.op_as::<QPointwiseConv>())
            .collect();
        assert!(!products.is_empty());
        assert!(products.iter().all(|op| !op.holds_weights()));
        let typed = &model.dynamic.as_ref().expect("a dynamic batch").typed;
        assert_eq!(typed.eval_order().unwrap().len(), typed.nodes().len());
    }
}
