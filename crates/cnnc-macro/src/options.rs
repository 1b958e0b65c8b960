//! The macro's input: a `.cnn` body with optional `#![options(...)]` first, or `file = "..."`
//! followed by options, parsed into `cnnc_emit::Options`.
//!
//! ```text
//! cnn! { #![options(train = sgd)] model digits(classes = 10) { ... } }
//! cnn!(file = "models/resnet18.cnn", shape = [3, 64, 64], set(classes = 100))
//! ```
//!
//! Options: `model = name` (which model of the source), `shape = [C, H, W]` (its input shape),
//! `set(name = value, ...)` (its parameters), `train = sgd | adam | rmsprop | gradients` (a
//! `Trainer` or `Gradients` struct beside `Model`), `loss = cross_entropy | mse | l1`,
//! `std = false` (a `core`-only module), `winograd = false` (every convolution on the direct
//! kernels).

use cnnc_ir::{Adam, Loss, Optimizer, RmsProp, Sgd};
use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};

/// A mistake in the macro's own input, at its token.
#[derive(Debug)]
pub struct OptionError {
    pub message: String,
    pub span: Span,
}

/// Where the source is.
#[derive(Debug)]
pub enum Body {
    /// Written in the macro: its tokens.
    Inline(TokenStream),
    /// `file = "..."`, relative to `CARGO_MANIFEST_DIR`, with the string literal's span.
    File { path: String, span: Span },
}

/// The parsed input.
#[derive(Debug)]
pub struct Input {
    pub body: Body,
    pub options: cnnc_emit::Options,
}

/// The optimisers' settings: those `cnnc train` uses by default.
const SGD: Sgd = Sgd { momentum: 0.9, weight_decay: 5e-4, nesterov: false };
const ADAM: Adam = Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 5e-4 };
const RMSPROP: RmsProp = RmsProp { alpha: 0.99, eps: 1e-8, momentum: 0.9, weight_decay: 5e-4 };

pub fn parse(input: TokenStream) -> Result<Input, OptionError> {
    let trees: Vec<TokenTree> = input.clone().into_iter().collect();
    let mut options = cnnc_emit::Options::default();
    if let [TokenTree::Ident(key), TokenTree::Punct(eq), ..] = &trees[..]
        && key == "file"
        && eq.as_char() == '='
    {
        let items = split_commas(&trees[2..]);
        let (path_tokens, rest) = items.split_first().expect("split_commas gives at least one item");
        let path = string_literal(path_tokens, key.span(), "`file` takes a string literal: `file = \"models/x.cnn\"`")?;
        for item in rest {
            option(item, &mut options)?;
        }
        return Ok(Input { body: Body::File { path: path.0, span: path.1 }, options });
    }
    // `#![options(...)]` first, then the source.
    if let [TokenTree::Punct(hash), TokenTree::Punct(bang), TokenTree::Group(attr), ..] = &trees[..]
        && hash.as_char() == '#'
        && bang.as_char() == '!'
        && attr.delimiter() == Delimiter::Bracket
    {
        let inner: Vec<TokenTree> = attr.stream().into_iter().collect();
        if let [TokenTree::Ident(name), TokenTree::Group(args)] = &inner[..]
            && name == "options"
            && args.delimiter() == Delimiter::Parenthesis
        {
            let args: Vec<TokenTree> = args.stream().into_iter().collect();
            for item in split_commas(&args).iter().filter(|i| !i.is_empty()) {
                option(item, &mut options)?;
            }
            return Ok(Input { body: Body::Inline(trees[3..].iter().cloned().collect()), options });
        }
        if !matches!(inner.first(), Some(TokenTree::Ident(i)) if i == "doc") {
            return Err(OptionError {
                message: "the only attribute `cnn!` takes is `#![options(...)]`".into(),
                span: attr.span(),
            });
        }
    }
    Ok(Input { body: Body::Inline(input), options })
}

