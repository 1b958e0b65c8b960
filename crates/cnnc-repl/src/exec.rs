//! The commands that put numbers through the current model on the JIT: `:run`, `:bench`,
//! `:grad`, `:weights` and `:viz`. Every model is compiled for the batch at hand; the weights
//! are the session's (loaded, trained, or initialised from seed 0 the first time a model runs,
//! with the tensors of layers added since then initialised the same way).
//!
//! Each command runs with the session's cancel token (Ctrl-C): the JIT checks it between
//! compiling's phases and kernel steps, `:bench` between rounds and layers, and a cancelled
//! command prints `cancelled` and leaves the session as it was (weights initialised for it
//! are kept only when it succeeds).

use crate::commands::usage;
use crate::session::{Io, Session, Status, Weights};
use cnnc_driver::execute::{self, Backend, ExecError, JitMode, Target, Tensor, TensorMap, WeightsOptions};
use cnnc_driver::{Mode, Pass, Task, check_memory, render_exec_error, viz};
use cnnc_ir::Graph;
use cnnc_runtime::Rng;
use std::path::Path;
use std::time::Instant;

/// The seed of initial weights and of `:run random`.
const SEED: u64 = 0;

/// `:run [X.npy|random]`: the last input again when none is given (a random one the first time).
pub fn run(session: &mut Session, args: &[&str], io: &mut dyn Io) -> Status {
    let Some(graph) = session.current(io) else { return Status::Failed };
    let result = (|| {
        let input = match args {
            [] => last_or_random(session, &graph)?,
            ["random"] => random_input(session, &graph)?,
            [path] => load_input(session, &graph, Path::new(path), io)?,
            _ => return Ok(usage("expected one argument, X.npy or `random`", io)),
        };
        let batch = input.shape[0];
        check_memory(&graph, Task::Run { batch, passes: true, dump: false }, &session.budget)?;
        let params = params_for(session, &graph, io)?;
        working(&graph, "running", io);
        let x = normalized(session, &graph, &input);
        let (model, compile_ms) = compiled(session, &graph, &params, batch)?;
        // The first run also starts the thread pool; the time shown is the second's.
        model.forward(&x)?;
        let began = Instant::now();
        let output = model.forward(&x)?;
        let run_ms = began.elapsed().as_secs_f64() * 1e3;
        let compile = compile_ms.map_or_else(|| "compiled before".to_string(), |ms| format!("compile {ms:.1} ms"));
        let mut text = format!(
            "output {:?}  (JIT {}: {compile}, run {run_ms:.3} ms after a warm-up)\n",
            output.shape,
            model.mode().name()
        );
        match execute::top_classes(&graph, &output, 5) {
            Some(top) => {
                for (image, classes) in top.iter().enumerate().take(execute::MAX_LISTED_IMAGES) {
                    let listed: Vec<String> = classes.iter().map(|(c, p)| format!("{c}: {p:.4}")).collect();
                    text.push_str(&format!("  image {image}  top-{}  {}\n", classes.len(), listed.join("  ")));
                }
            }
            None => text.push_str(&stats(&output.data)),
        }
        io.out(&text);
        params.keep(session);
        session.last_input = Some(input);
        Ok(Status::Ok)
    })();
    finish(result, io)
}

