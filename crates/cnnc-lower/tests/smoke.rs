//! Lowering smoke tests on the shipped examples.

fn lower(path: &str, shape: Option<Vec<usize>>) -> cnnc_ir::Graph {
    let src = std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (file, errors) = cnnc_syntax::parse(&src);
    assert!(errors.is_empty(), "{errors:?}");
    let options = cnnc_lower::Options { model: None, input_shape: shape };
    match cnnc_lower::lower(&file, &options) {
        Ok(l) => l.graph,
        Err(d) => panic!("{d:#?}"),
    }
}

#[test]
fn resnet50_has_torchvision_parameters() {
    let g = lower("examples/resnet50.cnn", None);
    let params = g.named_params();
    let trainable: usize = params.iter().filter(|(_, p)| p.trainable()).map(|(_, p)| p.elements()).sum();
    assert_eq!(trainable, 25_557_032);
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.2.bn3.bias",
        "fc.bias",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert_eq!(g[g.outputs[0]].shape.0, vec![1000]);
}
