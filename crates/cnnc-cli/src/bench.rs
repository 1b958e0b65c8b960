//! `cnnc bench`: the arguments and the report around `cnnc_driver::bench`, which compiles the
//! model on the JIT and times it.

use crate::{Failure, ModeArg, ModelArgs, lower_one, notify};
use clap::Args;
use cnnc_driver::bench::{BenchOptions, bench_json, bench_table};
use cnnc_driver::{MemoryBudget, Task, check_memory};

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The batch size the code is compiled for and run at.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    batch: u64,
    /// Threads to run on [default: CNNC_THREADS, else every CPU]; the peak is measured on as
    /// many.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// The JIT's kernel mode [default: native where the CPU has AVX2 or AVX-512].
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Time a training step (forward, backward, SGD update; cross-entropy for a classifier,
    /// mean squared error otherwise) instead of inference.
    #[arg(long)]
    train: bool,
    /// Whole runs to time, and as many step-by-step runs for the layers [default: as many as
    /// fit in about a second, 3 to 200].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    iters: Option<u64>,
    /// The seed of the parameters, the input batch and the targets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the report as one line of JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Wait at most this many seconds, before timing, for other processes to leave the CPUs
    /// idle (as ONNX Runtime's and PyTorch's benchmark tools do).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    wait_idle: Option<u64>,
    /// Run every 3x3 convolution on the direct kernel, none as Winograd (which the JIT chooses
    /// where it is faster, at a slightly different rounding).
    #[arg(long)]
    no_winograd: bool,
}

/// Compiles and times the model; the table or the JSON on stdout, notes on stderr.
pub(crate) fn bench(args: &BenchArgs, budget: &MemoryBudget, color: bool, out: &mut String) -> Result<(), Failure> {
    let cancel = crate::cancel_on_ctrl_c();
    let graph = lower_one(&args.model, color)?;
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let task =
        if args.train { Task::Grad { batch, dump: false } } else { Task::Run { batch, passes: true, dump: false } };
    check_memory(&graph, task, budget)?;
    let options = BenchOptions {
        batch,
        threads: args.threads.map(|t| usize::try_from(t).unwrap_or(usize::MAX)),
        mode: crate::jit_mode(args.mode),
        train: args.train,
        rounds: args.iters.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        seed: args.seed,
        wait_idle: args.wait_idle.map(std::time::Duration::from_secs),
        winograd: !args.no_winograd,
    };
    let outcome = cnnc_driver::bench::bench(&graph, &options, Some(&cancel)).map_err(crate::run_failure)?;
    notify(&outcome.peak.note.iter().map(|n| format!("note: {n}")).collect::<Vec<_>>());
    out.push_str(&if args.json { bench_json(&outcome) } else { bench_table(&outcome) });
    Ok(())
}
