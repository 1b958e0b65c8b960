//! The fixed code every generated module carries besides its layers: the support items
//! (`src/support/*.rs`, written as plain Rust, pasted verbatim) and the kernels' own source
//! (`cnnc_kernels::source`), each cut to what the module uses.
//!
//! Support files are sequences of items, each introduced by a `// @item NAME [kernel modules]`
//! line. An item is included when the generated code (or another included item) names
//! something it defines; the kernel modules it lists, and those the generated code names as
//! `k::module::...`, give the kernels closure. Neither is run through `syn`, so their comments
//! (every `// SAFETY:` included) survive as written.

/// One support item: the names it defines, the kernel modules it uses, its text.
#[derive(Clone, Debug)]
pub struct Item {
    pub defines: Vec<String>,
    pub kernels: Vec<String>,
    pub text: String,
}

const CORE: &str = include_str!("support/core.rs");
const OPS: &str = include_str!("support/ops.rs");
const STD: &str = include_str!("support/std.rs");
const NO_STD: &str = include_str!("support/nostd.rs");

fn parse(file: &str) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for line in file.lines() {
        if let Some(rest) = line.strip_prefix("// @item ") {
            let mut words = rest.split_whitespace();
            let _name = words.next();
            items.push(Item { defines: Vec::new(), kernels: words.map(str::to_string).collect(), text: String::new() });
            continue;
        }
        let Some(item) = items.last_mut() else { continue };
        if let Some(name) = defined(line)
            && !item.defines.contains(&name)
        {
            item.defines.push(name);
        }
        item.text.push_str(line);
        item.text.push('\n');
    }
    for item in &mut items {
        let trimmed = item.text.trim_end().to_string();
        item.text = trimmed + "\n";
    }
    items
}

/// The name a top-level item line defines (`pub const fn view(` gives `view`).
fn defined(line: &str) -> Option<String> {
    let mut rest = line.strip_prefix("pub ").unwrap_or(line);
    rest = rest.strip_prefix("const fn ").map_or(rest, |r| r);
    let rest = ["fn ", "struct ", "enum ", "const ", "type ", "static "]
        .iter()
        .find_map(|k| rest.strip_prefix(k))
        .or_else(|| (line.starts_with("pub const fn ") || line.starts_with("const fn ")).then_some(rest))?;
    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

/// Whether `word` occurs in `text` as a whole identifier.
pub fn mentions_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The kernel modules `text` names as `k::m::` or `cnnc_kernels::m::`.
fn kernel_modules(text: &str, out: &mut Vec<String>) {
    for prefix in ["k::", "cnnc_kernels::"] {
        for (at, _) in text.match_indices(prefix) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &text[at + prefix.len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if rest[name.len()..].starts_with("::") && !out.contains(&name) {
                out.push(name);
            }
        }
    }
}

/// The support text and the kernel modules that `generated` needs.
pub fn select(generated: &str, std: bool) -> (String, Vec<String>) {
    let mut all = parse(CORE);
    all.extend(parse(OPS));
    all.extend(parse(if std { STD } else { NO_STD }));
    let mut chosen = vec![false; all.len()];
    let mut wanted = generated.to_string();
    loop {
        let mut added = false;
        for (k, item) in all.iter().enumerate() {
            if !chosen[k] && item.defines.iter().any(|d| mentions_word(&wanted, d)) {
                chosen[k] = true;
                wanted.push('\n');
                wanted.push_str(&item.text);
                added = true;
            }
        }
        if !added {
            break;
        }
    }
    let mut text = String::new();
    let mut kernels = Vec::new();
    kernel_modules(generated, &mut kernels);
    for (item, _) in all.iter().zip(&chosen).filter(|(_, c)| **c) {
        text.push('\n');
        text.push_str(&item.text);
        for m in &item.kernels {
            if !kernels.contains(m) {
                kernels.push(m.clone());
            }
        }
        kernel_modules(&item.text, &mut kernels);
    }
    (text, kernels)
}

/// `mod cnnc_kernels { .. }` with the files `modules` need, exactly as the kernels crate
/// gives them.
pub fn kernels_text(modules: &[String]) -> String {
    let names: Vec<&str> = modules.iter().map(String::as_str).collect();
    cnnc_kernels::source::module_text(&names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_know_what_they_define() {
        let items = parse(CORE);
        let place = items.iter().find(|i| i.defines.contains(&"Place".to_string())).unwrap();
        assert_eq!(place.kernels, ["view"]);
        assert!(items.iter().any(|i| i.defines == ["locate"]));
        assert!(mentions_word("x = Error::kernel(a)", "Error"));
        assert!(!mentions_word("MyError::x", "Error"));
        let mut m = Vec::new();
        kernel_modules("k::conv_fwd::forward(self::cnnc_kernels::view::View, kk::x::y)", &mut m);
        assert_eq!(m, ["conv_fwd", "view"]);
    }

    #[test]
    fn selection_follows_references() {
        let (text, kernels) = select("fn f() -> Result<(), Error> { super::locate(..) }", true);
        assert!(text.contains("fn safetensors_entries"), "locate needs the header scanner");
        assert!(text.contains("pub struct Name"));
        assert!(!text.contains("fn fc_forward"));
        assert!(kernels.contains(&"error".to_string()));
    }
}
