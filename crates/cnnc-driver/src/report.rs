//! `cnnc grad --json`: what a gradient computation read, computed and wrote, as one line of
//! JSON for scripts.
//!
//! ```text
//! {"model":"lenet5","mode":"inference","batch":3,"output":[3,10],"loss":2.3200132846832275,
//!  "loss_fn":"ce","source":"examples/lenet5.cnn","weights":"w.safetensors","seed":null,
//!  "input":"x.npy","target":"y.npy","gradients":"g.safetensors","parameter_tensors":10,
//!  "batch_norms_trained":0}
//! ```
//!
//! `loss` is the batch-mean loss at full f64 precision (the shortest decimal that reads back as
//! the same number), `null` when it is not finite; `weights` is `null` when the parameters were
//! initialised from `seed`, and `seed` is `null` when none was used; `gradients` is `null`
//! without `-o`. Paths are as given on the command line.

use serde::Serialize;
use std::path::Path;

/// The JSON object of `cnnc grad --json`; fields print in declaration order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradReport {
    pub model: String,
    /// `inference` or `training` (`--train`).
    pub mode: &'static str,
    pub batch: usize,
    /// The output's shape, batch first.
    pub output: Vec<usize>,
    /// `null` when not finite (JSON has no NaN or infinity).
    pub loss: Option<f64>,
    /// The `--loss` name.
    pub loss_fn: &'static str,
    pub source: String,
    pub weights: Option<String>,
    pub seed: Option<u64>,
    pub input: String,
    pub target: String,
    pub gradients: Option<String>,
    /// The `--dump` file.
    pub dump: Option<String>,
    /// The `--state-out` file.
    pub state: Option<String>,
    /// Parameter tensors in the gradient file (the input's gradient not counted).
    pub parameter_tensors: usize,
    /// Batch-norm layers that used batch statistics (`--train`).
    pub batch_norms_trained: usize,
}

/// A path as it goes into the report.
pub fn path_text(path: &Path) -> String {
    path.display().to_string()
}

impl GradReport {
    /// The report as one line of JSON, newline-terminated.
    pub fn to_json(&self) -> String {
        // Strings, integers, finite floats and lists of them always serialise.
        let mut json = serde_json::to_string(self).unwrap_or_default();
        json.push('\n');
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(loss: f64) -> GradReport {
        GradReport {
            model: "lenet5".into(),
            mode: "inference",
            batch: 3,
            output: vec![3, 10],
            loss: loss.is_finite().then_some(loss),
            loss_fn: "ce",
            source: "examples/lenet5.cnn".into(),
            weights: None,
            seed: Some(1),
            input: "x.npy".into(),
            target: "y.npy".into(),
            gradients: Some(path_text(Path::new("g.safetensors"))),
            dump: None,
            state: None,
            parameter_tensors: 10,
            batch_norms_trained: 0,
        }
    }

    #[test]
    fn one_line_in_declaration_order_with_the_loss_in_full() {
        let loss = 2.320_013_284_683_227_5_f64;
        let json = report(loss).to_json();
        assert_eq!(
            json,
            "{\"model\":\"lenet5\",\"mode\":\"inference\",\"batch\":3,\"output\":[3,10],\"loss\":2.3200132846832275,\
             \"loss_fn\":\"ce\",\"source\":\"examples/lenet5.cnn\",\"weights\":null,\"seed\":1,\"input\":\"x.npy\",\
             \"target\":\"y.npy\",\"gradients\":\"g.safetensors\",\"dump\":null,\"state\":null,\"parameter_tensors\":10,\
             \"batch_norms_trained\":0}\n"
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["loss"].as_f64(), Some(loss), "the loss reads back exactly");
        assert_eq!(report(f64::NAN).to_json().matches("\"loss\":null").count(), 1);
    }
}
