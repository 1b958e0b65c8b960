//! Parser tests: small sources in, AST shape or syntax diagnostics out.

use crate::ast::*;
use crate::parse;

fn parse_ok(src: &str) -> File {
    let (file, errors) = parse(src);
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    file
}

fn first_error(src: &str) -> String {
    let (_, errors) = parse(src);
    errors.first().map(|e| e.diagnostic().message).unwrap_or_default()
}

#[test]
fn parses_the_resnet50_example() {
    let file = parse_ok(include_str!("../../../examples/resnet50.cnn"));
    let names: Vec<_> = file.items.iter().map(|i| (i.kind, i.name.name.as_str())).collect();
    assert_eq!(names, [(ItemKind::Block, "bottleneck"), (ItemKind::Block, "stage"), (ItemKind::Model, "resnet50")]);
    let model = &file.items[2];
    assert_eq!(model.params.len(), 2, "classes and width");
    assert!(matches!(model.body[0], Stmt::Input { .. }));
    let Stmt::Expr(Expr { kind: ExprKind::Chain { steps, .. }, .. }) = &model.body[1] else { panic!("chain") };
    assert_eq!(steps.len(), 11);
    assert_eq!(steps[0].label.as_ref().unwrap().name, "conv1");
}

#[test]
fn operators_follow_precedence() {
    let file = parse_ok("model m(a = 1 + 2 * 3 - 4 / 2, b = !true || 1 < 2 && 3 >= 3) { input x: [1, 2, 2] x }");
    let Some(Expr { kind: ExprKind::Binary(BinOp::Sub, lhs, _), .. }) = &file.items[0].params[0].default else {
        panic!("subtraction at the root")
    };
    assert!(matches!(lhs.kind, ExprKind::Binary(BinOp::Add, _, _)));
    let Some(Expr { kind: ExprKind::Binary(BinOp::Or, _, rhs), .. }) = &file.items[0].params[1].default else {
        panic!("|| at the root")
    };
    assert!(matches!(rhs.kind, ExprKind::Binary(BinOp::And, _, _)));
}

#[test]
fn tuples_lists_and_negative_literals() {
    let file =
        parse_ok("model m(k = (3, 1), one = (3,), p = (2), l = [1, 2, 4], n = -3, f = 1e-4) { input x: [1, 8, 8] x }");
    let kinds: Vec<_> = file.items[0].params.iter().map(|p| p.default.clone().unwrap().kind).collect();
    assert!(matches!(&kinds[0], ExprKind::Tuple(v) if v.len() == 2));
    assert!(matches!(&kinds[1], ExprKind::Tuple(v) if v.len() == 1));
    assert_eq!(kinds[2], ExprKind::Int(2));
    assert!(matches!(&kinds[3], ExprKind::List(v) if v.len() == 3));
    assert_eq!(kinds[4], ExprKind::Int(-3));
    assert_eq!(kinds[5], ExprKind::Float(1e-4));
}

#[test]
fn steps_groups_loops_and_conditions() {
    let src = "model m(deep = true) { input x: [3, 8, 8]
        x -> features: (conv(8, k=3) -> relu) -> for c in [8, 16] { conv(c, k=1) }
          -> if deep { conv(4, k=1) } else if false { relu } else { sigmoid } -> if deep { relu } }";
    let file = parse_ok(src);
    let Stmt::Expr(Expr { kind: ExprKind::Chain { steps, .. }, .. }) = &file.items[0].body[1] else { panic!() };
    assert!(matches!(&steps[0].kind, StepKind::Group(g) if g.len() == 2));
    assert!(matches!(&steps[1].kind, StepKind::For { iter: Iterable::Value(_), .. }));
    assert!(matches!(&steps[2].kind, StepKind::If { otherwise: Some(o), .. } if o.len() == 1));
    assert!(matches!(&steps[3].kind, StepKind::If { otherwise: None, .. }));
}

#[test]
fn one_syntax_error_per_item() {
    // An unbalanced bracket stops everything: item boundaries cannot be trusted after it.
    let src = "model a { input x: [1, 2, 2] x }\nblock b { input x x -> relu( }\nmodel c { input x: [1, 1, 1] x }";
    let (file, errors) = parse(src);
    assert_eq!((file.items.len(), errors.len()), (0, 1), "{errors:?}");
    let src =
        "model a { input x: [1, 2, 2] x -> }\nblock b { input x x -> relu(, ) }\nmodel c { input x: [1, 1, 1] x }";
    let (file, errors) = parse(src);
    assert_eq!((file.items.len(), errors.len()), (1, 2), "{errors:?}");
}

#[test]
fn errors_say_what_was_expected() {
    assert_eq!(first_error("model m { input x: [1, 2, 2] x -> }"), "expected a layer, found `}`");
    assert!(first_error("model m { x = 3 }").contains("found `=`"));
    assert_eq!(first_error("relu"), "expected `model` or `block`, found `relu`");
}

