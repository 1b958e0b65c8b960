//! Names people bring from PyTorch and Keras (`Conv2d`, `Dense`, `kernel_size`, `filters`) and
//! what they are called here, for the hints of unknown-layer and unknown-argument errors.
//!
//! Layer names are compared after lowercasing and dropping `_`, so one entry covers PyTorch's
//! module (`nn.MaxPool2d`), its functional form (`F.max_pool2d`) and Keras's layer
//! (`MaxPooling2D`) alike. Argument names are compared as written: both frameworks spell them
//! in snake case. An argument hint is given only when the cnnc name it points to is an argument
//! of the layer at hand (or when the argument has no counterpart at all, such as `in_channels`,
//! which cnnc infers).

/// A layer of another framework and its counterpart here.
struct ForeignLayer {
    /// Lowercased, without `_`.
    keys: &'static [&'static str],
    /// Where the name comes from, for the hint: "PyTorch's `nn.Conv2d` and Keras's `Conv2D`".
    from: &'static str,
    /// What to write here instead: an example using the counterpart.
    example: &'static str,
    /// What differs, if anything.
    note: Option<&'static str>,
}

const fn layer(
    keys: &'static [&'static str],
    from: &'static str,
    example: &'static str,
    note: Option<&'static str>,
) -> ForeignLayer {
    ForeignLayer { keys, from, example, note }
}

const INFERRED_CHANNELS: Option<&str> = Some("the input channels are inferred from the input");
const INFERRED_FEATURES: Option<&str> = Some("the input features are inferred from the input");

const LAYERS: &[ForeignLayer] = &[
    layer(&["conv2d"], "PyTorch's `nn.Conv2d` and Keras's `Conv2D`", "x -> conv(64, k=3, pad=1)", INFERRED_CHANNELS),
    layer(
        &["conv1d", "conv3d", "convtranspose2d", "conv2dtranspose"],
        "a convolution cnnc does not have",
        "x -> conv(64, k=3, pad=1)",
        Some("cnnc's convolutions are 2-D and not transposed: `conv` is PyTorch's `nn.Conv2d`"),
    ),
    layer(&["linear", "dense"], "PyTorch's `nn.Linear` and Keras's `Dense`", "x -> fc(10)", INFERRED_FEATURES),
    layer(
        &["batchnorm2d", "batchnorm1d", "batchnorm", "batchnormalization"],
        "PyTorch's `nn.BatchNorm2d` and Keras's `BatchNormalization`",
        "x -> bn",
        Some("the number of features is inferred from the input"),
    ),
    layer(
        &["maxpool2d", "maxpooling2d"],
        "PyTorch's `nn.MaxPool2d` and Keras's `MaxPooling2D`",
        "x -> maxpool(2)",
        None,
    ),
    layer(
        &["avgpool2d", "averagepooling2d"],
        "PyTorch's `nn.AvgPool2d` and Keras's `AveragePooling2D`",
        "x -> avgpool(2)",
        None,
    ),
    layer(&["adaptiveavgpool2d"], "PyTorch's `nn.AdaptiveAvgPool2d`", "x -> adaptive_avgpool(7)", None),
    layer(&["adaptivemaxpool2d"], "PyTorch's `nn.AdaptiveMaxPool2d`", "x -> adaptive_maxpool(7)", None),
    layer(
        &["globalaveragepooling2d", "globalavgpool2d"],
        "Keras's `GlobalAveragePooling2D`",
        "x -> global_avgpool -> flatten",
        Some("`global_avgpool` keeps the map shape [C, 1, 1]; `flatten` makes it [C]"),
    ),
    layer(
        &["globalmaxpooling2d", "globalmaxpool2d"],
        "Keras's `GlobalMaxPooling2D`",
        "x -> global_maxpool -> flatten",
        Some("`global_maxpool` keeps the map shape [C, 1, 1]; `flatten` makes it [C]"),
    ),
    layer(&["lppool2d"], "PyTorch's `nn.LPPool2d`", "x -> l2pool(2)", Some("cnnc has the p = 2 case only")),
    layer(&["dropout", "dropout1d"], "PyTorch's and Keras's `Dropout`", "x -> dropout(0.5)", None),
    layer(
        &["dropout2d", "spatialdropout2d"],
        "PyTorch's `nn.Dropout2d`",
        "x -> dropout(0.5)",
        Some("cnnc's `dropout` zeroes single elements, not whole channels as `Dropout2d` does"),
    ),
    layer(&["relu"], "PyTorch's `nn.ReLU`", "x -> relu", None),
    layer(&["leakyrelu"], "PyTorch's `nn.LeakyReLU`", "x -> leaky_relu(0.01)", None),
    layer(&["prelu"], "PyTorch's `nn.PReLU`", "x -> prelu", Some("cnnc's `prelu` learns one slope per channel")),
    layer(&["elu"], "PyTorch's `nn.ELU`", "x -> elu", None),
    layer(&["selu"], "PyTorch's `nn.SELU`", "x -> selu", None),
    layer(&["sigmoid"], "PyTorch's `nn.Sigmoid`", "x -> sigmoid", None),
    layer(&["tanh"], "PyTorch's `nn.Tanh`", "x -> tanh", None),
    layer(&["hardtanh"], "PyTorch's `nn.Hardtanh`", "x -> hardtanh", None),
    layer(&["softsign"], "PyTorch's `nn.Softsign`", "x -> softsign", None),
    layer(&["softplus"], "PyTorch's `nn.Softplus`", "x -> softplus", None),
    layer(
        &["softmax"],
        "PyTorch's `nn.Softmax`",
        "x -> softmax",
        Some("cnnc's `softmax` normalises over the channels"),
    ),
    layer(&["flatten"], "PyTorch's `nn.Flatten`", "x -> flatten", None),
    layer(&["localresponsenorm"], "PyTorch's `nn.LocalResponseNorm`", "x -> lrn(5)", None),
    layer(
        &["sequential"],
        "PyTorch's `nn.Sequential`",
        "x -> features: (conv(64, k=3) -> relu)",
        Some("a group `( ... )` numbers its layers as `nn.Sequential` numbers its modules"),
    ),
    layer(&["activation"], "Keras's `Activation`", "x -> relu", Some("an activation is a layer of its own in a chain")),
    layer(
        &["add", "concatenate", "concat", "cat"],
        "a layer that combines tensors",
        "add(a, b) -> relu",
        Some("`add(a, b)` and `concat(a, b)` are written as values, not as steps of a chain"),
    ),
];

