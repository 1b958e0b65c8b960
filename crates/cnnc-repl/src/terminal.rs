//! The loops around a session: [`run_terminal`] reads lines with rustyline (editing, history
//! kept between sessions, tab completion, a continuation prompt while a bracket is open) and
//! [`run_script`] reads them from any reader (piped stdin, a file, a test) with no prompts.
//! Both gather lines into complete inputs the same way ([`needs_more`]).

use crate::complete::{Completion, Vocabulary, complete};
use crate::session::{Io, Session, Status};
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// Whether the text typed so far is an incomplete input: a bracket left open (comments
/// ignored), or a chain ending in `->`. Commands are one line.
pub fn needs_more(text: &str) -> bool {
    if text.trim_start().starts_with(':') {
        return false;
    }
    let mut depth = 0i64;
    let mut code = String::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        for c in line.chars() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            }
        }
        code.push_str(line);
        code.push('\n');
    }
    depth > 0 || code.trim_end().ends_with("->")
}

/// Runs a script: every complete input in turn, errors reported and passed over. With `echo`,
/// each line is copied to the output first (`> ` or `. ` before it), so the output reads as a
/// transcript. `Failed` when any input failed. A Ctrl-C (the session's cancel token requested,
/// never cleared here) cancels the input running and ends the script before the next one,
/// `Failed` too (the caller tells it by the token).
pub fn run_script(session: &mut Session, reader: impl BufRead, io: &mut dyn Io, echo: bool) -> Status {
    let mut pending = String::new();
    let mut status = Status::Ok;
    let mut lines = reader.lines();
    loop {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                io.err(&format!("error: cannot read the script: {e}\n"));
                return Status::Failed;
            }
            None => break,
        };
        if echo {
            io.out(&format!("{} {line}\n", if pending.is_empty() { ">" } else { "." }));
        }
        pending.push_str(&line);
        pending.push('\n');
        if needs_more(&pending) {
            continue;
        }
        if session.cancel_token().is_requested() {
            return Status::Failed;
        }
        match session.eval(&std::mem::take(&mut pending), io) {
            Status::Ok => {}
            Status::Failed => status = Status::Failed,
            Status::Quit => return status,
        }
    }
    if session.cancel_token().is_requested() {
        return Status::Failed;
    }
    // An input cut off by the end of the script is still evaluated, to report what is missing.
    if !pending.trim().is_empty() && session.eval(&pending, io) == Status::Failed {
        status = Status::Failed;
    }
    status
}

/// Runs an interactive session on the terminal until Ctrl-D or `:quit`.
pub fn run_terminal(session: &mut Session, history: Option<PathBuf>) -> Result<(), ReadlineError> {
    let mut editor: Editor<ReplHelper, rustyline::history::DefaultHistory> = Editor::new()?;
    // After the editor, whose terminal takes SIGINT for itself: at the prompt Ctrl-C is a key
    // (raw mode), while a command runs it is this handler's signal.
    install_ctrl_c(session.cancel_token().clone());
    editor.set_helper(Some(ReplHelper { vocab: vocabulary(session), files: FilenameCompleter::new() }));
    if let Some(path) = &history {
        // A first session has no history yet.
        let _ = editor.load_history(path);
    }
    let mut io = TerminalIo { status_shown: false };
    println!("cnnc repl: type .cnn, or `:help`; Ctrl-D leaves");
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() { "cnn> " } else { "...> " };
        match editor.readline(prompt) {
            Ok(line) => {
                pending.push_str(&line);
                pending.push('\n');
                if needs_more(&pending) {
                    continue;
                }
                let input = std::mem::take(&mut pending);
                if !input.trim().is_empty() {
                    let _ = editor.add_history_entry(input.trim_end());
                }
                session.cancel_token().clear();
                let status = session.eval(&input, &mut io);
                if let Some(helper) = editor.helper_mut() {
                    helper.vocab = vocabulary(session);
                }
                if status == Status::Quit {
                    break;
                }
            }
            // Ctrl-C at the prompt drops what was typed, as a shell does.
            Err(ReadlineError::Interrupted) => pending.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e),
        }
    }
    if let Some(path) = &history {
        save_history(&mut editor, path);
    }
    Ok(())
}

/// Where the history is kept: `CNNC_HISTORY` (empty: nowhere), else the user's data
/// directory (`~/.local/share/cnnc/repl_history` on Linux).
pub fn history_path() -> Option<PathBuf> {
    history_path_from(std::env::var_os("CNNC_HISTORY"), dirs::data_dir())
}