/// One `key = value` or `set(...)`.
fn option(item: &[TokenTree], options: &mut cnnc_emit::Options) -> Result<(), OptionError> {
    let Some(TokenTree::Ident(key)) = item.first() else {
        let span = item.first().map_or(Span::call_site(), TokenTree::span);
        return Err(OptionError { message: format!("expected an option name, one of {NAMES}"), span });
    };
    let name = key.to_string();
    if name == "set" {
        return set(item, options);
    }
    let value = match item {
        [_, TokenTree::Punct(eq), value @ ..] if eq.as_char() == '=' && !value.is_empty() => value,
        _ => return Err(OptionError { message: format!("expected `{name} = ...`"), span: key.span() }),
    };
    match name.as_str() {
        "model" => {
            let (model, _) = match value {
                [TokenTree::Ident(i)] => (i.to_string(), i.span()),
                _ => string_literal(value, key.span(), "`model` takes a model name: `model = resnet18`")?,
            };
            options.lower.model = Some(model);
        }
        "shape" => options.lower.input_shape = Some(shape(value, key.span())?),
        "train" => {
            let choice = word(value, key.span(), "`train` takes sgd, adam, rmsprop or gradients")?;
            let optimizer = match choice.as_str() {
                "sgd" => Some(Optimizer::Sgd(SGD)),
                "adam" => Some(Optimizer::Adam(ADAM)),
                "rmsprop" => Some(Optimizer::RmsProp(RMSPROP)),
                "gradients" => None,
                _ => return Err(bad(value, format!("unknown optimiser `{choice}`: sgd, adam, rmsprop or gradients"))),
            };
            let loss = options.training.and_then(|t| t.loss);
            options.training = Some(cnnc_emit::Training { loss, optimizer });
        }
        "loss" => {
            let choice = word(value, key.span(), "`loss` takes cross_entropy, mse or l1")?;
            let loss = match choice.as_str() {
                "cross_entropy" => Loss::CrossEntropy,
                "mse" => Loss::Mse,
                "l1" => Loss::L1,
                _ => return Err(bad(value, format!("unknown loss `{choice}`: cross_entropy, mse or l1"))),
            };
            let optimizer = options.training.map_or(Some(Optimizer::Sgd(SGD)), |t| t.optimizer);
            options.training = Some(cnnc_emit::Training { loss: Some(loss), optimizer });
        }
        "std" => options.module.std = boolean(value, key.span(), "std")?,
        "winograd" => options.module.winograd = boolean(value, key.span(), "winograd")?,
        "file" => {
            return Err(OptionError {
                message: "`file = \"...\"` comes first, as in `cnn!(file = \"models/x.cnn\", ...)`, and replaces an inline model".into(),
                span: key.span(),
            });
        }
        _ => {
            let hint = cnnc_diag::did_you_mean(&name, KEYS.iter().copied())
                .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
            return Err(OptionError {
                message: format!("unknown option `{name}`{hint} (options: {NAMES})"),
                span: key.span(),
            });
        }
    }
    Ok(())
}

const KEYS: &[&str] = &["file", "model", "shape", "set", "train", "loss", "std", "winograd"];
const NAMES: &str = "`model`, `shape`, `set(...)`, `train`, `loss`, `std`, `winograd` (and `file` first)";

/// `true` or `false`, the value of option `name`.
fn boolean(value: &[TokenTree], span: Span, name: &str) -> Result<bool, OptionError> {
    let message = format!("`{name}` takes true or false");
    match word(value, span, &message)?.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(value, message)),
    }
}

/// `set(name = value, ...)`: each value is the text of an expression, as `--set` takes it.
fn set(item: &[TokenTree], options: &mut cnnc_emit::Options) -> Result<(), OptionError> {
    let [_, TokenTree::Group(args)] = item else {
        return Err(OptionError { message: "expected `set(name = value, ...)`".into(), span: item[0].span() });
    };
    let args: Vec<TokenTree> = args.stream().into_iter().collect();
    for pair in split_commas(&args).iter().filter(|p| !p.is_empty()) {
        match pair {
            [TokenTree::Ident(name), TokenTree::Punct(eq), value @ ..] if eq.as_char() == '=' && !value.is_empty() => {
                let text: TokenStream = value.iter().cloned().collect();
                options.lower.overrides.push((name.to_string(), text.to_string()));
            }
            _ => return Err(OptionError { message: "expected `name = value`".into(), span: pair[0].span() }),
        }
    }
    Ok(())
}

/// `[3, 64, 64]`.
fn shape(value: &[TokenTree], at: Span) -> Result<Vec<usize>, OptionError> {
    let message = "`shape` takes the input shape without the batch: `shape = [3, 64, 64]`";
    let [TokenTree::Group(g)] = value else { return Err(OptionError { message: message.into(), span: at }) };
    if g.delimiter() != Delimiter::Bracket {
        return Err(OptionError { message: message.into(), span: g.span() });
    }
    let dims: Vec<TokenTree> = g.stream().into_iter().collect();
    let mut shape = Vec::new();
    for dim in split_commas(&dims).iter().filter(|d| !d.is_empty()) {
        match dim {
            [TokenTree::Literal(l)] => match l.to_string().parse::<usize>() {
                Ok(n) if n > 0 => shape.push(n),
                _ => return Err(OptionError { message: "a dimension is a positive integer".into(), span: l.span() }),
            },
            _ => return Err(OptionError { message: message.into(), span: dim[0].span() }),
        }
    }
    if shape.is_empty() {
        return Err(OptionError { message: message.into(), span: g.span() });
    }
    Ok(shape)
}

