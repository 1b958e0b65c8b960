//! Token-level mutations of `.cnn` sources and random token soups, for robustness testing.
//!
//! A source is cut into tokens (whitespace and comments kept, so that unmutated text survives
//! as written); a mutation deletes, duplicates or swaps ranges of tokens, replaces numbers with
//! extreme values, or drops in tokens from the language's vocabulary. Everything is driven by
//! plain integers, so proptest strategies and byte-driven fuzzers can both steer it.

/// Keywords, names, layer names, numbers (ordinary and hostile), brackets and operators.
pub fn vocabulary() -> Vec<String> {
    const WORDS: &str = "model block input let freeze if else for in true false x y a b n i conv1 layer1 features \
                         k out stride pad dilation groups depthwise bias ceil levels p eps include_pad";
    const PUNCTUATION: &str = "( ) [ ] { } , : ; = -> .. + - * / % == != < <= > >= && || ! _";
    let mut v: Vec<String> = WORDS.split_whitespace().map(str::to_string).collect();
    v.extend(cnnc_lower::layers::LAYERS.iter().map(|(name, _)| name.to_string()));
    v.extend(cnnc_lower::layers::VALUE_FUNCTIONS.iter().map(|s| s.to_string()));
    v.extend(NUMBERS.iter().map(|s| s.to_string()));
    v.extend(PUNCTUATION.split_whitespace().map(str::to_string));
    // Comments, a line break, and characters outside ASCII.
    v.extend(["//c\n", "/*c*/", "\n", "é", "\u{0}"].map(str::to_string));
    v
}

/// Numbers a mutation substitutes for a number: small, boundary and huge.
pub const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "7",
    "64",
    "65536",
    "1000000",
    "4294967296",
    "281474976710656",
    "9223372036854775807",
    "9223372036854775808",
    "99999999999999999999",
    "1.5",
    "0.0",
    "1e308",
    "1e-320",
    "1_0",
];

/// Splits a source into tokens; concatenating them gives the source back.
pub fn tokenize(src: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut rest = src;
    while !rest.is_empty() {
        let len = token_len(rest);
        tokens.push(&rest[..len]);
        rest = &rest[len..];
    }
    tokens
}

fn token_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let first = s.chars().next().expect("non-empty");
    if s.starts_with("//") {
        return s.find('\n').unwrap_or(s.len());
    }
    if let Some(body) = s.strip_prefix("/*") {
        return body.find("*/").map_or(s.len(), |p| p + 4);
    }
    if first.is_whitespace() {
        return s.find(|c: char| !c.is_whitespace()).unwrap_or(s.len());
    }
    if first.is_ascii_alphanumeric() || first == '_' {
        let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
        let mut n = bytes.iter().take_while(|b| word(b)).count();
        // A decimal fraction stays with its number: `1.5`, but not `0..n`.
        if first.is_ascii_digit() && bytes.get(n) == Some(&b'.') && bytes.get(n + 1).is_some_and(u8::is_ascii_digit) {
            n += 1 + bytes[n + 1..].iter().take_while(|b| word(b)).count();
        }
        return n;
    }
    for op in ["->", "..", "==", "!=", "<=", ">=", "&&", "||"] {
        if s.starts_with(op) {
            return 2;
        }
    }
    first.len_utf8()
}

