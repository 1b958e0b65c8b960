//! The example models built into the compiler, so that `cnnc demo` (and later the REPL and the
//! tests of every front door) run with no file to fetch. The sources are the files in
//! `examples/`, embedded at build time so the binary and the repository cannot disagree.

/// One built-in example: the file name it is shown under, and its source.
#[derive(Clone, Copy, Debug)]
pub struct Example {
    pub file: &'static str,
    pub source: &'static str,
}

/// LeCun et al. 1998: the smallest classic CNN, quick enough to compile, run and train anywhere.
pub const LENET5: Example = Example { file: "lenet5.cnn", source: include_str!("../../../examples/lenet5.cnn") };

/// He et al. 2016, laid out as torchvision's `resnet18`.
pub const RESNET18: Example = Example { file: "resnet18.cnn", source: include_str!("../../../examples/resnet18.cnn") };

/// The LeNet-style network of the built-in digits, which `cnnc demo` trains.
pub const DIGITS: Example = Example { file: "digits.cnn", source: include_str!("../../../examples/digits.cnn") };

/// Every built-in example, smallest first.
pub const ALL: &[Example] = &[DIGITS, LENET5, RESNET18];

impl Example {
    /// The example as a source file, named `examples/<file>` as in the repository.
    pub fn source_file(&self) -> cnnc_diag::SourceFile {
        cnnc_diag::SourceFile::new(format!("examples/{}", self.file), self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, check_models};

    #[test]
    fn built_in_examples_check_cleanly() {
        for example in ALL {
            let checked = check_models(&example.source_file(), &Options::default());
            assert!(checked.diagnostics.is_empty(), "{}: {:?}", example.file, checked.diagnostics);
            assert_eq!(checked.models.len(), 1, "{}", example.file);
        }
    }
}
