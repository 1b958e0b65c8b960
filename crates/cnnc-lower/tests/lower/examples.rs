//! The shipped examples (`examples/*.cnn`) lower to the networks they claim to be: exact
//! trainable-parameter counts, PyTorch `state_dict` names where a torchvision reference exists,
//! output shapes at the declared and at reduced input sizes, and ResNet-50's MACs. Also checks
//! that `docs/language.md` documents every built-in layer with its exact signature, and that its
//! `cnn` code blocks lower to the layer names they claim.
//!
//! Conventions: "parameters" are trainable elements only (weights, biases, batch-norm gamma and
//! beta), not batch-norm running statistics; torchvision's `num_batches_tracked` buffers have no
//! counterpart here and are left out of the reference key lists.

use cnnc_ir::{Graph, Node, Op};
use cnnc_lower::layers::{Dflt, Kind, LAYERS, VALUE_FUNCTIONS};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn lower_src(src: &str, what: &str, shape: Option<&[usize]>) -> Result<cnnc_lower::Lowered, String> {
    let (file, errors) = cnnc_syntax::parse(src);
    if !errors.is_empty() {
        return Err(format!("{what}: syntax errors: {errors:?}"));
    }
    let options = cnnc_lower::Options { model: None, input_shape: shape.map(<[usize]>::to_vec), ..Default::default() };
    cnnc_lower::lower(&file, &options).map_err(|d| {
        let msgs: Vec<String> = d.iter().map(|d| format!("{:?} {}: {}", d.severity, d.code, d.message)).collect();
        format!("{what}: {}", msgs.join("\n"))
    })
}

/// Lowers an example at its declared shape or at `shape`; it must lower without warnings.
fn lower(example: &str, shape: Option<&[usize]>) -> Graph {
    let lowered = lower_src(&read(&format!("examples/{example}")), example, shape).unwrap_or_else(|e| panic!("{e}"));
    let warnings: Vec<&str> = lowered.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(warnings.is_empty(), "{example} at {shape:?}: {warnings:?}");
    lowered.graph
}

fn trainable(g: &Graph) -> usize {
    g.named_params().iter().filter(|(_, p)| p.trainable()).map(|(_, p)| p.elements()).sum()
}

fn names(g: &Graph) -> Vec<String> {
    g.named_params().into_iter().map(|(n, _)| n).collect()
}

fn dims(g: &Graph, name: &str) -> Vec<usize> {
    let params = g.named_params();
    let found = params.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no parameter {name}"));
    found.1.dims.clone()
}

fn node<'g>(g: &'g Graph, name: &str) -> &'g Node {
    g.iter().find(|(_, n)| n.name == name).unwrap_or_else(|| panic!("no layer {name}")).1
}

fn output(g: &Graph) -> Vec<usize> {
    assert_eq!(g.outputs.len(), 1);
    g[g.outputs[0]].shape.0.clone()
}

/// Multiply-accumulates for one sample: a convolution does `out_elements * in_channels / groups
/// * kh * kw`, an fc layer `in * out`; nothing else counts.
fn macs(g: &Graph) -> u64 {
    g.iter()
        .map(|(_, node)| match &node.op {
            Op::Conv(c) => {
                let in_channels = g[node.inputs[0]].shape.channels();
                let [kh, kw] = c.window.kernel;
                (node.shape.elements() * in_channels / c.groups * kh * kw) as u64
            }
            Op::Fc(_) => (g[node.inputs[0]].shape.elements() * node.shape.elements()) as u64,
            _ => 0,
        })
        .sum()
}

fn bn_keys(prefix: &str) -> Vec<String> {
    ["weight", "bias", "running_mean", "running_var"].iter().map(|s| format!("{prefix}.{s}")).collect()
}

// ----- Small classics ------------------------------------------------------------------------

#[test]
fn lenet5() {
    let g = lower("lenet5.cnn", None);
    // C1 6*1*25+6, C3 16*6*25+16 (full connections), C5 120*16*25+120, F6 84*120+84, out 10*84+10.
    assert_eq!(156 + 2_416 + 48_120 + 10_164 + 850, 61_706);
    assert_eq!(trainable(&g), 61_706);
    assert_eq!(output(&g), [10]);
    assert_eq!(dims(&g, "c3.weight"), [16, 6, 5, 5]);
    assert_eq!(dims(&g, "c5.weight"), [120, 16, 5, 5]);
    assert_eq!(node(&g, "c5").shape.0, [120, 1, 1]);
    // C5 is a convolution, as in the paper: on a larger input it yields a larger map (2x2 here)
    // and F6 sees 480 features; on MNIST's raw 28x28 the 5x5 map of S4 is too small for it.
    let g = lower("lenet5.cnn", Some(&[1, 36, 36]));
    assert_eq!(output(&g), [10]);
    assert_eq!(dims(&g, "f6.weight"), [84, 480]);
    let err = lower_src(&read("examples/lenet5.cnn"), "lenet5", Some(&[1, 28, 28])).unwrap_err();
    assert!(err.contains("E0300"), "{err}");
}