fn is_number(token: &str) -> bool {
    token.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

fn is_code(token: &str) -> bool {
    !(token.trim().is_empty() || token.starts_with("//") || token.starts_with("/*"))
}

/// One edit, its operands reduced modulo whatever they index.
#[derive(Clone, Copy, Debug)]
pub struct Mutation {
    pub kind: u8,
    pub a: u32,
    pub b: u32,
    pub c: u32,
}

/// How many kinds of [`Mutation`] there are.
pub const KINDS: u8 = 7;

/// Applies the mutations in turn to the tokens of `src`.
pub fn mutate(src: &str, mutations: &[Mutation]) -> String {
    let vocab = vocabulary();
    let mut tokens: Vec<String> = tokenize(src).into_iter().map(str::to_string).collect();
    for m in mutations {
        apply(&mut tokens, *m, &vocab);
    }
    tokens.concat()
}

fn apply(tokens: &mut Vec<String>, m: Mutation, vocab: &[String]) {
    let n = tokens.len();
    if n == 0 {
        tokens.push(vocab[m.a as usize % vocab.len()].clone());
        return;
    }
    // A range of up to 1 + c % 12 tokens starting at a.
    let start = m.a as usize % n;
    let end = (start + 1 + m.c as usize % 12).min(n);
    match m.kind % KINDS {
        0 => {
            tokens.drain(start..end);
        }
        1 => {
            let copy: Vec<String> = tokens[start..end].to_vec();
            let at = m.b as usize % (n + 1);
            tokens.splice(at..at, copy);
        }
        2 => {
            // Swap two ranges of code tokens (or one token each when they overlap).
            let other = m.b as usize % n;
            if other >= end || other + (end - start) <= start {
                let len = (end - start).min(n - other);
                for k in 0..len {
                    tokens.swap(start + k, other + k);
                }
            } else {
                tokens.swap(start, other);
            }
        }
        3 => {
            // Replace the a-th number (counting around) with an extreme value.
            let numbers: Vec<usize> = (0..n).filter(|&i| is_number(&tokens[i])).collect();
            if let Some(&i) = numbers.get(m.a as usize % numbers.len().max(1)) {
                tokens[i] = NUMBERS[m.b as usize % NUMBERS.len()].to_string();
            }
        }
        4 => {
            let code: Vec<usize> = (0..n).filter(|&i| is_code(&tokens[i])).collect();
            if let Some(&i) = code.get(m.a as usize % code.len().max(1)) {
                tokens[i] = vocab[m.b as usize % vocab.len()].clone();
            }
        }
        5 => {
            let at = m.b as usize % (n + 1);
            tokens.insert(at, format!(" {} ", vocab[m.c as usize % vocab.len()]));
        }
        _ => {
            // Duplicate a range many times (loops, chains and nesting grow fast this way).
            let copy: Vec<String> = tokens[start..end].to_vec();
            let times = 1 + m.b as usize % 40;
            let at = end;
            let repeated: Vec<String> = std::iter::repeat_n(copy, times).flatten().collect();
            tokens.splice(at..at, repeated);
        }
    }
}

/// A soup of vocabulary tokens, separated by single spaces.
pub fn soup(indices: &[u32]) -> String {
    let vocab = vocabulary();
    let words: Vec<&str> = indices.iter().map(|&i| vocab[i as usize % vocab.len()].as_str()).collect();
    words.join(" ")
}

/// The example and test sources mutations start from: `examples/*.cnn` and `tests/data/ok/*.cnn`.
pub fn seeds() -> Vec<(String, String)> {
    let root = crate::workspace_root();
    let mut out = Vec::new();
    for dir in [root.join("examples"), root.join("tests/data/ok")] {
        for path in crate::cnn_files(&dir) {
            let text = std::fs::read_to_string(&path).expect("readable seed");
            out.push((path.file_name().expect("file name").to_string_lossy().into_owned(), text));
        }
    }
    out
}

/// Byte-driven mutation, for fuzzers: picks a seed with the first byte and reads mutations from
/// the rest, seven bytes each.
pub fn mutate_from_bytes(seeds: &[(String, String)], data: &[u8]) -> Option<String> {
    let (&pick, rest) = data.split_first()?;
    let (_, src) = seeds.get(pick as usize % seeds.len().max(1))?;
    let mutations: Vec<Mutation> = rest
        .chunks_exact(7)
        .take(16)
        .map(|c| Mutation {
            kind: c[0],
            a: u32::from(u16::from_le_bytes([c[1], c[2]])),
            b: u32::from(u16::from_le_bytes([c[3], c[4]])),
            c: u32::from(u16::from_le_bytes([c[5], c[6]])),
        })
        .collect();
    Some(mutate(src, &mutations))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_concatenate_to_the_source() {
        let src = "model m(a = 1.5) { input x: [1, 2, 2] // c\n x -> for i in 0..3 { relu } /* b */ }";
        let tokens = tokenize(src);
        assert_eq!(tokens.concat(), src);
        assert!(tokens.contains(&"1.5") && tokens.contains(&"..") && tokens.contains(&"->"));
        assert!(tokens.contains(&"// c") && tokens.contains(&"/* b */"));
        assert!(tokens.contains(&"0") && tokens.contains(&"3"));
    }

    #[test]
    fn mutations_change_the_source() {
        let src = "model m { input x: [1, 8, 8] x -> conv(4, k=3) }";
        let replaced = mutate(src, &[Mutation { kind: 3, a: 4, b: 0, c: 0 }]);
        assert_eq!(replaced, "model m { input x: [1, 8, 8] x -> conv(4, k=0) }");
        let deleted = mutate(src, &[Mutation { kind: 0, a: 0, b: 0, c: 1 }]);
        assert_eq!(deleted, "m { input x: [1, 8, 8] x -> conv(4, k=3) }");
    }
}
