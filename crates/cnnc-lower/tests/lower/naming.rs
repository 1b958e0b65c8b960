//! The naming rules that make parameter names equal PyTorch state_dict keys.

fn names(src: &str) -> Vec<String> {
    let (file, errors) = cnnc_syntax::parse(src);
    assert!(errors.is_empty(), "{errors:?}");
    let lowered = cnnc_lower::lower(&file, &cnnc_lower::Options::default()).unwrap_or_else(|d| panic!("{d:#?}"));
    lowered.graph.iter().skip(1).map(|(_, n)| n.name.clone()).collect()
}

fn errors(src: &str) -> Vec<String> {
    let (file, errors) = cnnc_syntax::parse(src);
    assert!(errors.is_empty(), "{errors:?}");
    match cnnc_lower::lower(&file, &cnnc_lower::Options::default()) {
        Ok(_) => Vec::new(),
        Err(d) => d.into_iter().filter(|d| d.is_error()).map(|d| format!("{}: {}", d.code, d.message)).collect(),
    }
}

#[test]
fn unlabelled_layers_get_per_kind_counters_skipping_labels() {
    let got = names(
        "model m { input x: [1, 8, 8] x -> conv(2, k=3) -> relu -> conv1: conv(2, k=1) -> relu -> conv(2, k=1) }",
    );
    assert_eq!(got, ["conv2", "relu1", "conv1", "relu2", "conv3"]);
}

#[test]
fn groups_number_every_position_like_nn_sequential() {
    let got = names(
        "model m { input x: [1, 8, 8]
           x -> features: (conv(2, k=3, pad=1) -> relu -> for c in [4, 4] { conv(c, k=3, pad=1) -> relu } -> mp: maxpool(2) -> relu) }",
    );
    assert_eq!(
        got,
        [
            "features.0",
            "features.1",
            "features.2",
            "features.3",
            "features.4",
            "features.5",
            "features.mp",
            "features.7"
        ]
    );
}

#[test]
fn block_instances_and_loops_build_hierarchical_names() {
    let got = names(
        "block unit(c) { input x  x -> conv: conv(c, k=1) -> relu }
         block stage(c, n) { input x  x -> for i in 0..n { unit(c) } }
         model m { input x: [1, 4, 4] x -> layer1: stage(2, 2) -> unit(3) -> unit(3) }",
    );
    assert_eq!(
        got,
        [
            "layer1.0.conv",
            "layer1.0.relu1",
            "layer1.1.conv",
            "layer1.1.relu1",
            "unit1.conv",
            "unit1.relu1",
            "unit2.conv",
            "unit2.relu1"
        ]
    );
}

#[test]
fn labelled_loops_and_conditions_open_numbered_scopes() {
    let got = names(
        "model m(deep = true) { input x: [1, 4, 4]
           x -> blocks: for i in 0..2 { conv(2, k=1) } -> head: if deep { relu -> conv(2, k=1) } -> if !deep { tanh } }",
    );
    assert_eq!(got, ["blocks.0", "blocks.1", "head.0", "head.1"]);
}

#[test]
fn value_functions_and_conditionals_choose_the_shortcut() {
    let src = "block res(c, stride = 1) { input x
           let y = x -> conv(c, k=3, stride=stride, pad=1)
           let s = if stride != 1 || channels(x) != c { x -> downsample: (conv(c, k=1, stride=stride) -> bn) } else { x }
           add(y, s) -> relu }
         model m { input x: [4, 8, 8] x -> a: res(4) -> b: res(8, stride=2) }";
    assert_eq!(
        names(src),
        ["a.conv1", "a.add1", "a.relu1", "b.conv1", "b.downsample.0", "b.downsample.1", "b.add1", "b.relu1"]
    );
}

#[test]
fn two_unlabelled_loops_in_one_scope_continue_the_numbering() {
    let got = names("model m { input x: [1, 4, 4] x -> for i in 0..2 { relu } -> for i in 0..2 { tanh } }");
    assert_eq!(got, ["0", "1", "2", "3"]);
}