#[test]
fn cifar_simple() {
    let g = lower("cifar_simple.cnn", None);
    assert_eq!(trainable(&g), 12 * 3 * 9 + 12 + 12 * 16 * 16 * 10 + 10);
    assert_eq!(trainable(&g), 31_066);
    assert_eq!(names(&g), ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]);
    assert_eq!(dims(&g, "fc.weight"), [10, 12 * 16 * 16]);
    assert_eq!(output(&g), [10]);
    let g = lower("cifar_simple.cnn", Some(&[3, 8, 8]));
    assert_eq!(output(&g), [10]);
    assert_eq!(dims(&g, "fc.weight"), [10, 12 * 4 * 4]);
}

#[test]
fn allcnnc() {
    // All-CNN-C, by layer: 3x3 convs 3->96, 96->96, 96->96 (stride 2), 96->192, 192->192,
    // 192->192 (stride 2), 192->192 (valid), then 1x1 convs 192->192 and 192->10, all with bias.
    let conv = |i: usize, o: usize, k: usize| i * o * k * k + o;
    let expected = conv(3, 96, 3)
        + 2 * conv(96, 96, 3)
        + conv(96, 192, 3)
        + 3 * conv(192, 192, 3)
        + conv(192, 192, 1)
        + conv(192, 10, 1);
    assert_eq!(expected, 1_369_738);
    let g = lower("allcnnc.cnn", None);
    assert_eq!(trainable(&g), 1_369_738);
    assert_eq!(output(&g), [10]);
    // The map global averaging sees is 6x6, as the paper says.
    let pool = g.iter().find(|(_, n)| matches!(n.op, Op::GlobalPool(_))).unwrap().1;
    assert_eq!(g[pool.inputs[0]].shape.0, [10, 6, 6]);
    let dropouts: Vec<f64> =
        g.iter().filter_map(|(_, n)| if let Op::Dropout { p } = n.op { Some(p) } else { None }).collect();
    assert_eq!(dropouts, [0.2, 0.5, 0.5]);
    let g = lower("allcnnc.cnn", Some(&[3, 16, 16]));
    assert_eq!(output(&g), [10]);
    assert_eq!(trainable(&g), 1_369_738);
}

// ----- AlexNet and VGG: torchvision's `features` / `classifier` layout ------------------------

/// torchvision's key list for a `features` Sequential given as a list of entries
/// (`Some(out_channels)` for a conv followed by a relu, `None` for a max pool), and a
/// classifier with linear layers at 0, 3, 6 (VGG) or 1, 4, 6 (AlexNet).
fn features_classifier_keys(features: &[Option<usize>], linear: [usize; 3]) -> Vec<String> {
    let mut keys = Vec::new();
    let mut index = 0;
    for entry in features {
        if entry.is_some() {
            keys.push(format!("features.{index}.weight"));
            keys.push(format!("features.{index}.bias"));
            index += 2;
        } else {
            index += 1;
        }
    }
    for l in linear {
        keys.push(format!("classifier.{l}.weight"));
        keys.push(format!("classifier.{l}.bias"));
    }
    keys
}

#[test]
fn alexnet_matches_torchvision() {
    let g = lower("alexnet.cnn", None);
    assert_eq!(trainable(&g), 61_100_840);
    let features = [Some(64), None, Some(192), None, Some(384), Some(256), Some(256), None];
    assert_eq!(names(&g), features_classifier_keys(&features, [1, 4, 6]));
    assert_eq!(dims(&g, "features.0.weight"), [64, 3, 11, 11]);
    assert_eq!(dims(&g, "features.10.weight"), [256, 256, 3, 3]);
    assert_eq!(dims(&g, "classifier.1.weight"), [4096, 256 * 6 * 6]);
    assert_eq!(dims(&g, "classifier.6.weight"), [1000, 4096]);
    assert_eq!(node(&g, "features.12").shape.0, [256, 6, 6]);
    assert_eq!(node(&g, "avgpool").shape.0, [256, 6, 6]);
    assert!(matches!(node(&g, "classifier.0").op, Op::Dropout { .. }));
    assert_eq!(output(&g), [1000]);
    // The adaptive pool makes the classifier independent of the input size.
    let g = lower("alexnet.cnn", Some(&[3, 64, 64]));
    assert_eq!(output(&g), [1000]);
    assert_eq!(trainable(&g), 61_100_840);
}