/// `:bench [ROUNDS]`: `cnnc bench` on the current model at the last input's batch size (1
/// without one): compile time, per-layer times and their share of the machine's peak (measured
/// once and cached, as `cnnc bench` does). Timing does not depend on the values, so the driver's
/// seeded weights and input stand in for the session's.
pub fn bench(session: &mut Session, args: &[&str], io: &mut dyn Io) -> Status {
    let rounds = match args {
        [] => 20,
        [n] => match n.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => return usage("ROUNDS is a whole number from 1 to 10000", io),
        },
        _ => return usage("expected at most one argument, ROUNDS", io),
    };
    let Some(graph) = session.current(io) else { return Status::Failed };
    let result = (|| {
        let batch = session.last_input.as_ref().filter(|x| fits(&graph, x)).map_or(1, |x| x.shape[0]);
        check_memory(&graph, Task::Run { batch, passes: true, dump: false }, &session.budget)?;
        working(&graph, "timing", io);
        let options = cnnc_driver::bench::BenchOptions {
            batch,
            threads: None,
            mode: JitMode::host_default(),
            train: false,
            rounds: Some(rounds),
            seed: SEED,
            wait_idle: None,
            winograd: true,
        };
        let outcome = cnnc_driver::bench::bench(&graph, &options, Some(&session.cancel))?;
        io.out(&cnnc_driver::bench::bench_table(&outcome));
        Ok(Status::Ok)
    })();
    finish(result, io)
}

/// `:grad [CLASS]`: the cross-entropy of the last input against CLASS (0 by default) and the
/// size of every gradient.
pub fn grad(session: &mut Session, args: &[&str], io: &mut dyn Io) -> Status {
    let Some(graph) = session.current(io) else { return Status::Failed };
    let class = match args {
        [] => 0,
        [c] => match c.parse::<usize>() {
            Ok(c) => c,
            Err(_) => return usage("CLASS is a class index, such as 3", io),
        },
        _ => return usage("expected at most one argument, CLASS", io),
    };
    let result = (|| {
        let input = last_or_random(session, &graph)?;
        let batch = input.shape[0];
        let Some(classes) = execute::classes_of(&graph) else {
            io.err("error: `:grad` takes a classifier (an output of class scores)\n");
            return Ok(Status::Failed);
        };
        if class >= classes {
            return Ok(usage(&format!("class {class} is out of range for {classes} classes"), io));
        }
        check_memory(&graph, Task::Grad { batch, dump: false }, &session.budget)?;
        let params = params_for(session, &graph, io)?;
        let x = normalized(session, &graph, &input);
        working(&graph, "differentiating", io);
        let mode = execute::exec_mode(&graph, false, None)?;
        let target = Target::Classes(vec![class; batch]);
        let backend = Backend::Jit(JitMode::host_default());
        let loss = execute::Loss::CrossEntropy;
        let cancel = Some(&session.cancel);
        let outcome = execute::grad(&graph, &params.tensors, &x, &target, loss, mode, false, backend, cancel)?;
        let mut text = format!("loss {:.6} (cross-entropy against class {class}, mean over {batch})\n", outcome.loss);
        text.push_str(&format!("  {:<28} {:>16} {:>12} {:>12}\n", "gradient of", "shape", "L2 norm", "max |g|"));
        for (name, g) in &outcome.grads {
            let norm = g.data.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
            let max = g.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            text.push_str(&format!("  {:<28} {:>16} {norm:>12.4e} {max:>12.4e}\n", name, format!("{:?}", g.shape)));
        }
        io.out(&text);
        params.keep(session);
        Ok(Status::Ok)
    })();
    finish(result, io)
}

/// `:weights FILE`: weights for the current model, checked against it.
pub fn weights(session: &mut Session, path: &Path, io: &mut dyn Io) -> Status {
    let Some(graph) = session.current(io) else { return Status::Failed };
    let result = (|| {
        let options = WeightsOptions { allow_extra: false, limit: session.budget.bytes };
        let (tensors, metadata, warnings) = execute::load_weights_with_metadata(&graph, path, options)?;
        for w in warnings {
            io.err(&format!("warning: {w}\n"));
        }
        let normalization = execute::input_normalization(&graph, path, &metadata)?;
        io.out(&format!(
            "loaded {} tensors of model `{}` from `{}`{}\n",
            tensors.len(),
            graph.name,
            path.display(),
            if normalization.is_some() { ", with the input normalisation it was trained with" } else { "" }
        ));
        let generation = session.next_generation();
        let weights = Weights { model: graph.name.clone(), tensors, normalization, generation };
        session.weights.insert(graph.name.clone(), weights);
        Ok(Status::Ok)
    })();
    finish(result, io)
}

