//! Rust identifiers for layer, value and parameter names (`layer1.0.conv1` becomes the function
//! `layer1_0_conv1` and the constant `LAYER1_0_CONV1`), unique within their namespace.

use proc_macro2::{Ident, Span};
use std::collections::HashSet;

/// Words Rust reserves (strict and reserved keywords of the 2024 edition) and the names the
/// generated items use themselves: a layer so named gets a trailing underscore.
const RESERVED: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn",
    "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self",
    "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where", "while", "abstract", "become",
    "box", "do", "final", "macro", "override", "priv", "try", "typeof", "unsized", "virtual", "yield", "union", "cx",
    "run",
];

/// A snake-case identifier for any name: ASCII letters and digits kept (lowercased), every
/// other run of characters one underscore, a leading digit or a reserved word prefixed.
pub fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut gap = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "l_");
    }
    if RESERVED.contains(&out.as_str()) {
        out.push('_');
    }
    out
}

/// Hands out unique snake-case identifiers, adding `_2`, `_3`, ... on collisions.
#[derive(Default)]
pub struct Names {
    used: HashSet<String>,
}

impl Names {
    pub fn unique(&mut self, name: &str) -> String {
        let base = snake(name);
        let mut candidate = base.clone();
        let mut k = 2;
        while !self.used.insert(candidate.clone()) {
            candidate = format!("{base}_{k}");
            k += 1;
        }
        candidate
    }
}

pub fn ident(s: &str) -> Ident {
    Ident::new(s, Span::call_site())
}

/// The SCREAMING_CASE constant for a snake-case identifier.
pub fn constant(snake: &str) -> Ident {
    ident(&snake.trim_end_matches('_').to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_identifiers() {
        assert_eq!(snake("layer1.0.conv1"), "layer1_0_conv1");
        assert_eq!(snake("conv1.weight.momentum_buffer"), "conv1_weight_momentum_buffer");
        assert_eq!(snake("0.conv"), "l_0_conv");
        assert_eq!(snake("type"), "type_");
        assert_eq!(snake("Fc-6"), "fc_6");
        let mut n = Names::default();
        assert_eq!(n.unique("a.b"), "a_b");
        assert_eq!(n.unique("a_b"), "a_b_2");
        assert_eq!(n.unique("a b"), "a_b_3");
        assert_eq!(constant("type_").to_string(), "TYPE");
    }
}