fn vgg_features(cfg: &[usize]) -> Vec<Option<usize>> {
    // torchvision's cfgs: 0 stands for "M".
    cfg.iter().map(|&c| (c != 0).then_some(c)).collect()
}

#[test]
fn vggs_match_torchvision() {
    const M: usize = 0;
    let cases: [(&str, &[usize], usize); 4] = [
        ("vgg11.cnn", &[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M], 132_863_336),
        ("vgg13.cnn", &[64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M], 133_047_848),
        ("vgg16.cnn", &[64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M], 138_357_544),
        (
            "vgg19.cnn",
            &[64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M],
            143_667_240,
        ),
    ];
    for (file, cfg, count) in cases {
        let g = lower(file, None);
        assert_eq!(trainable(&g), count, "{file}");
        assert_eq!(names(&g), features_classifier_keys(&vgg_features(cfg), [0, 3, 6]), "{file}");
        assert_eq!(dims(&g, "classifier.0.weight"), [4096, 512 * 7 * 7], "{file}");
        assert_eq!(output(&g), [1000], "{file}");
        // Every position of `features` is taken, max pools included.
        let features = g.iter().filter(|(_, n)| n.name.starts_with("features.")).count();
        assert_eq!(features, cfg.len() + cfg.iter().filter(|&&c| c != M).count(), "{file}");
        let g = lower(file, Some(&[3, 32, 32]));
        assert_eq!(output(&g), [1000], "{file}");
        assert_eq!(trainable(&g), count, "{file}");
    }
}

// ----- GoogLeNet -----------------------------------------------------------------------------

/// GoogLeNet's parameters from Table 1 of the paper.
///
/// Stem: conv 7x7/2 3->64, conv 1x1 64->64 (the "3x3 reduce" of the second row), conv 3x3
/// 64->192. Each inception module with input `c` and Table 1's columns (#1x1, #3x3 reduce,
/// #3x3, #5x5 reduce, #5x5, pool proj) = (a, b_r, b, c_r, cc, d) has
/// `c*a + c*b_r + 9*b_r*b + c*c_r + 25*c_r*cc + c*d` weights and `a + b_r + b + c_r + cc + d`
/// biases; its output has `a + b + cc + d` channels. The classifier is fc 1024->1000.
///
/// This gives 6,998,552 = 6,990,272 weights + 8,280 biases (7,280 conv output channels plus
/// 1,000 fc biases). The weights are 6,826K in units of 1,024, the "about 6.8M" of Table 1.
///
/// Cross-check with torchvision's `googlenet` (6,624,904 parameters without the auxiliary
/// classifiers): torchvision's convolutions have no bias but a batch norm (2 parameters per
/// channel instead of 1: +7,280), and its "5x5" branch is built with 3x3 kernels (a known quirk
/// kept for its pretrained weights: 16 weights fewer per (c_r, cc) pair, 16 * sum(c_r * cc) =
/// -380,928). 6,998,552 + 7,280 - 380,928 = 6,624,904.
#[test]
fn googlenet_matches_table_1() {
    #[rustfmt::skip]
    let table: [[usize; 6]; 9] = [
        [64, 96, 128, 16, 32, 32],     // 3a
        [128, 128, 192, 32, 96, 64],   // 3b
        [192, 96, 208, 16, 48, 64],    // 4a
        [160, 112, 224, 24, 64, 64],   // 4b
        [128, 128, 256, 24, 64, 64],   // 4c
        [112, 144, 288, 32, 64, 64],   // 4d
        [256, 160, 320, 32, 128, 128], // 4e
        [256, 160, 320, 32, 128, 128], // 5a
        [384, 192, 384, 48, 128, 128], // 5b
    ];
    let mut weights = 3 * 64 * 49 + 64 * 64 + 64 * 192 * 9;
    let mut channels = 64 + 64 + 192;
    let mut five_by_five = 0;
    let mut c = 192;
    for [a, br, b, cr, cc, d] in table {
        weights += c * a + c * br + 9 * br * b + c * cr + 25 * cr * cc + c * d;
        channels += a + br + b + cr + cc + d;
        five_by_five += cr * cc;
        c = a + b + cc + d;
    }
    assert_eq!(c, 1024);
    weights += 1024 * 1000;
    let biases = channels + 1000;
    assert_eq!((weights, biases), (6_990_272, 8_280));
    assert_eq!(weights + biases, 6_998_552);
    assert_eq!(weights + biases + channels - 16 * five_by_five, 6_624_904, "torchvision's googlenet");

    let g = lower("googlenet.cnn", None);
    assert_eq!(trainable(&g), 6_998_552);
    assert_eq!(output(&g), [1000]);
    // Table 1's output sizes.
    assert_eq!(node(&g, "conv1").shape.0, [64, 112, 112]);
    assert_eq!(node(&g, "conv2").shape.0, [192, 56, 56]);
    let sizes = [
        ("inception3a", [256, 28, 28]),
        ("inception3b", [480, 28, 28]),
        ("inception4a", [512, 14, 14]),
        ("inception4d", [528, 14, 14]),
        ("inception4e", [832, 14, 14]),
        ("inception5a", [832, 7, 7]),
        ("inception5b", [1024, 7, 7]),
    ];
    for (module, shape) in sizes {
        assert_eq!(node(&g, &format!("{module}.concat1")).shape.0, shape, "{module}");
    }
    assert_eq!(dims(&g, "inception3a.conv5x5.weight"), [32, 16, 5, 5]);
    assert_eq!(dims(&g, "inception5b.pool_proj.weight"), [128, 832, 1, 1]);
    assert_eq!(dims(&g, "fc.weight"), [1000, 1024]);
    // 64x64 is the smallest power of two that lowers: 32x32 leaves the last max pool a 2x2 map.
    let g = lower("googlenet.cnn", Some(&[3, 64, 64]));
    assert_eq!(output(&g), [1000]);
    assert_eq!(trainable(&g), 6_998_552);
    assert!(lower_src(&read("examples/googlenet.cnn"), "googlenet", Some(&[3, 32, 32])).is_err());
}

