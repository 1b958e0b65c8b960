//! `cnnc repl` on a terminal: the built binary started in a pseudo-terminal (rexpect), typed
//! at key by key as a person would, its screen read with the escape sequences taken out. The
//! prompt, line editing, tab completion, history kept between two sessions, Ctrl-C on a
//! half-typed line and during a long `:bench`, and Ctrl-D; and Ctrl-C ending a script.
//!
//! Every step waits for what the REPL prints, never for a time, and each input is sent only
//! once the output of the one before it is seen: rustyline drops what arrives after an Enter
//! within the same read (keys typed ahead while a command runs are read at the next prompt as
//! one chunk). The timeouts are generous for a loaded CI machine; a passing run takes a few
//! seconds.

use crate::common::root;
use rexpect::process::WaitStatus;
use rexpect::reader::Options;
use rexpect::session::PtySession;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long any one expectation may wait.
const TIMEOUT_MS: u64 = 60_000;

const CTRL_C: &str = "\x03";
const CTRL_D: &str = "\x04";
const BACKSPACE: &str = "\x7f";
const UP: &str = "\x1b[A";

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-pty").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `cnnc repl` in a pseudo-terminal, its history in `dir/history`, waiting at its first prompt.
fn repl(dir: &Path) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cnnc"));
    command
        .arg("repl")
        .current_dir(root())
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .env("CNNC_HISTORY", dir.join("history"))
        // `:bench` measures the machine's peak once and caches it: here, not in the home.
        .env("CNNC_CACHE_DIR", dir.join("cache"));
    let options = Options::new().timeout_ms(Some(TIMEOUT_MS)).strip_ansi_escape_codes(true);
    let mut p = rexpect::session::spawn_with_options(command, options).expect("cnnc repl starts in a pty");
    expect(&mut p, "Ctrl-D leaves");
    expect(&mut p, "cnn> ");
    p
}

fn send(p: &mut PtySession, keys: &str) {
    p.send(keys).expect("the keys are sent");
    p.flush().expect("the keys are flushed");
}

fn expect(p: &mut PtySession, text: &str) {
    if let Err(e) = p.exp_string(text) {
        panic!("waiting for {text:?}: {e}");
    }
}

/// Waits for `regex` and then for the prompt after it.
fn expect_then_prompt(p: &mut PtySession, regex: &str) {
    if let Err(e) = p.exp_regex(regex) {
        panic!("waiting for /{regex}/: {e}");
    }
    expect(p, "cnn> ");
}

/// Ctrl-D at an empty prompt: the REPL leaves with exit code 0.
fn leave(mut p: PtySession) {
    send(&mut p, CTRL_D);
    match p.process().wait() {
        Ok(WaitStatus::Exited(_, code)) => assert_eq!(code, 0, "Ctrl-D exits 0"),
        other => panic!("cnnc repl did not exit after Ctrl-D: {other:?}"),
    }
}

#[test]
fn editing_completion_and_ctrl_c_at_the_prompt() {
    let dir = scratch("editing");
    let mut p = repl(&dir);
    send(&mut p, "input x: [1, 8, 8]\r");
    expect_then_prompt(&mut p, r"\ninput x: \[1, 8, 8\]");
    // A typo taken back with a backspace: `pad=11` would make the maps 28x28.
    send(&mut p, &format!("conv_a: conv(4, k=3, pad=11{BACKSPACE})\r"));
    expect_then_prompt(&mut p, r"conv_a\s+conv\s+\[4, 8, 8\]");
    // A command completed by Tab, then a layer name of the session.
    send(&mut p, ":summ\t\r");
    expect_then_prompt(&mut p, r"model repl, input \[1, 8, 8\]");
    let png = dir.join("filters.png");
    send(&mut p, ":viz filters conv\t");
    send(&mut p, &format!(" {}\r", png.display()));
    expect_then_prompt(&mut p, r"4 kernels of `conv_a`");
    assert!(png.exists(), "`:viz` wrote the picture");
    // Ctrl-C drops an input left open on the continuation prompt, and a half-typed line.
    send(&mut p, "conv(8,\r");
    expect(&mut p, "...> ");
    send(&mut p, CTRL_C);
    expect(&mut p, "cnn> ");
    send(&mut p, "flatten -> fc(1");
    send(&mut p, CTRL_C);
    expect(&mut p, "cnn> ");
    // Had either survived, this line would end a longer input with an error.
    send(&mut p, "relu\r");
    expect_then_prompt(&mut p, r"relu1\s+relu\s+\[4, 8, 8\]");
    leave(p);
}