/// `:viz filters LAYER FILE.png` and `:viz maps LAYER FILE.png`.
pub fn viz(session: &mut Session, args: &[&str], io: &mut dyn Io) -> Status {
    let (what, layer, path) = match args {
        [what @ ("filters" | "maps"), layer, path] => (*what, *layer, Path::new(path)),
        _ => return usage("expected `filters` or `maps`, a LAYER and a FILE.png", io),
    };
    let Some(graph) = session.current(io) else { return Status::Failed };
    let result = (|| {
        check_memory(&graph, Task::Init, &session.budget)?;
        let params = params_for(session, &graph, io)?;
        let (picture, said) = if what == "filters" {
            let weight = viz::conv_weight(&graph, &params.tensors, layer)?;
            let picture = viz::filters(weight)?;
            let dims = &weight.shape;
            let over = crate::session::plural(dims[1], "input channel");
            let said = format!("{} kernels of `{layer}` ({}x{} over {over})", picture.tiles, dims[2], dims[3]);
            (picture, said)
        } else {
            viz::find_layer(&graph, layer)?;
            let input = match session.last_input.clone().filter(|x| fits(&graph, x)) {
                Some(x) => x,
                None => {
                    io.err("note: no input has run yet: using a random one (`:run X.npy` sets it)\n");
                    random_input(session, &graph)?
                }
            };
            working(&graph, "running", io);
            let maps = layer_output(session, &graph, &params.tensors, &input, layer)?;
            let picture = viz::maps(layer, &maps)?;
            let said =
                format!("{} feature maps of `{layer}` {:?}, image 0 of the last input", picture.tiles, maps.shape);
            (picture, said)
        };
        viz::write_png(path, &picture)?;
        let cut = if picture.tiles < picture.of {
            format!(" (the first {} of {})", picture.tiles, picture.of)
        } else {
            String::new()
        };
        io.out(&format!("wrote `{}`: {said}{cut}, {}x{} pixels\n", path.display(), picture.width, picture.height));
        params.keep(session);
        Ok(Status::Ok)
    })();
    finish(result, io)
}

/// The status line while a command compiles and runs a model (the next output clears it): on a
/// terminal it says what is going on and how to stop it.
fn working(graph: &Graph, doing: &str, io: &mut dyn Io) {
    io.status(&format!("{doing} `{}` on the JIT (Ctrl-C cancels)", graph.name));
}

/// Why a command that runs a model failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Exec(ExecError),
    Viz(viz::VizError),
    /// Already printed.
    Reported,
}

impl From<ExecError> for Failure {
    fn from(e: ExecError) -> Failure {
        Failure::Exec(e)
    }
}

impl From<cnnc_driver::PreflightError> for Failure {
    fn from(e: cnnc_driver::PreflightError) -> Failure {
        Failure::Exec(e.into())
    }
}

impl From<cnnc_jit::JitError> for Failure {
    fn from(e: cnnc_jit::JitError) -> Failure {
        Failure::Exec(e.into())
    }
}

impl From<viz::VizError> for Failure {
    fn from(e: viz::VizError) -> Failure {
        Failure::Viz(e)
    }
}

/// Prints a failure; the session goes on.
pub(crate) fn finish(result: Result<Status, Failure>, io: &mut dyn Io) -> Status {
    match result {
        Ok(status) => status,
        Err(Failure::Exec(e)) => {
            io.err(&render_exec_error(&e));
            Status::Failed
        }
        Err(Failure::Reported) => Status::Failed,
        Err(Failure::Viz(e)) => {
            let hint = e.hint().map_or(String::new(), |h| format!("  = help: {h}\n"));
            io.err(&format!("error: {e}\n{hint}"));
            Status::Failed
        }
    }
}