// ----- ResNets ---------------------------------------------------------------------------------

/// torchvision's `state_dict` keys of a ResNet (without `num_batches_tracked`), in order.
fn resnet_keys(bottleneck: bool, layers: [usize; 4]) -> Vec<String> {
    let mut keys = vec!["conv1.weight".to_string()];
    keys.extend(bn_keys("bn1"));
    let convs = if bottleneck { 3 } else { 2 };
    for (stage, &blocks) in layers.iter().enumerate() {
        for b in 0..blocks {
            let prefix = format!("layer{}.{b}", stage + 1);
            for i in 1..=convs {
                keys.push(format!("{prefix}.conv{i}.weight"));
                keys.extend(bn_keys(&format!("{prefix}.bn{i}")));
            }
            // A projection where the first block changes the shape: always for bottlenecks
            // (64 -> 256 channels in layer1), from layer2 on for basic blocks.
            if b == 0 && (bottleneck || stage > 0) {
                keys.push(format!("{prefix}.downsample.0.weight"));
                keys.extend(bn_keys(&format!("{prefix}.downsample.1")));
            }
        }
    }
    keys.push("fc.weight".to_string());
    keys.push("fc.bias".to_string());
    keys
}

const RESNETS: [(&str, bool, [usize; 4], usize); 5] = [
    ("resnet18.cnn", false, [2, 2, 2, 2], 11_689_512),
    ("resnet34.cnn", false, [3, 4, 6, 3], 21_797_672),
    ("resnet50.cnn", true, [3, 4, 6, 3], 25_557_032),
    ("resnet101.cnn", true, [3, 4, 23, 3], 44_549_160),
    ("resnet152.cnn", true, [3, 8, 36, 3], 60_192_808),
];

#[test]
fn resnets_match_torchvision() {
    for (file, bottleneck, layers, count) in RESNETS {
        let g = lower(file, None);
        assert_eq!(trainable(&g), count, "{file}");
        assert_eq!(names(&g), resnet_keys(bottleneck, layers), "{file}");
        assert_eq!(output(&g), [1000], "{file}");
        let g = lower(file, Some(&[3, 64, 64]));
        assert_eq!(output(&g), [1000], "{file}");
        assert_eq!(trainable(&g), count, "{file}");
    }
}

