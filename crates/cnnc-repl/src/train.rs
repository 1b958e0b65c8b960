//! `:train [epochs=N batch=N lr=X optimizer=sgd|adam data=digits|DIR seed=N limit=N]`: a short
//! run of the training loop of `cnnc train` on the JIT, from the session's weights, with a live
//! loss line and a line per epoch; the trained weights stay in the session. Ctrl-C stops it at
//! the next step, keeping what was trained so far.

use crate::commands::usage;
use crate::exec::{Failure, finish, params_for};
use crate::session::{Io, Session, Status, Weights};
use cnnc_driver::execute::{self, ExecError, JitMode};
use cnnc_driver::train::{self, EpochRecord, JitStepper, Observer, Schedule, Start, StepProgress, TrainSettings};
use cnnc_driver::train_data::DataBatches;
use cnnc_driver::{Task, check_memory};
use cnnc_ir::{Adam, Loss, Optimizer, Sgd};
use std::path::PathBuf;
use std::sync::Arc;

/// What `:train` was asked for.
#[derive(Clone, Debug, PartialEq)]
struct Request {
    epochs: usize,
    batch: usize,
    lr: Option<f64>,
    adam: bool,
    data: String,
    seed: u64,
    /// Train on the first this many training images only (a quick look).
    limit: Option<usize>,
}

fn parse(args: &[&str]) -> Result<Request, String> {
    let mut r = Request { epochs: 1, batch: 32, lr: None, adam: false, data: "digits".into(), seed: 0, limit: None };
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(format!("expected KEY=VALUE, such as `epochs=2`, found `{arg}`"));
        };
        let whole = |max: usize| match value.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!("`{key}` is a whole number from 1 to {max}, found `{value}`")),
        };
        match key {
            "epochs" => r.epochs = whole(1000)?,
            "batch" => r.batch = whole(65_536)?,
            "limit" => r.limit = Some(whole(usize::MAX)?),
            "seed" => r.seed = value.parse().map_err(|_| format!("`seed` is a whole number, found `{value}`"))?,
            "lr" => match value.parse::<f64>() {
                Ok(lr) if lr.is_finite() && lr > 0.0 => r.lr = Some(lr),
                _ => return Err(format!("`lr` is a number above zero, found `{value}`")),
            },
            "optimizer" => match value {
                "sgd" => r.adam = false,
                "adam" => r.adam = true,
                _ => return Err(format!("`optimizer` is `sgd` or `adam`, found `{value}`")),
            },
            "data" => r.data = value.to_string(),
            _ => return Err(format!("unknown setting `{key}` (epochs, batch, lr, optimizer, data, seed, limit)")),
        }
    }
    Ok(r)
}

