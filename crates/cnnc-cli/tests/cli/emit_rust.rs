//! `cnnc emit-rust` and its short form `cnnc FILE -o model.rs`: the module written (and that it
//! compiles, by `cargo check` of a scratch crate), and each way it can fail, from a table: exit
//! code, the words on stderr, and that no file (or no partial file) is left behind.

use crate::common::{cnnc, root, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;

const LENET: &str = "examples/lenet5.cnn";

/// A source with a shape error on line 5.
const BAD: &str = "// The residual branch halves the size; the shortcut does not.\nmodel bad {\n    input x: [16, 32, 32]\n    \
                   let branch = x -> conv(32, k=3, stride=2, pad=1) -> relu\n    add(branch, x) -> relu\n}\n";

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-emit-rust").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// The names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    names.sort();
    names
}

#[test]
fn the_short_form_the_command_and_stdout_write_the_same_module() {
    let dir = scratch("forms");
    let (short, long) = (dir.join("short.rs"), dir.join("long.rs"));
    let o = cnnc(&["--color", "never", LENET, "-o", &s(&short)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report = stdout(&o);
    assert!(report.starts_with(&format!("wrote `{}`: model `lenet5` as a Rust module (", s(&short))), "{report}");
    assert!(report.trim_end().ends_with("): `Model`"), "{report}");
    let o = cnnc(&["emit-rust", LENET, "-o", &s(&long)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = cnnc(&["emit-rust", LENET]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&short).expect("written");
    assert_eq!(text, std::fs::read_to_string(&long).expect("written"));
    assert_eq!(stdout(&o), text, "no -o: the module on stdout");
    assert!(stderr(&o).starts_with("wrote standard output: model `lenet5`"), "the report on stderr: {}", stderr(&o));
    assert!(text.starts_with("//! Model `lenet5`, compiled by cnnc from `lenet5.cnn`: `Model`."), "{}", &text[..200]);
    // One function per layer, with the `.cnn` line in its doc comment.
    assert!(text.contains("pub const INPUT_0_LEN: usize = 1024;"));
    assert!(listing(&dir) == ["long.rs", "short.rs"], "no temporary file left: {:?}", listing(&dir));
}

/// Writes the module of LeNet-5 with a training step and the core-only module into one crate
/// and checks it with `cargo check`, warnings denied: what the command writes compiles.
#[test]
fn the_written_modules_compile() {
    let dir = scratch("compile");
    std::fs::create_dir_all(dir.join("src")).expect("src");
    let trainer = ["emit-rust", LENET, "--train", "--optimizer", "adam", "-o", &s(&dir.join("src/lenet5.rs"))];
    let o = cnnc(&trainer);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).trim_end().ends_with("`Model`, `Trainer`"), "{}", stdout(&o));
    let o = cnnc(&[LENET, "--no-std", "-o", &s(&dir.join("src/lenet5_core.rs"))]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("as a Rust module without std"), "{}", stdout(&o));
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"emitted\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n[workspace]\n",
    )
    .expect("manifest");
    std::fs::write(
        dir.join("src/lib.rs"),
        "//! Modules written by `cnnc emit-rust`.\n#![deny(warnings)]\npub mod lenet5;\npub mod lenet5_core;\n\n\
         /// The generated API, used as a caller would.\npub fn train_once() -> f32 {\n    \
         let mut t = lenet5::Trainer::from_seed(1).unwrap();\n    \
         let x = vec![0.5f32; lenet5::trainer::INPUT_0_LEN];\n    \
         let args = lenet5::StepArgs { lr: 1e-3, step: 1, seed: 0 };\n    \
         t.step(&x, &[3], 1, &args).unwrap()\n}\n",
    )
    .expect("lib.rs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["check", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("warning"), "cargo check of the written modules:\n{err}");
}

/// One way to fail: the arguments, the exit code, the words on stderr.
struct Failing {
    what: &'static str,
    args: &'static [&'static str],
    code: i32,
    needles: &'static [&'static str],
}

