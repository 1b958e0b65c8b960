//! Shared helpers for cnnc's benchmarks: the example sources, loaded at compile time;
//! generated sources of deep models for measuring how the pipeline scales; the machine's
//! measured limits (`peak`) and the kernel benchmark layers (`layers`).

pub use cnnc_runtime::idle;
pub mod layers;
pub mod peak;

/// The example networks benchmarked end to end, by file name.
pub const EXAMPLES: &[(&str, &str)] = &[("resnet50", include_str!("../../examples/resnet50.cnn"))];

/// The shapes of the generated deep models: each stresses a different part of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deep {
    /// `x -> relu -> relu -> ...`: one long in-place chain (the 200,000-relu model).
    Relus,
    /// Residual units `conv -> bn -> relu -> add(., x) -> relu` on 16 channels: BN folding,
    /// epilogue fusion and one long blocked-layout region.
    Residual,
    /// A convolution, then relus: one blocked-layout region whose edge the layout pass moves
    /// back node by node.
    ConvRelus,
    /// Every node an `add` reading the model input: one value with as many readers as there
    /// are nodes.
    FanOut,
}

impl Deep {
    pub const ALL: [Deep; 4] = [Deep::Relus, Deep::Residual, Deep::ConvRelus, Deep::FanOut];

    pub fn name(self) -> &'static str {
        match self {
            Deep::Relus => "relus",
            Deep::Residual => "residual",
            Deep::ConvRelus => "conv_relus",
            Deep::FanOut => "fan_out",
        }
    }

    /// The source of a model of this shape with about `nodes` nodes (input included).
    pub fn source(self, nodes: usize) -> String {
        match self {
            Deep::Relus => {
                format!("model relus {{\n    input x: [16, 4, 4]\n    x -> for i in 0..{} {{ relu }}\n}}\n", nodes - 1)
            }
            Deep::Residual => format!(
                "block unit {{\n    input x\n    let y = x -> conv(16, k=3, pad=1, bias=false) -> bn -> relu\n    add(y, x) -> relu\n}}\n\n\
                 model residual {{\n    input x: [16, 4, 4]\n    x -> for i in 0..{} {{ unit }}\n}}\n",
                (nodes - 1) / 5
            ),
            Deep::ConvRelus => format!(
                "model conv_relus {{\n    input x: [16, 4, 4]\n    x -> conv(16, k=3, pad=1) -> for i in 0..{} {{ relu }}\n}}\n",
                nodes - 2
            ),
            Deep::FanOut => format!(
                "block merge(skip) {{\n    input y\n    add(y, skip)\n}}\n\n\
                 model fan_out {{\n    input x: [16, 4, 4]\n    x -> for i in 0..{} {{ merge(x) }}\n}}\n",
                nodes - 1
            ),
        }
    }
}