#[test]
fn hostile_inputs_are_errors_not_crashes() {
    let deep = format!("model m {{ input x: [1, 1, 1] {}x{} }}", "(".repeat(5000), ")".repeat(5000));
    assert!(first_error(&deep).contains("nested more than"));
    let long = format!("model m(a = {}1) {{ input x: [1, 1, 1] x }}", "1 + ".repeat(10_000));
    assert!(first_error(&long).contains("nested more than"));
    let negs = format!("model m(a = {}1) {{ input x: [1, 1, 1] x }}", "!".repeat(10_000));
    assert!(first_error(&negs).contains("nested more than"));
    assert!(first_error("model m(a = 99999999999999999999) { input x: [1, 1, 1] x }").contains("out of range"));
    assert_eq!(first_error("model m { input x: [1, 1, 1] x ]"), "mismatched closing bracket: expected `}`, found `]`");
    assert_eq!(first_error("model m { input x: [1, 1, 1] x"), "unclosed bracket");
    for src in ["", "   ", "// only a comment", "/* closed */"] {
        let (file, errors) = parse(src);
        assert!(file.items.is_empty() && errors.is_empty(), "{src:?}: {errors:?}");
    }
    for src in ["model", "model m", "block b(", "model m { input x: [1, 1, 1] x -> }", "/* unterminated"] {
        let (file, errors) = parse(src);
        assert!(file.items.is_empty() && errors.len() == 1, "{src:?}: {errors:?}");
    }
}

#[test]
fn spans_end_at_the_last_token() {
    let src = "model m {\n    input x: [1, 4, 4]   // the image\n    x -> relu  /* done */\n}\n";
    let file = parse_ok(src);
    let Stmt::Input { span, .. } = &file.items[0].body[0] else { panic!() };
    assert_eq!(&src[span.range()], "input x: [1, 4, 4]");
    let Stmt::Expr(Expr { kind: ExprKind::Chain { steps, .. }, span }) = &file.items[0].body[1] else { panic!() };
    assert_eq!(&src[span.range()], "x -> relu");
    assert_eq!(&src[steps[0].span.range()], "relu");
}

#[test]
fn calls_take_an_optional_label() {
    let file = parse_ok("model m { input x: [1, 2, 2]  let s = sum: add(x, x) -> relu  concat(s, x) }");
    let Stmt::Let { value, .. } = &file.items[0].body[1] else { panic!("let") };
    let ExprKind::Chain { head, .. } = &value.kind else { panic!("chain") };
    let ExprKind::Call { label, func, args } = &head.kind else { panic!("call") };
    assert_eq!((label.as_ref().map(|l| l.name.as_str()), func.name.as_str(), args.len()), (Some("sum"), "add", 2));
    assert_eq!(head.span.range(), 38..52, "the span covers the label");
    let Stmt::Expr(Expr { kind: ExprKind::Call { label: None, .. }, .. }) = &file.items[0].body[2] else {
        panic!("unlabelled call")
    };
    // A label needs a call after it.
    assert!(!first_error("model m { input x: [1, 2, 2]  let s = sum: x  s }").is_empty());
}

#[test]
fn freeze_takes_comma_separated_layer_paths() {
    let src = "block b { input x  freeze conv1;  x -> conv1: conv(4, k=1) }\n\
               model m { input x: [1, 4, 4]  freeze stem, layer1, layer2.0.conv1, features.3  x -> b }";
    let file = parse_ok(src);
    let Stmt::Freeze { paths, span } = &file.items[0].body[1] else { panic!("freeze in a block") };
    assert_eq!(paths.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(), ["conv1"]);
    assert_eq!(&src[span.range()], "freeze conv1;");
    let Stmt::Freeze { paths, span } = &file.items[1].body[1] else { panic!("freeze in a model") };
    let texts: Vec<&str> = paths.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["stem", "layer1", "layer2.0.conv1", "features.3"]);
    for path in paths {
        assert_eq!(&src[path.span.range()], path.text, "a path's span covers it exactly");
    }
    assert_eq!(&src[span.range()], "freeze stem, layer1, layer2.0.conv1, features.3");
    // Words that merely start with the keyword are names.
    parse_ok("model m { input x: [1, 4, 4]  freeze freezer  x -> freezer: relu }");
}

#[test]
fn freeze_is_a_keyword_and_paths_are_one_token() {
    assert!(first_error("model m { input x: [1, 4, 4]  let freeze = x  freeze }").contains("found `freeze`"));
    assert_eq!(first_error("model m { input x: [1, 4, 4]  x  freeze }"), "expected a layer name, found `}`");
    // No spaces around the dots: `layer1 .0` is the path `layer1` and a stray `.0`.
    assert!(first_error("model m { input x: [1, 4, 4]  freeze layer1 .0  x }").contains("found `.`"));
    assert!(first_error("model m { input x: [1, 4, 4]  freeze layer1.  x }").starts_with("expected a layer name"));
    assert!(first_error("model m { input x: [1, 4, 4]  freeze a, , b  x }").starts_with("expected a layer name"));
    let (_, errors) = parse("model m { input x: [1, 4, 4]  freeze layer1.*  x }");
    let d = errors[0].diagnostic();
    assert_eq!(d.message, "expected a layer name, found `*`");
    assert!(d.hint.as_deref().is_some_and(|h| h.contains("without `.*`")), "{d:?}");
}
