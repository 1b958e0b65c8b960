//! The single-source rule: `source::files()` is byte-identical to the kernel files on disk,
//! lists every module of `lib.rs` in an order where dependencies come first (with the
//! dependencies each file really names), and the files are pasteable: no `crate::` paths, no
//! `#[macro_export]`, and `core`-only files name nothing of `std` (not even the float
//! methods `core` lacks).

use cnnc_kernels::source::{self, Needs};
use std::collections::BTreeSet;
use std::path::Path;

fn src_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
}

#[test]
fn files_are_the_files_on_disk_and_every_module() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    let declared: BTreeSet<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod")).map(|l| l.trim().trim_end_matches(';')).collect();
    let listed: BTreeSet<&str> = source::files().iter().map(|f| f.module).collect();
    assert_eq!(declared, listed, "lib.rs modules and source::files() differ");
    assert!(!lib.lines().any(|l| l.trim_start().starts_with("mod ")), "every module is `pub mod`");
    for f in source::files() {
        let disk = std::fs::read_to_string(src_dir().join(format!("{}.rs", f.module))).unwrap();
        assert!(disk == f.text, "{}.rs differs from source::files()", f.module);
    }
}

/// The sibling modules a file names (`super::x`), plus `simd` and `x86` for `isa_fn!` users
/// (the macro's expansion names them); the macro's own body in `simd` does not count.
fn named_deps(module: &str, text: &str) -> BTreeSet<String> {
    let text = if module == "simd" { &text[..text.find("macro_rules! isa_fn").unwrap()] } else { text };
    let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let text = code.as_str();
    let mut deps = BTreeSet::new();
    for (i, _) in text.match_indices("super::") {
        let name: String = text[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if source::files().iter().any(|f| f.module == name) && name != module {
            deps.insert(name);
        }
    }
    if text.contains("isa_fn!") && module != "simd" {
        deps.insert("simd".into());
        deps.insert("x86".into());
    }
    deps
}

#[test]
fn dependencies_are_declared_and_come_first() {
    let files = source::files();
    for (i, f) in files.iter().enumerate() {
        let named = named_deps(f.module, f.text);
        let declared: BTreeSet<String> = f.deps.iter().map(|d| d.to_string()).collect();
        assert_eq!(named, declared, "{}: declared dependencies differ from the ones it names", f.module);
        for d in f.deps {
            let at = files.iter().position(|g| g.module == *d).unwrap();
            assert!(at < i, "{} comes before its dependency {d}", f.module);
        }
    }
    let text = source::module_text(&["conv_fwd"]);
    for m in ["conv_fwd", "conv", "tile", "act", "vmath", "simd", "x86", "fmath", "error", "par", "view"] {
        assert!(text.contains(&format!("pub mod {m} {{")), "closure of conv_fwd lacks {m}");
    }
    assert!(!text.contains("pub mod threads {") && !text.contains("pub mod source {"));
}

#[test]
fn files_are_pasteable() {
    // Float methods std has and core lacks (1.95).
    let std_only = [
        ".sqrt()",
        ".round_ties_even()",
        ".floor()",
        ".ceil()",
        ".fract()",
        ".trunc()",
        ".ln()",
        ".exp()",
        ".powi(",
        ".powf(",
        ".ln_1p()",
        ".exp_m1()",
        ".tanh()",
    ];
    for f in source::files().iter().filter(|f| f.needs != Needs::Crate) {
        let code: String = f.text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        assert!(!code.contains("crate::"), "{} names `crate::` (siblings are `super::`)", f.module);
        assert!(!code.contains("macro_export"), "{} exports a macro", f.module);
        assert!(!code.contains("extern crate"), "{} names an external crate", f.module);
        if f.needs == Needs::Core {
            assert!(!code.contains("std::"), "{} is core-only but names std", f.module);
            for m in std_only {
                assert!(!code.contains(m), "{} is core-only but calls {m}", f.module);
            }
            for v in ["Vec<", "vec!", "Box<", "String"] {
                assert!(!code.contains(v), "{} is core-only but allocates ({v})", f.module);
            }
        }
    }
}