/// The weights a command runs a model with, and the session's entry for them when it has
/// none that fits yet: [`Params::keep`] stores it once the command has succeeded, so that a
/// cancelled or failed command leaves the session's weights as they were.
pub(crate) struct Params {
    pub tensors: TensorMap,
    /// The weights generation of `tensors` (for the compiled model's key).
    pub generation: u64,
    new_entry: Option<Weights>,
}

impl Params {
    /// Keeps weights initialised for the command in the session.
    pub fn keep(self, session: &mut Session) {
        if let Some(weights) = self.new_entry {
            session.weights.insert(weights.model.clone(), weights);
        }
    }
}

/// The session's weights for `graph`: those it has for the model, with any tensor they lack
/// (a layer added since) initialised from the seed; or all of them from the seed the first time.
pub(crate) fn params_for(session: &mut Session, graph: &Graph, io: &mut dyn Io) -> Result<Params, ExecError> {
    let (tensors, normalization, unchanged) = match session.weights.get(&graph.name) {
        // The weights fit as they are: nothing to draw.
        Some(w) if cnnc_runtime::check_weights(graph, &w.tensors).is_ok() => {
            (w.tensors.clone(), w.normalization.clone(), Some(w.generation))
        }
        Some(w) => {
            let (tensors, report) = cnnc_driver::train::init_from(graph, &w.tensors, SEED)?;
            let fresh = report.initialised.len() + report.reshaped.len();
            if fresh > 0 {
                let tensors = crate::session::plural(fresh, "tensor");
                io.err(&format!("note: {tensors} new since the weights were set, initialised from seed {SEED}\n"));
            }
            (tensors, w.normalization.clone(), (fresh == 0 && report.ignored.is_empty()).then_some(w.generation))
        }
        None => {
            io.err(&format!(
                "note: weights of `{}` initialised from seed {SEED} (He/Xavier); `:weights FILE` or `:train` sets them\n",
                graph.name
            ));
            (execute::init_weights(graph, SEED)?, None, None)
        }
    };
    if let Some(generation) = unchanged {
        return Ok(Params { tensors, generation, new_entry: None });
    }
    let generation = session.next_generation();
    let weights = Weights { model: graph.name.clone(), tensors: tensors.clone(), normalization, generation };
    Ok(Params { tensors, generation, new_entry: Some(weights) })
}

/// A compiled model and what it was compiled from.
#[derive(Debug)]
pub(crate) struct CachedModel {
    /// The graph's text form, the batch and the weights generation.
    key: (String, usize, u64),
    model: cnnc_jit::CompiledModel,
}

/// The current model compiled by the JIT for `batch` with `params` (the session's weights),
/// reused from the last command when nothing changed; the compile time when it compiled.
fn compiled<'s>(
    session: &'s mut Session,
    graph: &Graph,
    params: &Params,
    batch: usize,
) -> Result<(&'s cnnc_jit::CompiledModel, Option<f64>), Failure> {
    let key = (cnnc_ir::print(graph), batch, params.generation);
    let mut took = None;
    if session.compiled.as_ref().is_none_or(|c| c.key != key) {
        session.compiled = None;
        let began = Instant::now();
        let params = &params.tensors;
        let opt = cnnc_driver::optimize_forward(graph, None, Pass::ALL, Mode::Inference).map_err(ExecError::Passes)?;
        let cancel = Some(&session.cancel);
        let model = execute::compile(&opt.plan, batch, JitMode::host_default(), params, cancel)?;
        took = Some(began.elapsed().as_secs_f64() * 1e3);
        session.compiled = Some(CachedModel { key, model });
    }
    match &session.compiled {
        Some(cached) => Ok((&cached.model, took)),
        None => Err(Failure::Exec(cnnc_jit::JitError::Usage("no compiled model".into()).into())),
    }
}