#[test]
fn resnet18_state_dict() {
    let g = lower("resnet18.cnn", None);
    let names = names(&g);
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.conv2.weight",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == key), "{key} missing");
    }
    assert!(!names.iter().any(|n| n.starts_with("layer1.0.downsample")));
    // torchvision's 122 keys less its 20 num_batches_tracked buffers: 1 + 4 in the stem,
    // 10 per block, 5 per projection and 2 in fc.
    assert_eq!(names.len(), 1 + 4 + 8 * 10 + 3 * 5 + 2);
    assert_eq!(names.len(), 122 - 20);
    assert_eq!(dims(&g, "conv1.weight"), [64, 3, 7, 7]);
    assert_eq!(dims(&g, "layer2.0.conv1.weight"), [128, 64, 3, 3]);
    assert_eq!(dims(&g, "layer2.0.downsample.0.weight"), [128, 64, 1, 1]);
    assert_eq!(dims(&g, "layer4.1.bn2.running_var"), [512]);
    assert_eq!(dims(&g, "fc.weight"), [1000, 512]);
    let buffers: usize = g.named_params().iter().filter(|(_, p)| !p.trainable()).map(|(_, p)| p.elements()).sum();
    // Running mean and variance of every batch norm: 2 * (64 + 2*2*(64+128+256+512) + 128+256+512).
    assert_eq!(buffers, 2 * (64 + 4 * (64 + 128 + 256 + 512) + 128 + 256 + 512));
}

#[test]
fn resnet50_macs_and_shapes() {
    let g = lower("resnet50.cnn", None);
    assert_eq!(macs(&g), 4_089_184_256);
    assert_eq!(node(&g, "conv1").shape.0, [64, 112, 112]);
    assert_eq!(node(&g, "maxpool").shape.0, [64, 56, 56]);
    assert_eq!(node(&g, "layer1.2.conv3").shape.0, [256, 56, 56]);
    assert_eq!(node(&g, "layer2.0.conv2").shape.0, [128, 28, 28]);
    assert_eq!(node(&g, "layer4.2.conv3").shape.0, [2048, 7, 7]);
    assert_eq!(node(&g, "avgpool").shape.0, [2048, 1, 1]);
    assert_eq!(dims(&g, "layer2.0.downsample.1.running_mean"), [512]);
    let g = lower("resnet50.cnn", Some(&[3, 64, 64]));
    assert_eq!(node(&g, "layer4.2.conv3").shape.0, [2048, 2, 2]);
}

#[test]
fn every_example_is_tested() {
    let tested = [
        "lenet5.cnn",
        "cifar_simple.cnn",
        "allcnnc.cnn",
        "alexnet.cnn",
        "vgg11.cnn",
        "vgg13.cnn",
        "vgg16.cnn",
        "vgg19.cnn",
        "googlenet.cnn",
        "resnet18.cnn",
        "resnet34.cnn",
        "resnet50.cnn",
        "resnet101.cnn",
        "resnet152.cnn",
    ];
    let mut found: Vec<String> = std::fs::read_dir(format!("{ROOT}/examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cnn"))
        .collect();
    found.sort();
    let mut tested: Vec<String> = tested.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(found, tested, "add a test for each new example");
}

// ----- docs/language.md ------------------------------------------------------------------------

/// The word the docs use for an argument kind.
fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Size => "size",
        Kind::SizePair => "size pair",
        Kind::PadPair => "padding",
        Kind::Number => "number",
        Kind::Positive => "positive",
        Kind::Fraction => "fraction",
        Kind::Bool => "bool",
        Kind::Sizes => "sizes",
    }
}

/// Whether the docs' written default (`1e-5`, `false`, `k`, `[1, 2, 4]`) is the table's.
fn same_default(written: &str, default: Dflt) -> bool {
    match default {
        Dflt::Required => false,
        Dflt::Int(v) => written.parse::<i64>() == Ok(v),
        Dflt::Number(v) => written.parse::<f64>() == Ok(v),
        Dflt::Bool(v) => written.parse::<bool>() == Ok(v),
        Dflt::Like(other) => written == other,
        Dflt::Sizes(v) => {
            let items: Vec<String> = v.iter().map(i64::to_string).collect();
            written == format!("[{}]", items.join(", "))
        }
    }
}

