//! Atomic file replacement: every writer in cnnc goes through [`write_atomic`].
//!
//! A crash, a full disk or an error half-way through a write must never leave a truncated file
//! where a good one stood (a weights file is hours of training). So the bytes go to a temporary
//! file in the destination's own directory (a rename is only atomic within one file system), are
//! flushed to disk, and only then is the temporary file renamed over the destination. On any
//! error the temporary file is removed and the destination is untouched.

use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Writes `path` atomically: `write` fills a buffered temporary file next to it, which replaces
/// `path` only once everything was written and synced.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    // `Path::parent` of a bare file name is `Some("")`, which means the current directory.
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        Some(_) | None => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".cnnc-").suffix(".tmp");
    // tempfile creates private (0600) files; ask for the mode `File::create` would use, so the
    // umask decides as usual and a saved file is as readable as one written the plain way.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
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

/// Like [`write_atomic`] for bytes already in memory.
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
}