#[test]
fn duplicate_names_and_recursion_are_errors() {
    let dup = errors("model m { input x: [1, 4, 4] x -> a: relu -> a: relu }");
    assert_eq!(dup, ["E0206: two layers are named `a`"]);
    let rec = errors("block a { input x x -> b } block b { input x x -> a } model m { input x: [1, 1, 1] x -> a }");
    assert_eq!(rec, ["E0208: block `a` uses itself: a -> b -> a"]);
}

#[test]
fn shape_override_replaces_the_declared_input() {
    let (file, _) = cnnc_syntax::parse("model m { input x: [3, 224, 224] x -> conv(8, k=3, stride=2, pad=1) }");
    let options = cnnc_lower::Options { model: None, input_shape: Some(vec![3, 64, 64]), ..Default::default() };
    let g = cnnc_lower::lower(&file, &options).unwrap().graph;
    assert_eq!(g[g.outputs[0]].shape.0, [8, 32, 32]);
    let options = cnnc_lower::Options { model: None, input_shape: Some(vec![64]), ..Default::default() };
    let e = cnnc_lower::lower(&file, &options).unwrap_err();
    assert!(e[0].message.contains("`--shape` gives 1 dimensions"), "{}", e[0].message);
}

#[test]
fn several_errors_are_reported_in_one_run() {
    let got = errors(
        "model m { input x: [1, 4, 4]
           let a = x -> maxpol(2)
           let b = x -> conv(4, k=3, strde=2)
           add(a, b) }",
    );
    assert_eq!(got, ["E0200: unknown layer `maxpol`", "E0201: `conv` has no argument `strde`"]);
}

#[test]
fn automatic_names_skip_only_labels_of_their_own_scope() {
    let got = names("model m { input x: [3, 8, 8] x -> relu -> f: (relu1: relu) -> relu }");
    assert_eq!(got, ["relu1", "f.relu1", "relu2"]);
    let got = names("model m { input x: [3, 8, 8] x -> relu -> for i in 0..1 { relu1: relu } }");
    assert_eq!(got, ["relu2", "relu1"]);
}

#[test]
fn command_line_overrides_replace_parameter_defaults() {
    let (file, _) = cnnc_syntax::parse(
        "model m(classes = 1000, k = 3) { input x: [3, 8, 8] x -> conv(4, k=k) -> flatten -> fc(classes) }",
    );
    let set = |pairs: &[(&str, &str)]| cnnc_lower::Options {
        overrides: pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        ..Default::default()
    };
    let g = cnnc_lower::lower(&file, &set(&[("classes", "10"), ("k", "(3, 1)")])).unwrap().graph;
    assert_eq!(g[g.outputs[0]].shape.0, [10]);
    assert_eq!(g.named_params()[0].1.dims, [4, 3, 3, 1]);
    let e = cnnc_lower::lower(&file, &set(&[("clases", "10")])).unwrap_err();
    assert_eq!(e[0].message, "model `m` has no parameter `clases` to set");
    assert_eq!(e[0].hint.as_deref(), Some("did you mean `classes`?"));
    let e = cnnc_lower::lower(&file, &set(&[("classes", "10 +")])).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].message, "cannot use `10 +` as the value of `classes`");
    let e = cnnc_lower::lower(&file, &set(&[("classes", "nope")])).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
}

#[test]
fn the_elaboration_budget_is_shared_by_every_model_of_a_file() {
    let src: String =
        (0..10).map(|i| format!("model m{i} {{ input x: [1, 1, 1] x -> for i in 0..150000 {{ relu }} }}\n")).collect();
    let (file, _) = cnnc_syntax::parse(&src);
    let start = std::time::Instant::now();
    let diags = cnnc_lower::check(&file);
    // The first model fits (150,000 layers); the second runs out of the file's budget; the rest
    // stop at once.
    let too_large: Vec<_> = diags.iter().filter(|d| d.code == cnnc_diag::Code::TOO_LARGE).collect();
    assert_eq!(too_large.len(), 9, "{diags:#?}");
    assert!(start.elapsed().as_secs_f64() < 10.0, "took {:?}", start.elapsed());
}