/// `{out}` is replaced by the destination in the case's scratch directory, `{bad}` by [`BAD`],
/// `{dir}` by the scratch directory itself.
const FAILING: &[Failing] = &[
    Failing {
        what: "a model with an error gets its diagnostic, with file, line and column",
        args: &["{bad}", "-o", "{out}"],
        code: 1,
        needles: &["error[E0", "bad.cnn:5:", "could not compile"],
    },
    Failing {
        what: "the same through emit-rust",
        args: &["emit-rust", "{bad}", "-o", "{out}"],
        code: 1,
        needles: &["error[E0", "bad.cnn:5:"],
    },
    Failing {
        what: "a destination in a directory that does not exist",
        args: &["emit-rust", LENET, "-o", "{dir}/no/such/dir/model.rs"],
        code: 2,
        needles: &[
            "error: cannot write the Rust module `",
            "No such file or directory",
            "= help: check that the directory",
        ],
    },
    Failing {
        what: "a destination that is a directory",
        args: &[LENET, "-o", "{dir}"],
        code: 2,
        needles: &["error: cannot write the Rust module `", "it is a directory"],
    },
    Failing {
        what: "a destination under a regular file",
        args: &[LENET, "-o", "{dir}/old.rs/model.rs"],
        code: 2,
        needles: &["error: cannot write the Rust module `"],
    },
    Failing {
        what: "the source as the destination",
        args: &["emit-rust", LENET, "-o", LENET],
        code: 2,
        needles: &["is the file given as the source FILE"],
    },
    Failing {
        what: "training without std",
        args: &["emit-rust", LENET, "--no-std", "--train"],
        code: 2,
        needles: &["'--no-std' cannot be used with '--train'"],
    },
    Failing {
        what: "a missing FILE",
        args: &["emit-rust"],
        code: 2,
        needles: &["`cnnc emit-rust` needs an argument", "`FILE.cnn`", "example: cnnc emit-rust examples/"],
    },
    Failing {
        what: "a source that does not exist",
        args: &["{dir}/missing.cnn", "-o", "{out}"],
        code: 2,
        needles: &["missing.cnn"],
    },
    Failing {
        what: "a mistyped command is not taken for a file",
        args: &["emit-rusd", LENET],
        code: 2,
        needles: &["unknown command `emit-rusd` (did you mean `emit-rust`?)"],
    },
    Failing {
        what: "an unknown model",
        args: &[LENET, "--model", "lenet6", "-o", "{out}"],
        code: 1,
        needles: &["lenet6"],
    },
];

#[test]
fn failures_leave_no_file_behind() {
    let bad_source = BAD;
    for (k, case) in FAILING.iter().enumerate() {
        let dir = scratch(&format!("fail{k}"));
        let bad = dir.join("bad.cnn");
        std::fs::write(&bad, bad_source).expect("source");
        let old = dir.join("old.rs");
        std::fs::write(&old, "// the file from before\n").expect("old file");
        let out = dir.join("model.rs");
        let args: Vec<String> = case
            .args
            .iter()
            .map(|a| a.replace("{out}", &s(&out)).replace("{bad}", &s(&bad)).replace("{dir}", &s(&dir)))
            .collect();
        let before = listing(&dir);
        let o = Command::new(env!("CARGO_BIN_EXE_cnnc"))
            .args(&args)
            .arg("--color=never")
            .current_dir(root())
            .output()
            .expect("cnnc runs");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(case.code), "{}: {args:?}\nstdout: {}\nstderr: {err}", case.what, stdout(&o));
        assert!(!err.contains("panicked"), "{}: {err}", case.what);
        for needle in case.needles {
            assert!(err.contains(needle), "{}: expected {needle:?} in:\n{err}", case.what);
        }
        assert!(stdout(&o).is_empty(), "{}: nothing on stdout: {}", case.what, stdout(&o));
        assert_eq!(listing(&dir), before, "{}: no file, partial or temporary, was left", case.what);
        assert_eq!(std::fs::read_to_string(&old).expect("old"), "// the file from before\n", "{}", case.what);
    }
}

#[test]
fn a_failed_replacement_keeps_the_old_module() {
    let dir = scratch("keep");
    let module = dir.join("model.rs");
    std::fs::write(&module, "// a module from before\n").expect("old module");
    let bad = dir.join("bad.cnn");
    std::fs::write(&bad, BAD).expect("source");
    let o = cnnc(&[&s(&bad), "-o", &s(&module)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&module).expect("kept"), "// a module from before\n");
    // A good model replaces it whole.
    let o = cnnc(&[LENET, "-o", &s(&module)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&module).expect("replaced").starts_with("//! Model `lenet5`"));
    assert_eq!(listing(&dir), ["bad.cnn", "model.rs"]);
}

/// All-CNN-C's 3x3 layers run Winograd in the generated module unless `--no-winograd` says
/// otherwise; the module without it carries neither the kernel nor its weight transforms.
#[test]
fn winograd_can_be_turned_off_in_the_module() {
    let dir = scratch("winograd");
    let (with, without) = (dir.join("with.rs"), dir.join("without.rs"));
    for (path, extra) in [(&with, None), (&without, Some("--no-winograd"))] {
        let mut args = vec!["emit-rust", "examples/allcnnc.cnn", "-o", path.to_str().unwrap()];
        args.extend(extra);
        let o = cnnc(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let (with, without) = (std::fs::read_to_string(&with).unwrap(), std::fs::read_to_string(&without).unwrap());
    assert!(with.contains("WinoPlan::new") && with.contains("fn winograd4x4_weights"), "Winograd by default");
    for code in ["WinoPlan", "mod winograd", "winograd4x4_weights", "winograd2x2_weights"] {
        assert!(!without.contains(code), "`{code}` in the module made with --no-winograd");
    }
}
