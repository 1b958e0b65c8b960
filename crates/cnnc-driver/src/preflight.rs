//! Checks made before `cnnc init`, `run` and `grad` allocate or write anything: whether the
//! memory the command will need fits the budget ([`check_memory`]), and whether an output would
//! overwrite one of the command's own inputs ([`check_output`]).
//!
//! The memory estimate follows what the reference interpreter and the runtime hold at the peak:
//! parameters as f32 (loaded or initialised) and as the interpreter's f64 copy, every layer's
//! output in f64 for the whole batch (the forward pass keeps them all for the backward pass),
//! and, for `grad`, a gradient of each of those and of each parameter; `--dump` adds an f32 copy
//! of everything it saves. `init` holds the
//! parameters and the bytes of the file it writes. It is an estimate, meant to catch the
//! hundreds of gigabytes a typo asks for, not to predict the last megabyte; `--memory-limit`
//! overrides the budget when it is wrong.

use cnnc_ir::Graph;
use cnnc_runtime::{MemoryBudget, human_bytes};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What a command is about to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Initialise every parameter and write them to a file.
    Init,
    /// A forward pass on a batch (the weights loaded or initialised take the same memory);
    /// `passes` when the optimised graph runs (BN-folded weights are a second copy), `dump`
    /// when every layer's output is kept and saved.
    Run { batch: usize, passes: bool, dump: bool },
    /// A forward and a backward pass on a batch; `dump` when every layer's output and
    /// gradient is kept and saved.
    Grad { batch: usize, dump: bool },
}

/// How much memory a task needs, in bytes, and what for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Parameter and buffer values of the model.
    pub values: u64,
    /// Bytes held for the parameters (every copy).
    pub params: u64,
    /// Bytes held for the activations (and their gradients) of the whole batch.
    pub activations: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.params.saturating_add(self.activations)
    }
}

/// A check that failed before anything was allocated or written.
#[derive(Debug, Error)]
pub enum PreflightError {
    #[error(
        "{} needs about {} of memory ({}), more than the {} {}",
        what(.model, *.task),
        human_bytes(.estimate.total()),
        breakdown(.estimate, *.task),
        human_bytes(.budget.bytes),
        .budget.source
    )]
    Memory { model: String, task: Task, estimate: Estimate, budget: MemoryBudget },
    #[error("`{output_flag} {}` is the file given as {flag}: cnnc does not write over its own inputs", .output.display())]
    OutputIsInput { output_flag: &'static str, output: PathBuf, flag: &'static str },
    #[error("{first} and {second} both name `{}`: each output needs its own file", .output.display())]
    SameOutput { first: &'static str, second: &'static str, output: PathBuf },
    #[error("{first} and {second} would both write to standard output: give one of them a file")]
    TwoOnStdout { first: &'static str, second: &'static str },
}

fn what(model: &str, task: Task) -> String {
    match task {
        Task::Init => format!("initialising model `{model}`"),
        Task::Run { batch, .. } => format!("running model `{model}` on a batch of {batch}"),
        Task::Grad { batch, .. } => format!("the gradients of model `{model}` on a batch of {batch}"),
    }
}

fn breakdown(estimate: &Estimate, task: Task) -> String {
    let params =
        format!("{} for its {} parameter values", human_bytes(estimate.params), crate::thousands(estimate.values));
    match task {
        Task::Init => format!("{params} and the file that holds them"),
        Task::Run { .. } | Task::Grad { .. } => {
            format!("{params}, {} for the outputs of its layers", human_bytes(estimate.activations))
        }
    }
}

/// The memory `task` needs on `graph` (see the module documentation), saturating rather than
/// overflowing on absurd sizes.
pub fn estimate(graph: &Graph, task: Task) -> Estimate {
    let values: u64 = graph.named_params().iter().map(|(_, spec)| spec.elements() as u64).fold(0, u64::saturating_add);
    let elements: u64 = graph.iter().map(|(_, n)| n.shape.elements() as u64).fold(0, u64::saturating_add);
    let times = |a: u64, b: u64| a.saturating_mul(b);
    let (params, activations) = match task {
        // The f32 tensors, and the file's bytes, built in memory before they are written.
        Task::Init => (times(values, 8), 0),
        // f32 (loaded or initialised) and the interpreter's f64 copy; every output in f64.
        // A dump adds an f32 copy of every output.
        Task::Run { batch, passes, dump } => {
            let folded = if passes { 4 } else { 0 };
            let per_element = if dump { 12 } else { 8 };
            (times(values, 12 + folded), times(times(elements, batch as u64), per_element))
        }
        // The same, with an f64 gradient of every output and parameter and the f32 results; a
        // dump adds f32 copies of the outputs, their gradients and the parameters' gradients.
        Task::Grad { batch, dump } => {
            let (param_bytes, per_element) = if dump { (28, 24) } else { (24, 16) };
            (times(values, param_bytes), times(times(elements, batch as u64), per_element))
        }
    };
    Estimate { values, params, activations }
}

/// An error when `task` on `graph` needs more memory than `budget` allows.
pub fn check_memory(graph: &Graph, task: Task, budget: &MemoryBudget) -> Result<(), PreflightError> {
    let estimate = estimate(graph, task);
    if budget.allows(estimate.total()) {
        Ok(())
    } else {
        Err(PreflightError::Memory { model: graph.name.clone(), task, estimate, budget: *budget })
    }
}

