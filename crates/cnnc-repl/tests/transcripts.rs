//! REPL sessions replayed as scripts, each pinned as a transcript (every input echoed with `> `,
//! then what it printed, diagnostics in place): a model built layer by layer, errors and the
//! recovery from them, runs on the JIT, a short training run, and the pictures of `:viz`.
//! Times are the only thing taken out (`<t> ms`).

use cnnc_repl::{Io, Session, Status, run_script};
use std::fmt::Write;
use std::path::PathBuf;

/// Everything a session prints, in order, in one string.
#[derive(Default)]
struct Transcript {
    text: String,
    statuses: usize,
}

impl Io for Transcript {
    fn out(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn err(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn status(&mut self, line: &str) {
        if !line.is_empty() {
            self.statuses += 1;
        }
    }
}

/// Replays `script` in a fresh session, in directory `dir` (for the files it names).
fn replay(script: &str, dir: &std::path::Path) -> (String, Status, usize) {
    let script = script.replace("$DIR", &dir.display().to_string());
    let mut session = Session::new(false, cnnc_driver::MemoryBudget::detect());
    let mut io = Transcript::default();
    let status = run_script(&mut session, script.as_bytes(), &mut io, true);
    (redact(&io.text.replace(&dir.display().to_string(), "$DIR")), status, io.statuses)
}

/// Times as `<t> ms`: the number right before each ` ms`.
fn redact(text: &str) -> String {
    let parts: Vec<&str> = text.split(" ms").collect();
    let last = parts.len() - 1;
    let redacted = |(i, part): (usize, &&str)| {
        if i == last {
            return part.to_string();
        }
        let keep = part.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        if keep.len() < part.len() { format!("{keep}<t> ms") } else { format!("{part} ms") }
    };
    parts.iter().enumerate().map(redacted).collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-repl-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn a_model_built_layer_by_layer() {
    let dir = temp_dir("build");
    let (text, status, _) = replay(
        "input x: [1, 28, 28]
c1: conv(6, k=5, pad=2) -> relu
maxpool(2)
conv(16, k=5) -> relu -> maxpool(2)
flatten ->
  fc(120) -> relu
-> fc(10)
:summary
block pair(c) {
    input y
    y -> conv(c, k=3, pad=1) -> bn -> relu
}
model tiny {
    input x: [1, 8, 8]
    x -> pair(4) -> global_avgpool -> flatten -> fc(3)
}
:model
:ir
:model repl
:undo
:save $DIR/session.cnn
:reset
:load $DIR/session.cnn
:model
softmax
:undo
:undo
",
        &dir,
    );
    assert_eq!(status, Status::Ok, "{text}");
    insta::assert_snapshot!(text);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn errors_point_at_the_typed_line_and_change_nothing() {
    let dir = temp_dir("errors");
    let (text, status, _) = replay(
        "conv(8, k=3)
input x: [1, 8, 8]
convv(8, k=3)
conv(8, k=3, strid=2)
conv(8, k=30)
conv(8, k=3) -> relu
model broken {
    input x: [1, 8, 8]
    x -> conv(4, k=3) ->
}
:summary
:load $DIR/missing.cnn
:frobnicate
:viz filters relu1 $DIR/x.png
:undo
:undo
:undo
input x: [1, 8, 8]
block b(c) { input y  y -> conv(c, k=3) }
b(4)
block b(c) { input y  y -> conv(c, k=30) }
:ir
",
        &dir,
    );
    assert_eq!(status, Status::Failed);
    insta::assert_snapshot!(text);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn runs_on_the_jit() {
    let dir = temp_dir("run");
    let x = cnnc_runtime::Tensor { shape: vec![2, 1, 8, 8], data: (0..128).map(|i| (i % 9) as f32 / 9.0).collect() };
    cnnc_runtime::write_npy(dir.join("x.npy"), &x).expect("writes");
    let wrong = cnnc_runtime::Tensor { shape: vec![1, 3, 8, 8], data: vec![0.5; 192] };
    cnnc_runtime::write_npy(dir.join("wrong.npy"), &wrong).expect("writes");
    let (text, status, _) = replay(
        "input x: [1, 8, 8]
conv(4, k=3, pad=1) -> relu -> maxpool(2) -> flatten -> fc(5)
:run
:run $DIR/x.npy
:grad 2
:run $DIR/wrong.npy
:weights $DIR/nothing.safetensors
:run $DIR/x.npy
softmax
:run
",
        &dir,
    );
    assert_eq!(status, Status::Failed, "`wrong.npy` and `nothing.safetensors` fail");
    insta::assert_snapshot!(text);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_short_training_run_keeps_its_weights() {
    let dir = temp_dir("train");
    let (text, status, statuses) = replay(
        ":load ../../examples/digits.cnn
:train epochs=2 batch=64 limit=256 lr=0.02
:grad 1
:train epochs=1 optimizer=adam limit=64
:train epochs=zero
",
        &dir,
    );
    assert_eq!(status, Status::Failed, "the last one fails");
    assert!(statuses >= 6, "a live loss line after each step ({statuses})");
    insta::assert_snapshot!(round_losses(&text));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Every number with a fraction (losses, accuracies, gradient norms) to one decimal, so that a
/// change of summation order in a kernel does not rewrite the transcript.
fn round_losses(text: &str) -> String {
    let round = |w: &str| match w.parse::<f64>() {
        Ok(v) if w.contains('.') => format!("{v:.1}"),
        _ => w.to_string(),
    };
    text.lines().map(|line| line.split(' ').map(round).collect::<Vec<_>>().join(" ") + "\n").collect()
}

#[test]
fn pictures_of_filters_and_maps() {
    let dir = temp_dir("viz");
    let (text, status, _) = replay(
        "input x: [3, 16, 16]
conv(12, k=5, pad=2) -> relu -> maxpool(2)
conv(6, k=3) -> flatten -> fc(4)
:viz filters conv1 $DIR/rgb.png
:viz filters conv2 $DIR/grey.png
:run
:viz maps maxpool1 $DIR/maps.png
:viz maps flatten1 $DIR/flat.png
:viz filters fc1 $DIR/fc.png
:viz filters cnv1 $DIR/typo.png
",
        &dir,
    );
    assert_eq!(status, Status::Failed, "the last three fail");
    insta::assert_snapshot!(text);
    // 12 colour 5x5 kernels: 4x3 tiles enlarged 5 times with 2-pixel gaps.
    assert_eq!(decode(&dir.join("rgb.png")), (4 * 25 + 5 * 2, 3 * 25 + 4 * 2, png::ColorType::Rgb));
    // conv2: 6 rows of 12 grey 3x3 tiles, enlarged 8 times.
    assert_eq!(decode(&dir.join("grey.png")), (12 * 24 + 13 * 2, 6 * 24 + 7 * 2, png::ColorType::Grayscale));
    // 12 maps of 8x8, enlarged 3 times.
    assert_eq!(decode(&dir.join("maps.png")), (4 * 24 + 5 * 2, 3 * 24 + 4 * 2, png::ColorType::Grayscale));
    assert!(!dir.join("flat.png").exists() && !dir.join("fc.png").exists());
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Width, height and colour type of a PNG file, decoded whole.
fn decode(path: &std::path::Path) -> (u32, u32, png::ColorType) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("the PNG exists")));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("the pixels decode");
    (info.width, info.height, info.color_type)
}

#[test]
fn redaction_only_touches_times() {
    assert_eq!(redact("compile 12.5 ms, run 0.031 ms after"), "compile <t> ms, run <t> ms after");
    assert_eq!(redact("no times here: 3.5"), "no times here: 3.5");
}

#[test]
fn every_command_in_the_help_is_one() {
    let dir = temp_dir("help");
    let (help, status, _) = replay(":help\n", &dir);
    assert_eq!(status, Status::Ok);
    let names: Vec<&str> = help.lines().filter_map(|l| l.trim_start().strip_prefix(':')).collect();
    assert!(names.len() >= 16, "{help}");
    let mut script = String::from("input x: [1, 8, 8]\nconv(2, k=3) -> flatten -> fc(3)\n");
    for name in &names {
        let name = name.split_whitespace().next().expect("a name");
        if name != "quit" && name != "reset" {
            let _ = writeln!(script, ":{name}");
        }
    }
    let (text, _, _) = replay(&script, &dir);
    assert!(!text.contains("unknown command"), "{text}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn bench_reports_every_layer() {
    let dir = temp_dir("bench");
    let (text, status, _) =
        replay("input x: [1, 8, 8]\nconv(4, k=3) -> relu -> flatten -> fc(3)\n:bench 3\n:bench 0\n", &dir);
    assert_eq!(status, Status::Failed, "`:bench 0` is refused: {text}");
    let table = text.split("> :bench 3\n").nth(1).expect("the bench ran");
    assert!(table.contains("layer") && table.contains("% peak"), "{table}");
    for layer in ["conv1", "fc1"] {
        assert!(table.lines().any(|l| l.starts_with(layer)), "{layer} in {table}");
    }
    assert!(table.contains("model: <t> ms median"), "{table}");
    assert!(text.contains("ROUNDS is a whole number from 1 to 10000"), "{text}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_model_too_large_for_the_memory_is_refused_before_anything_is_allocated() {
    let dir = temp_dir("memory");
    let mut session = Session::new(false, cnnc_driver::MemoryBudget::set(1 << 30));
    let mut io = Transcript::default();
    let script = "input x: [1, 100000, 100000]\nconv(512, k=3)\n:run\n:bench\n:grad\n:viz maps conv1 $DIR/never.png\n:viz filters conv1 $DIR/small.png\n"
        .replace("$DIR", &dir.display().to_string());
    let status = run_script(&mut session, script.as_bytes(), &mut io, true);
    assert_eq!(status, Status::Failed);
    let refusals = io.text.matches("error: running model `repl` on a batch of 1 needs about").count();
    assert_eq!(refusals, 4, "{}", io.text);
    assert!(!dir.join("never.png").exists());
    // The kernels themselves are small: drawing them is fine.
    assert!(io.text.contains("small.png`: 512 kernels of `conv1`"), "{}", io.text);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn cancelled_commands_say_so_and_change_nothing() {
    let dir = temp_dir("cancel");
    let mut session = Session::new(false, cnnc_driver::MemoryBudget::detect());
    let mut io = Transcript::default();
    for line in ["input x: [1, 8, 8]", "c1: conv(4, k=3, pad=1) -> relu -> flatten -> fc(3)"] {
        assert_eq!(session.eval(line, &mut io), Status::Ok, "{}", io.text);
    }
    // As a Ctrl-C during each command would (the loops clear the token before each input).
    session.cancel_token().request();
    let lenet = format!("{}/../../examples/lenet5.cnn", env!("CARGO_MANIFEST_DIR"));
    let maps = dir.join("maps.png");
    for command in [
        ":run".to_string(),
        ":bench 2".into(),
        ":grad 1".into(),
        format!(":viz maps c1 {}", maps.display()),
        format!(":load {lenet}"),
    ] {
        io.text.clear();
        assert_eq!(session.eval(&command, &mut io), Status::Failed, "{command}");
        assert!(io.text.ends_with("cancelled\n") && !io.text.contains("error"), "{command}: {}", io.text);
    }
    assert!(!maps.exists(), "a cancelled `:viz` writes nothing");
    session.cancel_token().clear();
    io.text.clear();
    assert_eq!(session.eval(":model", &mut io), Status::Ok);
    assert_eq!(io.text, "models: repl (current)\n", "the cancelled `:load` defined nothing");
    io.text.clear();
    assert_eq!(session.eval(":run", &mut io), Status::Ok, "{}", io.text);
    // The weights drawn for the cancelled commands were not kept: they are drawn now.
    assert!(io.text.starts_with("note: weights of `repl` initialised from seed 0"), "{}", io.text);
    assert!(io.text.contains("output [1, 3]"), "{}", io.text);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// What a script printed; like a Ctrl-C, it requests the session's token once a line it prints
/// contains `trigger`.
struct CtrlCOn {
    text: String,
    trigger: &'static str,
    cancel: cnnc_runtime::Cancel,
}

impl Io for CtrlCOn {
    fn out(&mut self, text: &str) {
        self.text.push_str(text);
        if text.contains(self.trigger) {
            self.cancel.request();
        }
    }

    fn err(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn status(&mut self, _: &str) {}
}

#[test]
fn a_ctrl_c_ends_a_script_after_the_input_it_cancels() {
    let mut session = Session::new(false, cnnc_driver::MemoryBudget::detect());
    let mut io = CtrlCOn { text: String::new(), trigger: "conv1", cancel: session.cancel_token().clone() };
    let script = "input x: [1, 8, 8]\nconv(4, k=3)\nrelu\n:summary\n";
    assert_eq!(run_script(&mut session, script.as_bytes(), &mut io, false), Status::Failed);
    assert!(session.cancel_token().is_requested(), "the CLI tells a Ctrl-C by the token (exit 130)");
    assert!(
        io.text.contains("conv1") && !io.text.contains("relu"),
        "nothing after the cancelled input runs:\n{}",
        io.text
    );
}