/// The last input when it still fits the model, else [`random_input`].
fn last_or_random(session: &Session, graph: &Graph) -> Result<Tensor, Failure> {
    match session.last_input.clone().filter(|x| fits(graph, x)) {
        Some(x) => Ok(x),
        None => random_input(session, graph),
    }
}

/// One image of uniform noise in [0, 1), the same every time; refused, before anything is
/// allocated, when the model cannot run on one image within the memory budget.
pub(crate) fn random_input(session: &Session, graph: &Graph) -> Result<Tensor, Failure> {
    check_memory(graph, Task::Run { batch: 1, passes: true, dump: false }, &session.budget)?;
    let mut shape = vec![1];
    shape.extend_from_slice(&graph[graph.inputs[0]].shape.0);
    let mut rng = Rng::seed_from_u64(SEED);
    let n: usize = shape.iter().product();
    Ok(Tensor { shape, data: (0..n).map(|_| rng.next_f64() as f32).collect() })
}

/// Whether a batch fits the model's input (an earlier input may not, after the model changed).
fn fits(graph: &Graph, x: &Tensor) -> bool {
    x.shape.get(1..) == Some(graph[graph.inputs[0]].shape.0.as_slice())
}

fn load_input(session: &Session, graph: &Graph, path: &Path, io: &mut dyn Io) -> Result<Tensor, Failure> {
    let (input, warnings) = match execute::load_input(graph, path, &session.budget) {
        Ok(loaded) => loaded,
        // The driver's hint names the CLI's `--shape`; here the input line sets the size.
        Err(e @ ExecError::InputShape { .. }) => {
            let ExecError::InputShape { found, .. } = &e else { unreachable!("matched above") };
            let dims: Vec<String> = found.iter().skip(1).map(ToString::to_string).collect();
            let name = &graph[graph.inputs[0]].name;
            io.err(&format!(
                "error: {e}\n  = help: to run the model at the input's size, change its input: `input {name}: [{}]`\n",
                dims.join(", ")
            ));
            return Err(Failure::Reported);
        }
        Err(e) => return Err(e.into()),
    };
    for w in warnings {
        io.err(&format!("warning: {w}\n"));
    }
    Ok(input)
}

/// The input as the weights were trained to see it.
pub(crate) fn normalized(session: &Session, graph: &Graph, input: &Tensor) -> Tensor {
    let mut x = input.clone();
    if let Some(n) = session.weights.get(&graph.name).and_then(|w| w.normalization.as_ref()) {
        execute::normalize_input(n, &mut x);
    }
    x
}

/// Image 0's output of `layer` on `input`, `[C, H, W]`.
fn layer_output(
    session: &Session,
    graph: &Graph,
    params: &TensorMap,
    input: &Tensor,
    layer: &str,
) -> Result<Tensor, Failure> {
    let x = normalized(session, graph, input);
    check_memory(graph, Task::Run { batch: x.shape[0], passes: false, dump: true }, &session.budget)?;
    let mode = execute::exec_mode(graph, false, None)?;
    // Without passes, so that every layer's output exists (fusion would hide a conv's own
    // output inside the conv + activation node).
    let backend = Backend::Jit(JitMode::host_default());
    let outcome = execute::run(graph, params, &x, mode, &[], true, backend, Some(&session.cancel))?;
    let all = outcome.dump.and_then(|mut d| d.remove(layer)).ok_or(viz::VizError::NoOutput { layer: layer.into() })?;
    Ok(viz::image_of(layer, &all, 0)?)
}

/// For outputs that are not class scores: their range and mean.
fn stats(data: &[f32]) -> String {
    let finite: Vec<f64> = data.iter().filter(|v| v.is_finite()).map(|&v| f64::from(v)).collect();
    if finite.is_empty() {
        return "  values: none finite\n".into();
    }
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
    format!("  values: min {min:.6}, max {max:.6}, mean {mean:.6}\n")
}