/// A single identifier (or `true`/`false`).
fn word(value: &[TokenTree], at: Span, message: &str) -> Result<String, OptionError> {
    match value {
        [TokenTree::Ident(i)] => Ok(i.to_string()),
        _ => Err(OptionError { message: message.into(), span: value.first().map_or(at, TokenTree::span) }),
    }
}

/// A plain string literal's value and span.
fn string_literal(value: &[TokenTree], at: Span, message: &str) -> Result<(String, Span), OptionError> {
    if let [TokenTree::Literal(l)] = value {
        let text = l.to_string();
        // A plain "..." without escapes (paths and names need none); raw and escaped strings
        // are refused rather than misread.
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
            && !inner.contains('\\')
        {
            return Ok((inner.to_string(), l.span()));
        }
    }
    Err(OptionError { message: message.into(), span: value.first().map_or(at, TokenTree::span) })
}

fn bad(value: &[TokenTree], message: String) -> OptionError {
    OptionError { message, span: value[0].span() }
}

/// Splits at top-level commas (groups are single trees, so nested commas stay inside).
fn split_commas(trees: &[TokenTree]) -> Vec<&[TokenTree]> {
    trees.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str) -> Result<Input, OptionError> {
        parse(text.parse().expect("tokens"))
    }

    #[test]
    fn file_form_with_options() {
        let i = input(r#"file = "models/r.cnn", model = r18, shape = [3, 64, 64], set(classes = 10, w = 2 * 8), train = adam, loss = mse, std = true"#)
            .expect("parses");
        let Body::File { path, .. } = &i.body else { panic!("a file") };
        assert_eq!(path, "models/r.cnn");
        assert_eq!(i.options.lower.model.as_deref(), Some("r18"));
        assert_eq!(i.options.lower.input_shape, Some(vec![3, 64, 64]));
        assert_eq!(
            i.options.lower.overrides,
            [("classes".to_string(), "10".to_string()), ("w".into(), "2 * 8".into())]
        );
        let t = i.options.training.expect("training");
        assert_eq!(t.loss, Some(Loss::Mse));
        assert!(matches!(t.optimizer, Some(Optimizer::Adam(_))));
        assert_eq!(i.options.module, cnnc_emit::Module { std: true, winograd: true });
        let i = input(r#"file = "m.cnn", std = false, winograd = false"#).expect("parses");
        assert_eq!(i.options.module, cnnc_emit::Module { std: false, winograd: false });
    }

    #[test]
    fn inline_form_with_and_without_options() {
        let i = input("#![options(train = gradients)] model m { input x: [4] x -> fc(2) }").expect("parses");
        assert_eq!(i.options.training.map(|t| t.optimizer), Some(None));
        let Body::Inline(tokens) = i.body else { panic!("inline") };
        assert!(tokens.to_string().starts_with("model m"));
        let i = input("/// docs\nmodel m { input x: [4] x -> fc(2) }").expect("parses");
        assert!(i.options.training.is_none());
        assert!(matches!(i.body, Body::Inline(_)));
    }

    #[test]
    fn mistakes_name_the_option() {
        let e = input(r#"file = "x.cnn", trian = sgd"#).unwrap_err();
        assert!(e.message.contains("unknown option `trian`; did you mean `train`?"), "{}", e.message);
        let e = input(r#"file = "x.cnn", train = sgdd"#).unwrap_err();
        assert!(e.message.contains("unknown optimiser `sgdd`"), "{}", e.message);
        let e = input(r#"file = "x.cnn", winograd = no"#).unwrap_err();
        assert!(e.message.contains("`winograd` takes true or false"), "{}", e.message);
        let e = input(r#"file = "x.cnn", shape = [3, 0]"#).unwrap_err();
        assert!(e.message.contains("positive"), "{}", e.message);
        let e = input("file = models").unwrap_err();
        assert!(e.message.contains("string literal"), "{}", e.message);
        let e = input(r#"#![options(file = "x.cnn")] model m {}"#).unwrap_err();
        assert!(e.message.contains("comes first"), "{}", e.message);
        let e = input("#![derive(Debug)] model m {}").unwrap_err();
        assert!(e.message.contains("#![options(...)]"), "{}", e.message);
    }
}
