//! `cnnc demo` (also what `cnnc` with no command runs): the driver's demo with the training's
//! progress bar, its text printed as each part finishes.

use crate::Failure;
use crate::train::Progress;
use clap::Args;
use cnnc_driver::demo::{self, DemoError, DemoOptions};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug, Default)]
pub(crate) struct DemoArgs {
    /// The directory for the trained weights and the curves (created when missing; files there
    /// are never overwritten) [default: a new `cnnc-demo` directory here, or `cnnc-demo-2`...].
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Epochs of training [default: cnnc train's, 30].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    epochs: Option<u64>,
}

pub(crate) fn demo(args: &DemoArgs, color: bool) -> Result<(), Failure> {
    let defaults = DemoOptions::default();
    let options = DemoOptions {
        epochs: args.epochs.map_or(defaults.epochs, |e| usize::try_from(e).unwrap_or(usize::MAX)),
        dir: args.output.clone(),
        color,
        ..defaults
    };
    let mut progress = Progress::new(options.epochs);
    // Printed as it comes: a closed pipe only loses the text.
    let result = demo::demo(&options, &mut progress, &mut |text| {
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    });
    progress.finish();
    result.map(drop).map_err(|e| {
        let mut text = format!("error: {e}\n");
        if let Some(hint) = e.hint() {
            text.push_str(&format!("  = help: {hint}\n"));
        }
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        Failure::Quiet(match e {
            DemoError::Source { .. } | DemoError::Exec(_) | DemoError::Train(_) | DemoError::NoData => 1,
            DemoError::Dir { .. } | DemoError::Exists { .. } | DemoError::Write { .. } => 2,
        })
    })
}
