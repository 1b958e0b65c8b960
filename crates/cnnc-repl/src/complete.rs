//! Tab completion: commands after `:`, file names after the commands that take files, layer
//! names after `:viz filters|maps`, argument names inside a layer's parentheses, and layer
//! kinds, keywords and the session's block and model names everywhere else.

use crate::commands::COMMANDS;
use cnnc_lower::layers::{LAYERS, signature};

/// The names completion offers that the session defines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vocabulary {
    pub blocks: Vec<String>,
    pub models: Vec<String>,
    /// The current model's layer names.
    pub layers: Vec<String>,
}

/// What completes the word before `pos`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// These words replace `line[start..pos]`.
    Words { start: usize, words: Vec<String> },
    /// A file name (the caller's file-name completer does it).
    Path,
}

const KEYWORDS: &[&str] = &["model", "block", "input", "let", "freeze", "for", "in", "if", "else"];
const FILE_COMMANDS: &[&str] = &["load", "save", "weights", "dot", "run"];

/// The completion of `line` at byte `pos`.
pub fn complete(line: &str, pos: usize, vocab: &Vocabulary) -> Completion {
    let pos = pos.min(line.len());
    let before = &line[..pos];
    let start = before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).map_or(0, |i| i + 1);
    let word = &before[start..];
    let words = |candidates: Vec<String>| {
        let mut words: Vec<String> = candidates.into_iter().filter(|c| c.starts_with(word)).collect();
        words.sort();
        words.dedup();
        Completion::Words { start, words }
    };
    if let Some(command) = before.trim_start().strip_prefix(':') {
        let parts: Vec<&str> = command.split_whitespace().collect();
        let typing_first = !command.contains(char::is_whitespace);
        if typing_first {
            return words(COMMANDS.iter().map(|c| c.0.to_string()).collect());
        }
        let done = parts.len() - usize::from(!before.ends_with(char::is_whitespace));
        return match (parts[0], done) {
            ("viz", 1) => words(vec!["filters".into(), "maps".into()]),
            ("viz", 2) => words(vocab.layers.clone()),
            ("model", 1) => words(vocab.models.clone()),
            ("ir", 1) => words(cnnc_driver::valid_pass_names().split(", ").map(str::to_string).collect()),
            (name, _) if FILE_COMMANDS.contains(&name) || name == "viz" => Completion::Path,
            _ => Completion::Words { start, words: Vec::new() },
        };
    }
    if let Some(params) = open_call(before).and_then(signature) {
        return words(params.iter().map(|p| format!("{}=", p.name)).collect());
    }
    let mut all: Vec<String> = LAYERS.iter().map(|(name, _)| name.to_string()).collect();
    all.extend(KEYWORDS.iter().map(|k| k.to_string()));
    // Model names are not layers: `:model` completes them.
    all.extend(vocab.blocks.iter().cloned());
    words(all)
}

/// The name of the innermost call whose parenthesis is still open before the cursor.
fn open_call(before: &str) -> Option<&str> {
    let mut depth = 0usize;
    for (i, c) in before.char_indices().rev() {
        match c {
            ')' | ']' => depth += 1,
            '[' if depth > 0 => depth -= 1,
            '(' if depth > 0 => depth -= 1,
            '(' => {
                let head = before[..i].trim_end();
                let from = head.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |j| j + 1);
                return Some(&head[from..]);
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str, vocab: &Vocabulary) -> Vec<String> {
        match complete(line, line.len(), vocab) {
            Completion::Words { words, .. } => words,
            Completion::Path => vec!["<path>".into()],
        }
    }

    #[test]
    fn completes_each_kind_of_word() {
        let vocab = Vocabulary {
            blocks: vec!["basic".into()],
            models: vec!["lenet5".into(), "repl".into()],
            layers: vec!["c1".into(), "c3".into(), "fc".into()],
        };
        assert_eq!(words(":su", &vocab), ["summary"]);
        assert_eq!(words(":load exa", &vocab), ["<path>"]);
        assert_eq!(words(":viz f", &vocab), ["filters"]);
        assert_eq!(words(":viz filters c", &vocab), ["c1", "c3"]);
        assert_eq!(words(":model le", &vocab), ["lenet5"]);
        assert_eq!(words("x -> ma", &vocab), ["maxpool"]);
        assert_eq!(words("conv(8, st", &vocab), ["stride="]);
        assert_eq!(words("conv(8, k=(3, 3), pa", &vocab), ["pad="]);
        assert_eq!(words("ba", &vocab), ["basic"]);
        assert!(words("conv(8, k=3) -> b", &vocab).contains(&"bn".to_string()));
        assert_eq!(complete("relu", 2, &vocab), Completion::Words { start: 0, words: vec!["relu".into()] });
    }
}
