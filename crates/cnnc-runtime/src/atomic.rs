//! Atomic file replacement: every writer in cnnc goes through [`write_atomic`].
//!
//! A crash, a full disk or an error half-way through a write must never leave a truncated file
//! where a good one stood (a weights file is hours of training). So the bytes go to a temporary
//! file in the destination's own directory (a rename is only atomic within one file system), are
//! flushed to disk, and only then is the temporary file renamed over the destination. On any
//! error the temporary file is removed and the destination is untouched.
//!
//! Only regular files are replaced that way ([`destination`]): a symlink is written through (its
//! target is replaced, the link stays); a device, FIFO or socket is written in place, since
//! renaming a regular file over it would destroy it (as root, `-o /dev/full` would replace the
//! device); `-` and `/dev/stdout` are standard output.

use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Where [`write_atomic`] puts the bytes for a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `-`, `/dev/stdout` (and `/dev/fd/1`, `/proc/self/fd/1`): the process's standard output.
    Stdout,
    /// A regular file, existing or new, with symlinks resolved: replaced atomically.
    File(PathBuf),
    /// An existing file that is not a regular one (a device, a FIFO, a socket), through any
    /// symlinks: written in place, never replaced.
    Special(PathBuf),
}

/// Whether `path` names standard output: `-`, `/dev/stdout`, `/dev/fd/1` or `/proc/self/fd/1`.
pub fn is_stdout(path: &Path) -> bool {
    ["-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"].iter().any(|s| path == Path::new(s))
}

/// Where a write to `path` goes (see the module documentation). A directory, or a symlink loop,
/// is an error.
pub fn destination(path: &Path) -> io::Result<Destination> {
    if is_stdout(path) {
        return Ok(Destination::Stdout);
    }
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory")),
        Ok(meta) if meta.is_file() => Ok(Destination::File(resolve(path)?)),
        // Opened through the path as given: a symlink to a pipe (`/dev/fd/63` from a shell's
        // process substitution) has no target path of its own.
        Ok(_) => Ok(Destination::Special(path.to_path_buf())),
        // A new file, or a symlink to one not there yet: created where the links lead.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Destination::File(resolve(path)?)),
        Err(e) => Err(e),
    }
}

/// `path` with every symlink along its last component followed (relative targets are relative
/// to the link's directory); the path itself when it is no symlink or does not exist.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    // Linux's own limit on links followed in one lookup.
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current)?;
                current = match current.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    Some(_) | None => target,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Writes `path` atomically: `write` fills a buffered temporary file next to it, which replaces
/// `path` only once everything was written and synced. Standard output, devices and FIFOs are
/// written directly ([`destination`]).
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    match destination(path)? {
        Destination::Stdout => write_to(io::stdout().lock(), write),
        Destination::Special(special) => write_to(OpenOptions::new().write(true).open(special)?, write),
        Destination::File(file) => replace(&file, write),
    }
}

/// Writes straight into `sink`, buffered.
fn write_to(sink: impl Write, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let mut out = BufWriter::new(sink);
    write(&mut out)?;
    out.flush()
}

/// The atomic replacement of the regular file `path`.
fn replace(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    // `Path::parent` of a bare file name is `Some("")`, which means the current directory.
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        Some(_) | None => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".cnnc-").suffix(".tmp");
    // tempfile creates private (0600) files; ask for the mode `File::create` would use, so the
    // umask decides as usual and a saved file is as readable as one written the plain way. A
    // file being replaced keeps its own mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_or(0o666, |m| m.permissions().mode() & 0o7777);
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    let temp = builder.tempfile_in(dir)?;
    {
        let mut out = BufWriter::new(temp.as_file());
        write(&mut out)?;
        out.flush()?;
    }
    // Without the sync, a crash soon after the rename can leave an empty file on some file
    // systems: the rename reaches the disk before the data does.
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Like [`write_atomic`] for bytes already in memory (the tests' shorthand).
#[cfg(test)]
pub(crate) fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |out| out.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        write_bytes_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }

    #[test]
    fn a_failing_writer_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"precious").unwrap();
        let err = write_atomic(&path, |out| {
            out.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file is removed");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/out.bin");
        assert!(write_bytes_atomic(&path, b"x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn saved_files_are_not_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_bytes_atomic(&path, b"x").unwrap();
        let plain = dir.path().join("plain.bin");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_written_through_and_stay_links() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.bin");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink("real.bin", &link).unwrap();
        write_bytes_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link survives");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A chain of links, and a dangling one whose target is created.
        let chain = dir.path().join("chain.bin");
        std::os::unix::fs::symlink(&link, &chain).unwrap();
        write_bytes_atomic(&chain, b"again").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"again");
        let dangling = dir.path().join("dangling.bin");
        std::os::unix::fs::symlink("made.bin", &dangling).unwrap();
        write_bytes_atomic(&dangling, b"made").unwrap();
        assert_eq!(std::fs::read(dir.path().join("made.bin")).unwrap(), b"made");
        // A loop is an error, not a hang.
        let a = dir.path().join("a");
        std::os::unix::fs::symlink("b", &a).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        assert!(write_bytes_atomic(&a, b"x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_fifos_are_written_in_place_never_replaced() {
        use std::os::unix::fs::FileTypeExt;
        assert_eq!(destination(Path::new("/dev/null")).unwrap(), Destination::Special("/dev/null".into()));
        write_bytes_atomic(Path::new("/dev/null"), b"discarded").unwrap();
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        if Path::new("/dev/full").exists() {
            let e = write_bytes_atomic(Path::new("/dev/full"), &[0; 100_000]).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(28), "ENOSPC: {e}");
            assert!(std::fs::metadata("/dev/full").unwrap().file_type().is_char_device(), "still a device");
        }
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            let reader = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::read(fifo).unwrap())
            };
            write_bytes_atomic(&fifo, b"through the pipe").unwrap();
            assert_eq!(reader.join().unwrap(), b"through the pipe");
            assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "still a FIFO");
        }
        let e = write_bytes_atomic(dir.path(), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::IsADirectory);
    }

    #[test]
    fn standard_output_is_named_by_dash_or_dev_stdout() {
        for name in ["-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"] {
            assert!(is_stdout(Path::new(name)), "{name}");
            assert_eq!(destination(Path::new(name)).unwrap(), Destination::Stdout);
        }
        assert!(!is_stdout(Path::new("./-x")) && !is_stdout(Path::new("stdout")));
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.bin");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_bytes_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    }
}
