//! The registry of stable diagnostic codes. `docs/errors.md` explains each with an example and
//! `cnnc explain CODE` prints that explanation; a test keeps the two in step.

/// A stable diagnostic code such as `E0301`. Codes are never reused for another meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub &'static str);

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

pub struct CodeInfo {
    pub code: Code,
    pub title: &'static str,
}

macro_rules! codes {
    ($($name:ident = $code:literal, $title:literal;)*) => {
        impl Code {
            $(#[doc = $title] pub const $name: Code = Code($code);)*
        }
        /// Every code with its one-line title, in code order.
        pub const CODES: &[CodeInfo] = &[$(CodeInfo { code: Code($code), title: $title }),*];
    };
}

codes! {
    // Syntax (E01xx).
    SYNTAX = "E0100", "syntax error";
    NESTING_TOO_DEEP = "E0101", "brackets nested too deeply";
    BAD_NUMBER = "E0102", "number literal out of range";
    UNCLOSED_DELIMITER = "E0103", "unclosed or mismatched bracket, or unterminated comment";
    // Names and arguments (E02xx).
    UNKNOWN_LAYER = "E0200", "unknown layer or block";
    UNKNOWN_ARGUMENT = "E0201", "unknown argument";
    MISSING_ARGUMENT = "E0202", "missing argument";
    DUPLICATE_ARGUMENT = "E0203", "argument given twice or too many positional arguments";
    BAD_ARGUMENT = "E0204", "argument of the wrong type or out of range";
    UNKNOWN_NAME = "E0205", "unknown name";
    DUPLICATE_LAYER_NAME = "E0206", "two layers with the same name";
    DUPLICATE_DEFINITION = "E0207", "model, block or parameter defined twice";
    RECURSIVE_BLOCK = "E0208", "block that uses itself";
    TYPE_MISMATCH = "E0209", "value of the wrong kind";
    BAD_INPUT_DECLARATION = "E0210", "missing, repeated or misplaced `input`";
    NO_MODEL = "E0211", "no model to compile";
    SHADOWED_BUILTIN = "E0212", "block named like a built-in layer";
    ARITHMETIC = "E0213", "arithmetic error in a parameter expression";
    UNKNOWN_FREEZE_PATH = "E0214", "`freeze` path that names no layer";
    // Shapes (E03xx).
    KERNEL_TOO_LARGE = "E0300", "kernel larger than the padded input";
    SHAPE_MISMATCH_ADD = "E0301", "add of tensors with different shapes";
    SHAPE_MISMATCH_CONCAT = "E0302", "concat of tensors with different spatial sizes";
    GROUPS_MISMATCH = "E0303", "groups do not divide the channels";
    SHAPE_ZERO = "E0304", "a dimension reaches zero";
    SHAPE_OVERFLOW = "E0305", "a size overflows";
    RANK_MISMATCH = "E0306", "layer given a tensor of the wrong rank";
    BAD_LAYER_CONFIG = "E0307", "layer configuration that cannot work";
    // Limits (E04xx).
    TOO_LARGE = "E0400", "model too large to elaborate";
    // Warnings (W0xxx).
    UNUSED_VALUE = "W0200", "value computed but never used";
    FREEZES_NOTHING = "W0201", "`freeze` of layers without trainable parameters";
    STRIDE_REMAINDER = "W0300", "stride leaves input rows or columns unused";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_sorted() {
        for pair in CODES.windows(2) {
            assert!(pair[0].code.0 < pair[1].code.0 || pair[1].code.0.starts_with('W'), "{}", pair[1].code);
        }
        let mut all: Vec<_> = CODES.iter().map(|c| c.code.0).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), CODES.len());
    }
}