fn history_path_from(var: Option<std::ffi::OsString>, data_dir: Option<PathBuf>) -> Option<PathBuf> {
    match var {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => data_dir.map(|d| d.join("cnnc").join("repl_history")),
    }
}

/// Saves the history through a temporary file renamed over the old one, so that a crash
/// cannot leave half a history. Failing to save is not worth more than a warning.
fn save_history<H: Helper>(editor: &mut Editor<H, rustyline::history::DefaultHistory>, path: &std::path::Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let temp = path.with_extension("tmp");
    let saved = editor
        .save_history(&temp)
        .map_err(|e| e.to_string())
        // An empty history writes no file, and leaves the old one as it is.
        .and_then(|()| if temp.exists() { std::fs::rename(&temp, path).map_err(|e| e.to_string()) } else { Ok(()) });
    if let Err(e) = saved {
        let _ = std::fs::remove_file(&temp);
        eprintln!("warning: cannot save the history to `{}`: {e}", path.display());
    }
}

/// Ctrl-C while a command runs requests `cancel`, the session's token: the command stops at
/// its next check (`:train` at the next step, keeping what it trained; the others with
/// `cancelled`, the session as before). A second one before the first is cleared leaves the
/// REPL with exit code 130.
pub fn install_ctrl_c(cancel: cnnc_runtime::Cancel) {
    let _ = ctrlc::set_handler(move || {
        if cancel.request() {
            std::process::exit(130);
        }
    });
}

/// The session's names, for completion.
fn vocabulary(session: &Session) -> Vocabulary {
    let layers = session.layer_names();
    Vocabulary { blocks: session.block_names(), models: session.model_names(), layers }
}

/// Output to the terminal: results on stdout, diagnostics on stderr, the status line redrawn in
/// place on stderr.
struct TerminalIo {
    status_shown: bool,
}

impl Io for TerminalIo {
    fn out(&mut self, text: &str) {
        self.clear_status();
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        let _ = std::io::stdout().flush();
    }

    fn err(&mut self, text: &str) {
        self.clear_status();
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn status(&mut self, line: &str) {
        if line.is_empty() {
            self.clear_status();
        } else if std::io::stderr().is_terminal() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
            self.status_shown = true;
        }
    }
}

impl TerminalIo {
    fn clear_status(&mut self) {
        if std::mem::take(&mut self.status_shown) {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// Output of a script: stdout and stderr, no status line.
#[derive(Debug, Default)]
pub struct ScriptIo;

impl Io for ScriptIo {
    fn out(&mut self, text: &str) {
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }

    fn err(&mut self, text: &str) {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn status(&mut self, _: &str) {}
}

struct ReplHelper {
    vocab: Vocabulary,
    files: FilenameCompleter,
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        match complete(line, pos, &self.vocab) {
            Completion::Path => self.files.complete(line, pos, ctx),
            Completion::Words { start, words } => {
                Ok((start, words.into_iter().map(|w| Pair { display: w.clone(), replacement: w }).collect()))
            }
        }
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {}

impl Validator for ReplHelper {}

impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_lives_where_told_or_in_the_data_directory() {
        let data = Some(PathBuf::from("/home/u/.local/share"));
        assert_eq!(
            history_path_from(None, data.clone()),
            Some(PathBuf::from("/home/u/.local/share/cnnc/repl_history"))
        );
        assert_eq!(history_path_from(Some("/tmp/h".into()), data.clone()), Some(PathBuf::from("/tmp/h")));
        assert_eq!(history_path_from(Some("".into()), data), None);
        assert_eq!(history_path_from(None, None), None);
    }

    #[test]
    fn open_brackets_and_trailing_arrows_continue() {
        assert!(needs_more("model m {\n  input x: [1, 8, 8]\n"));
        assert!(!needs_more("model m {\n  input x: [1, 8, 8]  x -> relu\n}\n"));
        assert!(needs_more("conv(8,\n"));
        assert!(needs_more("conv(8, k=3) ->\n"));
        assert!(!needs_more("conv(8, k=3) // (an open one in a comment\n"));
        assert!(!needs_more(":load m(.cnn\n"));
        // Too many closers is complete: the parser reports it.
        assert!(!needs_more("relu)\n"));
    }
}
