//! `cnnc repl` fed a script (a file and piped stdin) and `cnnc viz filters|maps` through the
//! built binary: exit codes, where the output goes, and PNG files that decode to the right size.

use crate::common::{cnnc, root, stderr, stdout};
use cnnc_runtime::{Tensor, write_npy};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-repl-viz").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Width, height and colour type of a PNG, decoded whole.
fn decode(path: &Path) -> (u32, u32, png::ColorType) {
    let file = std::fs::File::open(path).expect("the PNG exists");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("the pixels decode");
    (info.width, info.height, info.color_type)
}

#[test]
fn viz_draws_alexnets_first_layer_and_lenets_maps() {
    let dir = scratch("viz");
    // AlexNet at 3x67x67 (the smallest its layers take): 64 colour 11x11 kernels, 8x8 tiles of
    // 11x3 = 33 pixels.
    let filters = dir.join("alexnet.png");
    let o = cnnc(&["viz", "filters", "examples/alexnet.cnn", "features.0", "--shape", "3x67x67", "-o", &s(&filters)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("64 kernels of `features.0` (11x11 over 3 input channels)"), "{}", stdout(&o));
    assert_eq!(decode(&filters), (8 * 33 + 9 * 2, 8 * 33 + 9 * 2, png::ColorType::Rgb));

    let x = Tensor { shape: vec![2, 1, 32, 32], data: (0..2048).map(|i| ((i * 7) % 13) as f32 / 13.0).collect() };
    let input = dir.join("x.npy");
    write_npy(&input, &x).expect("input");
    let maps = dir.join("c1.png");
    let o = cnnc(&["viz", "maps", "examples/lenet5.cnn", "c1", "--input", &s(&input), "--image", "1", "-o", &s(&maps)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("6 feature maps of `c1` [6, 28, 28], image 1 of"), "{}", stdout(&o));
    assert_eq!(decode(&maps), (3 * 28 + 4 * 2, 2 * 28 + 3 * 2, png::ColorType::Grayscale));

    // Not a convolution, a typo, an image past the batch: clear errors, no file.
    let bad = dir.join("bad.png");
    for (args, message) in [
        (vec!["viz", "filters", "examples/lenet5.cnn", "f6"], "`f6` is a `fc` layer, not a convolution"),
        (vec!["viz", "filters", "examples/lenet5.cnn", "c2"], "no layer `c2` (did you mean `c1`?)"),
        (
            vec!["viz", "maps", "examples/lenet5.cnn", "c1", "--input", &s(&input), "--image", "2"],
            "--image 2 is out of range",
        ),
    ] {
        let mut args = args;
        args.extend(["-o", bad.to_str().expect("UTF-8")]);
        let o = cnnc(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
        assert!(!bad.exists());
    }
}

#[test]
fn repl_runs_a_script_from_a_file_or_stdin() {
    let dir = scratch("repl");
    let script = dir.join("s.cnnrepl");
    std::fs::write(&script, "input x: [1, 8, 8]\nconv(4, k=3) -> relu\n:summary\n").expect("script");
    let o = cnnc(&["repl", &s(&script)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("input x: [1, 8, 8]\n  conv1        conv       [4, 6, 6]"), "{out}");
    assert!(out.contains("model repl, input [1, 8, 8]"), "{out}");
    assert!(!out.contains("cnn>"), "no prompts in a script: {out}");

    // Piped stdin, with --echo; a failed input makes the exit code 1, and the session goes on.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["repl", "--echo"])
        .current_dir(root())
        .env("CNNC_HISTORY", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cnnc runs");
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin.write_all(b"input x: [1, 8, 8]\nrelux\nrelu\n").expect("writes");
    let o = child.wait_with_output().expect("exits");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "> input x: [1, 8, 8]\ninput x: [1, 8, 8]\n> relux\n> relu\n  relu1        relu       [1, 8, 8]        params         0  MACs             0  RF 1\n"
    );
    assert!(stderr(&o).contains("error[E0200]: unknown layer `relux`\n  --> <input 2>:1:1"), "{}", stderr(&o));
    let o = cnnc(&["repl", "nope.txt"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read `nope.txt`"), "{}", stderr(&o));
}