pub fn train(session: &mut Session, args: &[&str], io: &mut dyn Io) -> Status {
    let request = match parse(args) {
        Ok(r) => r,
        Err(message) => return usage(&message, io),
    };
    let Some(graph) = session.current(io) else { return Status::Failed };
    let result = (|| {
        let source = match request.data.as_str() {
            "digits" => cnnc_data::Source::Digits,
            dir => cnnc_data::Source::Dir(PathBuf::from(dir)),
        };
        let mut split = cnnc_data::open(&source, session.budget.bytes).map_err(ExecError::Data)?;
        if let Some(n) = request.limit {
            split.train = first(split.train, n);
        }
        let input = graph[graph.inputs[0]].shape.0.clone();
        let Some(classes) = execute::classes_of(&graph) else {
            io.err("error: `:train` trains classifiers (an output of class scores) with cross-entropy\n");
            return Ok(Status::Failed);
        };
        split.check_model(&input, Some(classes)).map_err(ExecError::Data)?;
        check_memory(&graph, Task::Grad { batch: request.batch, dump: false }, &session.budget)?;
        let optimizer = if request.adam {
            Optimizer::Adam(Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })
        } else {
            Optimizer::Sgd(Sgd { momentum: 0.9, weight_decay: 5e-4, nesterov: false })
        };
        let settings = TrainSettings {
            loss: Loss::CrossEntropy,
            optimizer,
            lr: request.lr.unwrap_or(if request.adam { 1e-3 } else { 0.05 }),
            schedule: Schedule::Cosine,
            epochs: request.epochs,
            batch: request.batch,
            seed: request.seed,
            frozen: Default::default(),
        };
        let state = params_for(session, &graph, io)?.tensors;
        // The normalisation of the weights when they have one (so a second `:train` goes on
        // from the first), else fitted to this training set.
        let normalization = session
            .weights
            .get(&graph.name)
            .and_then(|w| w.normalization.clone())
            .unwrap_or_else(|| cnnc_data::Normalization::fit(&split.train));
        let data = DataBatches {
            input,
            train: Arc::new(split.train),
            test: split.test.map(Arc::new),
            batch: settings.batch,
            seed: settings.seed,
            augment: cnnc_data::Augment::default(),
            normalization: Some(normalization.clone()),
        };
        io.out(&format!(
            "training `{}` on {} ({} training images{}), {} of batch {}, {} at lr {}, on the JIT\n",
            graph.name,
            request.data,
            data.train.len(),
            data.test.as_ref().map_or(String::new(), |t| format!(", {} test", t.len())),
            crate::session::plural(settings.epochs, "epoch"),
            settings.batch,
            if request.adam { "Adam" } else { "SGD with momentum 0.9" },
            settings.lr,
        ));
        let mut stepper = JitStepper::new(&graph, &settings, state, JitMode::host_default())?;
        let mut observer = Live { io: &mut *io, epochs: settings.epochs, cancel: session.cancel.clone() };
        let trained = train::train(&mut stepper, &data, &graph.name, &settings, Start::default(), None, &mut observer);
        io.status("");
        let trained = match trained {
            Ok(t) => t,
            Err(train::TrainError::Exec(e)) => return Err(Failure::Exec(e)),
            Err(e) => {
                let hint = e.hint().map_or(String::new(), |h| format!("  = help: {h}\n"));
                io.err(&format!("error: {e}\n{hint}"));
                return Ok(Status::Failed);
            }
        };
        if let Some(at) = trained.interrupted {
            io.out(&format!(
                "interrupted at epoch {}, batch {}: the weights trained so far are kept\n",
                at.epoch + 1,
                at.batch
            ));
        }
        let tensors = train::model_tensors(&graph, &trained.state);
        let generation = session.next_generation();
        let weights = Weights { model: graph.name.clone(), tensors, normalization: Some(normalization), generation };
        session.weights.insert(graph.name.clone(), weights);
        Ok(Status::Ok)
    })();
    finish(result, io)
}

/// The first `n` samples of a data set.
fn first(mut data: cnnc_data::Dataset, n: usize) -> cnnc_data::Dataset {
    let n = n.min(data.len());
    data.images.truncate(n * data.shape.iter().product::<usize>());
    match &mut data.targets {
        cnnc_data::Targets::Classes { labels, .. } => labels.truncate(n),
        cnnc_data::Targets::Values { shape, data } => data.truncate(n * shape.iter().product::<usize>()),
    }
    data
}

/// Reports the run: the loss so far on the status line, one line per epoch.
struct Live<'a> {
    io: &'a mut dyn Io,
    epochs: usize,
    /// The session's token: Ctrl-C stops the loop at its next step.
    cancel: cnnc_runtime::Cancel,
}

impl Observer for Live<'_> {
    fn step(&mut self, p: &StepProgress) {
        let accuracy = p.accuracy.map_or(String::new(), |a| format!("  acc {:.2} %", 100.0 * a));
        self.io.status(&format!(
            "epoch {}/{}  batch {}/{}  loss {:.4}{accuracy}",
            p.epoch, self.epochs, p.batch, p.batches, p.loss
        ));
    }

    fn evaluating(&mut self) {
        self.io.status("evaluating the test set");
    }

    fn epoch(&mut self, r: &EpochRecord) {
        let pct = |a: Option<f64>| a.map_or(String::new(), |a| format!("  acc {:.2} %", 100.0 * a));
        let mut line = format!("epoch {}/{}  loss {:.4}{}", r.epoch, self.epochs, r.train_loss, pct(r.train_accuracy));
        if let Some(loss) = r.test_loss {
            line.push_str(&format!("  test loss {loss:.4}{}", pct(r.test_accuracy).replace("acc", "test acc")));
        }
        self.io.status("");
        self.io.out(&format!("{line}\n"));
    }

    fn stop_requested(&self) -> bool {
        self.cancel.is_requested()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_bad_ones_say_why() {
        let r = parse(&["epochs=2", "batch=16", "optimizer=adam", "lr=0.01", "limit=100"]).expect("parses");
        assert_eq!((r.epochs, r.batch, r.adam, r.lr, r.limit), (2, 16, true, Some(0.01), Some(100)));
        assert!(parse(&["epochs=0"]).unwrap_err().contains("from 1"));
        assert!(parse(&["lr=-1"]).unwrap_err().contains("above zero"));
        assert!(parse(&["speed=3"]).unwrap_err().contains("unknown setting"));
        assert!(parse(&["epochs"]).unwrap_err().contains("KEY=VALUE"));
    }
}