/// The hint for an unknown layer written as another framework names it, if it is one.
pub fn layer_hint(name: &str) -> Option<String> {
    let key: String = name.chars().filter(|&c| c != '_').flat_map(char::to_lowercase).collect();
    let entry = LAYERS.iter().find(|l| l.keys.contains(&key.as_str()))?;
    let mut hint = format!("`{name}` is {}; here write `{}`", entry.from, entry.example);
    if let Some(note) = entry.note {
        hint.push_str(&format!(" ({note})"));
    }
    Some(hint)
}

/// An argument of another framework: either another name here, or nothing to write at all.
enum ForeignArg {
    /// The same meaning under another name (`kernel_size` is `k`).
    Renamed(&'static str),
    /// No argument here: why, and what to do instead.
    Absent(&'static str),
}

const ARGS: &[(&str, ForeignArg)] = {
    use ForeignArg::{Absent, Renamed};
    &[
        ("kernel_size", Renamed("k")),
        ("pool_size", Renamed("k")),
        ("padding", Renamed("pad")),
        ("strides", Renamed("stride")),
        ("dilation_rate", Renamed("dilation")),
        ("out_channels", Renamed("out")),
        ("filters", Renamed("out")),
        ("out_features", Renamed("out")),
        ("units", Renamed("out")),
        ("output_size", Renamed("out")),
        ("use_bias", Renamed("bias")),
        ("ceil_mode", Renamed("ceil")),
        ("count_include_pad", Renamed("include_pad")),
        ("negative_slope", Renamed("slope")),
        ("epsilon", Renamed("eps")),
        ("rate", Renamed("p")),
        ("min_val", Renamed("min")),
        ("max_val", Renamed("max")),
        ("local_size", Renamed("size")),
        ("in_channels", Absent("the input channels are inferred from the input, so leave it out")),
        ("in_features", Absent("the input features are inferred from the input, so leave it out")),
        ("num_features", Absent("the number of features is inferred from the input, so leave it out")),
        ("activation", Absent("an activation is a layer of its own; chain it after: `conv(64, k=3) -> relu`")),
        ("inplace", Absent("the memory plan decides which values are overwritten, so leave it out")),
        ("padding_mode", Absent("it pads with zeros only")),
        ("affine", Absent("`bn` always has a weight and a bias")),
        ("track_running_stats", Absent("`bn` always keeps running statistics")),
        ("kernel_initializer", Absent("`cnnc init` chooses the initial weights (He or Xavier), so leave it out")),
        ("bias_initializer", Absent("`cnnc init` sets biases to zero, so leave it out")),
        ("data_format", Absent("tensors are channels first, [C, H, W]")),
        ("input_shape", Absent("declare the model's input instead, `input x: [3, 32, 32]`")),
    ]
};

/// The hint for an unknown argument `name` of a built-in layer whose arguments are `params`,
/// when `name` is another framework's: "`kernel_size` is `k` here", or why it has no
/// counterpart. `None` when it is not a foreign name, or names an argument this layer lacks.
pub fn argument_hint(name: &str, params: &[&str]) -> Option<String> {
    let (_, arg) = ARGS.iter().find(|(n, _)| *n == name)?;
    match arg {
        ForeignArg::Renamed(here) if params.contains(here) => {
            let mut hint = format!("`{name}` (PyTorch's or Keras's name) is `{here}` here");
            if *here == "pad" {
                hint.push_str(": pixels added on each side, a number or a (height, width) pair");
            }
            Some(hint)
        }
        ForeignArg::Renamed(_) => None,
        ForeignArg::Absent(why) => Some(format!("cnnc has no `{name}`: {why}")),
    }
}

/// The hint for an unknown name that is Python's way of writing a value: `True` for `true`.
pub fn value_hint(name: &str) -> Option<&'static str> {
    match name {
        "True" => Some("write `true` (lowercase)"),
        "False" => Some("write `false` (lowercase)"),
        "None" => Some("cnnc has no `None`: leave the argument out to get its default"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_hint_uses_a_layer_of_ours() {
        let ours: Vec<&str> = crate::layers::LAYERS
            .iter()
            .map(|(name, _)| *name)
            .chain(crate::layers::VALUE_FUNCTIONS.iter().copied())
            .collect();
        for entry in LAYERS {
            let words: Vec<&str> = entry.example.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
            assert!(words.iter().any(|w| ours.contains(w)), "`{}` uses no layer of ours", entry.example);
            for key in entry.keys {
                assert_eq!(*key, key.to_lowercase().replace('_', ""), "keys are normalised");
            }
        }
    }

    #[test]
    fn renamed_arguments_name_real_arguments() {
        let all: Vec<&str> = crate::layers::LAYERS.iter().flat_map(|(_, sig)| sig.iter().map(|d| d.name)).collect();
        for (name, arg) in ARGS {
            if let ForeignArg::Renamed(here) = arg {
                assert!(all.contains(here), "`{name}` maps to `{here}`, which no layer takes");
            }
            assert!(!all.contains(name), "`{name}` is an argument of ours, never unknown");
        }
    }

    #[test]
    fn hints() {
        assert_eq!(
            layer_hint("Conv2d").unwrap(),
            "`Conv2d` is PyTorch's `nn.Conv2d` and Keras's `Conv2D`; here write `x -> conv(64, k=3, pad=1)` (the \
             input channels are inferred from the input)"
        );
        assert!(layer_hint("max_pool2d").unwrap().contains("`x -> maxpool(2)`"));
        assert!(layer_hint("MaxPooling2D").unwrap().contains("`x -> maxpool(2)`"));
        assert!(layer_hint("Conv1d").unwrap().contains("2-D"));
        assert!(layer_hint("frobnicate").is_none());
        let conv = ["out", "k", "stride", "pad", "dilation", "groups", "depthwise", "bias"];
        assert_eq!(
            argument_hint("kernel_size", &conv).unwrap(),
            "`kernel_size` (PyTorch's or Keras's name) is `k` here"
        );
        assert!(argument_hint("in_channels", &conv).unwrap().contains("inferred"));
        assert!(argument_hint("padding", &conv).unwrap().contains("(height, width) pair"));
        // `units` is fc's `out`, and conv has an `out` too; `ceil_mode` is no conv argument.
        assert!(argument_hint("units", &conv).is_some());
        assert!(argument_hint("ceil_mode", &conv).is_none());
        assert!(argument_hint("stride", &conv).is_none(), "our own names are not foreign");
    }
}