/// Every layer of `LAYERS` has a row in the docs' layer table listing its arguments in
/// positional order, each as `` `name`: *kind* `` (required) or `` `name = default`: *kind* ``.
#[test]
fn docs_document_every_layer_exactly() {
    let docs = read("docs/language.md");
    for (layer, params) in LAYERS {
        assert!(docs.contains(layer), "docs/language.md does not mention `{layer}`");
        let row_start = format!("| `{layer}` |");
        let rows: Vec<&str> = docs.lines().filter(|l| l.starts_with(&row_start)).collect();
        assert_eq!(rows.len(), 1, "docs/language.md needs exactly one table row for `{layer}`");
        let cells: Vec<&str> = rows[0].split(" | ").collect();
        let mut args = cells[1];
        for p in *params {
            let start = args
                .find(&format!("`{}", p.name))
                .unwrap_or_else(|| panic!("`{layer}`: argument `{}` missing or out of order in: {}", p.name, cells[1]));
            let rest = &args[start + 1..];
            let end = rest.find('`').expect("closing backtick");
            let written = &rest[..end];
            match written.split_once(" = ") {
                None => assert!(
                    written == p.name && p.default == Dflt::Required,
                    "`{layer}`: `{written}` should show the default {:?}",
                    p.default
                ),
                Some((name, value)) => assert!(
                    name == p.name && same_default(value, p.default),
                    "`{layer}`: `{written}` but the table says {:?}",
                    p.default
                ),
            }
            let kind = format!(": *{}*", kind_word(p.kind));
            assert!(rest[end + 1..].starts_with(&kind), "`{layer}`: `{written}` should be followed by `{kind}`");
            args = &rest[end + 1..];
        }
        if params.is_empty() {
            assert_eq!(cells[1].trim(), "none", "`{layer}` takes no arguments");
        }
    }
    for f in VALUE_FUNCTIONS {
        assert!(docs.contains(&format!("`{f}(")), "docs/language.md does not document `{f}(...)`");
    }
    for limit in ["200,000", "1,000,000", "64", "256"] {
        assert!(docs.contains(limit), "docs/language.md does not state the limit {limit}");
    }
    assert_eq!(cnnc_lower::MAX_NODES, 200_000);
    assert_eq!(cnnc_lower::MAX_ITERATIONS, 1_000_000);
    assert_eq!(cnnc_lower::MAX_BLOCK_DEPTH, 64);
    assert_eq!(cnnc_syntax::MAX_NESTING, 64);
    assert_eq!(cnnc_syntax::MAX_EXPR_DEPTH, 256);
}

/// Every ```cnn block of the docs lowers; when a ```names block follows it, the lowered layer
/// names (every node but the input, in order) are exactly the ones listed, one a line, each
/// with its output shape where the line shows one (`stem [16, 32, 32]`).
#[test]
fn docs_examples_lower_to_the_names_they_show() {
    let docs = read("docs/language.md");
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut lines = docs.lines();
    while let Some(line) = lines.next() {
        if let Some(tag) = line.strip_prefix("```") {
            if tag.is_empty() {
                continue;
            }
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            blocks.push((tag.to_string(), body.join("\n")));
        }
    }
    let (mut lowered, mut named) = (0, 0);
    for (i, (tag, src)) in blocks.iter().enumerate() {
        if tag != "cnn" {
            continue;
        }
        let g = lower_src(src, &format!("docs example {i}:\n{src}\n"), None).unwrap_or_else(|e| panic!("{e}")).graph;
        lowered += 1;
        if let Some((next, expected)) = blocks.get(i + 1)
            && next == "names"
        {
            let nodes: Vec<&Node> = g.iter().filter(|(id, _)| !g.inputs.contains(id)).map(|(_, n)| n).collect();
            let want: Vec<&str> = expected.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            // A line is a layer name, optionally followed by its output shape.
            let got: Vec<String> = nodes
                .iter()
                .zip(want.iter().chain(std::iter::repeat(&"")))
                .map(|(n, w)| if w.contains('[') { format!("{} {}", n.name, n.shape) } else { n.name.clone() })
                .collect();
            assert_eq!(got, want, "docs example {i}:\n{src}");
            named += 1;
        }
    }
    assert!(lowered >= 5 && named >= 5, "only {lowered} cnn examples, {named} with names, in docs/language.md");
}

/// The grammar section of the docs quotes `grammar/cnn.pest` verbatim.
#[test]
fn docs_quote_the_grammar_verbatim() {
    let docs = read("docs/language.md");
    let grammar = read("grammar/cnn.pest");
    let start = docs.find("```pest\n").expect("a ```pest block in docs/language.md") + "```pest\n".len();
    let end = start + docs[start..].find("\n```").expect("closing fence");
    assert_eq!(docs[start..end].trim_end(), grammar.trim_end(), "copy grammar/cnn.pest into docs/language.md");
}