/// An error when `output` (`-o`) is one of the files the command reads (`inputs`: the flag
/// that names each, with its path): `cnnc grad -o w.safetensors --weights w.safetensors` would
/// replace the weights with their gradients. Standard output and files that do not exist yet
/// are never inputs.
pub fn check_output(output: &Path, inputs: &[(&'static str, &Path)]) -> Result<(), PreflightError> {
    check_outputs(&[("-o", output)], inputs)
}

/// [`check_output`] for every output of a command (each with its flag), and that no two
/// outputs are the same file and at most one is standard output.
pub fn check_outputs(
    outputs: &[(&'static str, &Path)],
    inputs: &[(&'static str, &Path)],
) -> Result<(), PreflightError> {
    for (k, &(output_flag, output)) in outputs.iter().enumerate() {
        for &(first, earlier) in &outputs[..k] {
            match (cnnc_runtime::is_stdout(earlier), cnnc_runtime::is_stdout(output)) {
                (true, true) => return Err(PreflightError::TwoOnStdout { first, second: output_flag }),
                (false, false) if earlier == output || same_file(earlier, output) => {
                    return Err(PreflightError::SameOutput {
                        first,
                        second: output_flag,
                        output: output.to_path_buf(),
                    });
                }
                _ => {}
            }
        }
        if cnnc_runtime::is_stdout(output) {
            continue;
        }
        if let Some((flag, _)) = inputs.iter().find(|(_, input)| same_file(output, input)) {
            return Err(PreflightError::OutputIsInput { output_flag, output: output.to_path_buf(), flag });
        }
    }
    Ok(())
}

/// Whether two paths name the same existing file (through links, `./`, `..`).
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_ir::{Fc, Op, Shape};

    /// input [F] -> fc(out).
    fn fc(features: usize, out: usize) -> Graph {
        let mut g = Graph::new("wide");
        let x = g.add_input("x", Shape(vec![features]), Default::default()).unwrap();
        let (y, _) = g.add(Op::Fc(Fc { out_features: out, bias: true }), vec![x], "fc", Default::default()).unwrap();
        g.outputs.push(y);
        g
    }

    #[test]
    fn estimates_count_every_copy() {
        // 4 * 3 weights and 3 biases; 4 + 3 output elements per image.
        let g = fc(4, 3);
        assert_eq!(estimate(&g, Task::Init), Estimate { values: 15, params: 120, activations: 0 });
        let run = estimate(&g, Task::Run { batch: 2, passes: false, dump: false });
        assert_eq!(run, Estimate { values: 15, params: 180, activations: 2 * 7 * 8 });
        assert_eq!(estimate(&g, Task::Run { batch: 2, passes: true, dump: false }).params, 15 * 16);
        assert_eq!(estimate(&g, Task::Run { batch: 2, passes: false, dump: true }).activations, 2 * 7 * 12);
        assert_eq!(estimate(&g, Task::Grad { batch: 2, dump: false }).total(), 15 * 24 + 2 * 7 * 16);
        assert_eq!(estimate(&g, Task::Grad { batch: 2, dump: true }).total(), 15 * 28 + 2 * 7 * 24);
        // Absurd sizes saturate instead of overflowing.
        let e = estimate(&g, Task::Grad { batch: usize::MAX, dump: false });
        assert_eq!(e.activations, u64::MAX);
    }

    #[test]
    fn too_much_is_an_error_that_says_how_much() {
        let g = fc(1 << 20, 1 << 16);
        let budget = MemoryBudget::set(1 << 30);
        let e = check_memory(&g, Task::Init, &budget).unwrap_err();
        assert_eq!(
            e.to_string(),
            "initialising model `wide` needs about 512.0 GiB of memory (512.0 GiB for its 68,719,542,272 parameter \
             values and the file that holds them), more than the 1.0 GiB allowed by --memory-limit"
        );
        let e =
            check_memory(&fc(10, 10), Task::Run { batch: 1 << 30, passes: false, dump: false }, &budget).unwrap_err();
        assert!(
            e.to_string().starts_with("running model `wide` on a batch of 1073741824 needs about 160.0 GiB"),
            "{e}"
        );
        assert!(check_memory(&fc(10, 10), Task::Grad { batch: 8, dump: true }, &budget).is_ok());
    }

    #[test]
    fn outputs_over_inputs_are_refused() {
        let dir = tempfile_dir();
        let w = dir.join("w.safetensors");
        std::fs::write(&w, b"w").unwrap();
        let same = dir.join(".").join("w.safetensors");
        let e = check_output(&same, &[("--input", Path::new("x.npy")), ("--weights", &w)]).unwrap_err();
        assert!(
            e.to_string().ends_with("is the file given as --weights: cnnc does not write over its own inputs"),
            "{e}"
        );
        assert!(check_output(&dir.join("g.safetensors"), &[("--weights", &w)]).is_ok(), "a new file");
        assert!(check_output(Path::new("-"), &[("--weights", Path::new("-"))]).is_ok(), "standard output");
        #[cfg(unix)]
        {
            let link = dir.join("link.safetensors");
            std::os::unix::fs::symlink(&w, &link).unwrap();
            assert!(check_output(&link, &[("--weights", &w)]).is_err(), "through a symlink");
        }
        let (g, d) = (dir.join("g.safetensors"), dir.join("d.safetensors"));
        assert!(check_outputs(&[("-o", &g), ("--dump", &d)], &[("--weights", &w)]).is_ok());
        let e = check_outputs(&[("-o", &g), ("--dump", &g)], &[]).unwrap_err();
        assert!(e.to_string().starts_with("-o and --dump both name `"), "{e}");
        let e = check_outputs(&[("-o", Path::new("-")), ("--dump", Path::new("/dev/stdout"))], &[]).unwrap_err();
        assert!(e.to_string().starts_with("-o and --dump would both write to standard output"), "{e}");
        let e = check_outputs(&[("-o", &g), ("--state-out", &w)], &[("--weights", &w)]).unwrap_err();
        assert!(e.to_string().starts_with("`--state-out "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-preflight-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
