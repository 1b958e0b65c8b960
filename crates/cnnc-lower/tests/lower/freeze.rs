//! `freeze` statements: which parameters each path freezes, and what a path that freezes
//! nothing, or names nothing, reports.

use cnnc_diag::{Code, Diagnostic};

fn lower(src: &str) -> Result<cnnc_lower::Lowered, Vec<Diagnostic>> {
    let (file, errors) = cnnc_syntax::parse(src);
    assert!(errors.is_empty(), "{errors:?}");
    cnnc_lower::lower(&file, &cnnc_lower::Options::default())
}

fn frozen(src: &str) -> Vec<String> {
    let lowered = lower(src).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(cnnc_ir::verify(&lowered.graph), Ok(()));
    lowered.graph.frozen.into_iter().collect()
}

const STAGES: &str = "
block unit(width) {
    input x
    x -> conv1: conv(width, k=3, pad=1, bias=false) -> bn1: bn -> relu
}
block stage(width, blocks) {
    input x
    x -> for i in 0..blocks { unit(width) }
}
";

#[test]
fn a_path_freezes_its_layer_and_every_layer_inside_it_at_a_dot() {
    let src = format!(
        "{STAGES}
model m {{
    input x: [3, 8, 8]
    freeze layer1, stem
    x -> stem: conv(4, k=3, pad=1) -> layer1: stage(4, 2) -> layer10: stage(4, 1) -> relu
}}"
    );
    assert_eq!(
        frozen(&src),
        [
            "layer1.0.bn1.bias",
            "layer1.0.bn1.weight",
            "layer1.0.conv1.weight",
            "layer1.1.bn1.bias",
            "layer1.1.bn1.weight",
            "layer1.1.conv1.weight",
            "stem.bias",
            "stem.weight",
        ],
        "`layer1` is no prefix of `layer10`, and running statistics are buffers, not frozen"
    );
    // An index path and a single layer.
    let src =
        format!("{STAGES} model m {{ input x: [3, 8, 8]  freeze layer1.1, layer1.0.bn1  x -> layer1: stage(4, 2) }}");
    let want = [
        "layer1.0.bn1.bias",
        "layer1.0.bn1.weight",
        "layer1.1.bn1.bias",
        "layer1.1.bn1.weight",
        "layer1.1.conv1.weight",
    ];
    assert_eq!(frozen(&src), want);
}

#[test]
fn paths_in_a_block_are_relative_to_each_instance() {
    let src = "
block head(classes) {
    input x
    freeze hidden
    x -> hidden: fc(8) -> relu -> out: fc(classes)
}
model m {
    input x: [16]
    x -> a: head(4) -> b: head(2)
}";
    assert_eq!(frozen(src), ["a.hidden.bias", "a.hidden.weight", "b.hidden.bias", "b.hidden.weight"]);
}

#[test]
fn freeze_may_follow_the_result_and_nothing_else_may() {
    assert_eq!(frozen("model m { input x: [4]  x -> fc1: fc(2)  freeze fc1 }"), ["fc1.bias", "fc1.weight"]);
    let d = lower("model m { input x: [4]  x -> fc1: fc(2)  freeze fc1  x }").unwrap_err();
    assert_eq!(d[0].code, Code::TYPE_MISMATCH, "{d:?}");
}

#[test]
fn layers_of_unused_values_leave_with_their_marks() {
    let lowered = lower("model m { input x: [4]  let _side = x -> side: fc(3)  freeze side, out  x -> out: fc(2) }")
        .unwrap_or_else(|d| panic!("{d:#?}"));
    let names: Vec<&str> = lowered.graph.frozen.iter().map(String::as_str).collect();
    assert_eq!(names, ["out.bias", "out.weight"]);
    assert_eq!(cnnc_ir::verify(&lowered.graph), Ok(()));
}

#[test]
fn an_unknown_path_is_an_error_with_a_suggestion() {
    let src =
        format!("{STAGES} model m {{ input x: [3, 8, 8]  freeze layr1, layer1.conv1, zzz  x -> layer1: stage(4, 2) }}");
    let d = lower(&src).unwrap_err();
    let errors: Vec<(&str, Option<&str>)> =
        d.iter().filter(|d| d.is_error()).map(|d| (d.message.as_str(), d.hint.as_deref())).collect();
    assert_eq!(errors[0], ("no layer named `layr1` to freeze", Some("did you mean `layer1`?")));
    assert_eq!(errors[1], ("no layer named `layer1.conv1` to freeze", Some("did you mean `layer1.0.conv1`?")));
    assert_eq!(errors[2].0, "no layer named `zzz` to freeze");
    assert!(errors[2].1.is_some_and(|h| h.contains("cnnc summary")), "{errors:?}");
    assert!(d.iter().all(|d| d.code == Code::UNKNOWN_FREEZE_PATH), "{d:?}");
    assert_eq!(&src[d[0].primary.span.range()], "layr1");
}

#[test]
fn an_unknown_path_in_a_block_names_the_instance() {
    let src = "
block head { input x  freeze hiden  x -> hidden: fc(8) }
model m { input x: [16]  x -> a: head }";
    let d = lower(src).unwrap_err();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].hint.as_deref(), Some("did you mean `hidden`?"), "relative names are suggested");
    assert_eq!(d[0].notes, ["paths in a block are relative to its instance: this one stands for `a.hiden`"]);
    assert!(d[0].secondary.iter().any(|l| l.message == "in this use of `head`"), "{d:?}");
}

#[test]
fn a_path_without_trainable_parameters_is_a_warning() {
    let src = "
block act { input x  freeze relu1  x -> relu }
model m {
    input x: [3, 8, 8]
    freeze pool, tail
    x -> conv(4, k=1) -> pool: maxpool(2) -> act -> act -> tail: (relu -> flatten)
}";
    let lowered = lower(src).unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(lowered.graph.frozen.is_empty());
    let warnings: Vec<&str> = lowered.warnings.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        warnings,
        [
            "`relu1` (relu) has no trainable parameters, so freezing it changes nothing",
            "`pool` (maxpool) has no trainable parameters, so freezing it changes nothing",
            "none of the 2 layers in `tail` has trainable parameters, so freezing them changes nothing",
        ],
        "the block used twice warns once"
    );
    assert!(lowered.warnings.iter().all(|d| d.code == Code::FREEZES_NOTHING));
}