#[test]
fn history_is_kept_between_sessions() {
    let dir = scratch("history");
    let mut first = repl(&dir);
    send(&mut first, "model hist { input x: [1, 4, 4]  x -> conv(2, k=3) }\r");
    expect_then_prompt(&mut first, r"model `hist`: input \[1, 4, 4\] -> output \[2, 2, 2\]");
    send(&mut first, ":model\r");
    expect_then_prompt(&mut first, r"models: hist \(current\)");
    leave(first);
    let mut second = repl(&dir);
    // Up twice: `:model`, then the definition, run again in a session that never typed it.
    send(&mut second, UP);
    send(&mut second, UP);
    send(&mut second, "\r");
    expect_then_prompt(&mut second, r"model `hist`: input \[1, 4, 4\] -> output \[2, 2, 2\]");
    leave(second);
}

#[test]
fn ctrl_c_cancels_a_long_bench_and_the_session_goes_on() {
    let dir = scratch("cancel");
    let mut p = repl(&dir);
    send(&mut p, "input x: [16, 64, 64]\r");
    expect_then_prompt(&mut p, r"\ninput x: \[16, 64, 64\]");
    send(&mut p, "conv(32, k=3, pad=1) -> relu -> conv(32, k=3, pad=1)\r");
    expect_then_prompt(&mut p, r"conv2\s+conv\s+\[32, 64, 64\]");
    // 10,000 rounds of 56 million MACs, twice over (whole runs, then layer by layer): minutes
    // unless cancelled. The status line says it has started.
    send(&mut p, ":bench 10000\r");
    expect(&mut p, "(Ctrl-C cancels)");
    let pressed = Instant::now();
    send(&mut p, CTRL_C);
    expect(&mut p, "cancelled");
    let took = pressed.elapsed();
    expect(&mut p, "cnn> ");
    assert!(took < Duration::from_secs(20), "cancelled {took:?} after Ctrl-C");
    // The session is as it was: the model is there and runs.
    send(&mut p, ":run\r");
    expect_then_prompt(&mut p, r"output \[1, 32, 64, 64\]");
    leave(p);
}

#[test]
fn ctrl_c_ends_a_script_with_exit_code_130() {
    let dir = scratch("script");
    let script = dir.join("session.txt");
    // The `:bench` takes minutes unless cancelled; `:model` must not run after the Ctrl-C.
    let text = "input x: [16, 64, 64]\nconv(32, k=3, pad=1) -> relu -> conv(32, k=3, pad=1)\n:bench 10000\n:model\n";
    std::fs::write(&script, text).expect("writes the script");
    let mut command = Command::new(env!("CARGO_BIN_EXE_cnnc"));
    command.arg("repl").arg(&script).current_dir(root()).env("CNNC_CACHE_DIR", dir.join("cache"));
    let options = Options::new().timeout_ms(Some(TIMEOUT_MS)).strip_ansi_escape_codes(true);
    let mut p = rexpect::session::spawn_with_options(command, options).expect("cnnc repl starts in a pty");
    // The last layer's row is printed once the handler is in place, just before `:bench` runs;
    // the Ctrl-C lands during it or before it starts, and either way nothing after it runs.
    if let Err(e) = p.exp_regex(r"conv2\s+conv\s+\[32, 64, 64\]") {
        panic!("waiting for the model: {e}");
    }
    let pressed = Instant::now();
    send(&mut p, CTRL_C);
    let rest = p.exp_eof().expect("the script ends");
    let took = pressed.elapsed();
    assert!(!rest.contains("models:"), "nothing runs after the Ctrl-C:\n{rest}");
    match p.process().wait() {
        Ok(WaitStatus::Exited(_, code)) => assert_eq!(code, 130, "{rest}"),
        other => panic!("cnnc repl SCRIPT did not exit after Ctrl-C: {other:?}"),
    }
    assert!(took < Duration::from_secs(20), "ended {took:?} after Ctrl-C");
}
