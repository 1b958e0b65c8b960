//! Reading data files within a memory bound: the header first, then exactly the bytes it
//! announces, never more than the budget allows.
//!
//! A regular file's length is known before it is read, so a header that promises more or less
//! than the file holds is an error before any data is allocated. Other files (pipes, devices)
//! are read no further than one byte past what was announced or allowed, so `/dev/zero` or an
//! endless pipe is an error, not a read that runs until memory does.

use crate::error::DataError;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The memory a data set may take, shared by every file of a split: what is kept (the decoded
/// images and labels) accumulates; what is held only while a file is decoded (its raw bytes)
/// must fit on top of it.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Budget {
        Budget { limit, used: 0 }
    }

    /// What the files read so far keep.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// What is left for the raw bytes of the next file.
    pub(crate) fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// Checks that `transient` bytes held while reading `path` and `kept` bytes kept from it
    /// fit, then counts `kept` as used.
    pub(crate) fn reserve(&mut self, path: &Path, transient: u64, kept: u64) -> Result<(), DataError> {
        let needed = self.used.saturating_add(transient).saturating_add(kept);
        if needed > self.limit {
            return Err(DataError::TooLarge { path: path.to_path_buf(), needed, limit: self.limit });
        }
        self.used = self.used.saturating_add(kept);
        Ok(())
    }
}

/// An open data file and, when it is a regular file, its length.
pub(crate) struct DataFile {
    path: PathBuf,
    file: File,
    len: Option<u64>,
}

impl DataFile {
    pub(crate) fn open(path: &Path) -> Result<DataFile, DataError> {
        let io_error = |source| DataError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_error)?;
        let meta = file.metadata().map_err(io_error)?;
        if meta.is_dir() {
            return Err(io_error(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory")));
        }
        Ok(DataFile { path: path.to_path_buf(), file, len: meta.is_file().then_some(meta.len()) })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The length of a regular file; `None` for pipes and devices.
    pub(crate) fn len(&self) -> Option<u64> {
        self.len
    }

    fn io_error(&self, source: io::Error) -> DataError {
        DataError::Io { path: self.path.clone(), source }
    }

    /// Up to `n` bytes from the start (fewer if the file is shorter): enough for a header.
    pub(crate) fn prefix(&mut self, n: usize) -> Result<Vec<u8>, DataError> {
        let mut bytes = Vec::with_capacity(n);
        (&mut self.file).take(n as u64).read_to_end(&mut bytes).map_err(|e| self.io_error(e))?;
        Ok(bytes)
    }

    /// For a regular file, checks from its length alone that it holds exactly `total` bytes
    /// (`what` says what they are, for the message). Pipes are checked as they are read.
    pub(crate) fn check_length(&self, total: u64, what: &dyn Fn() -> String) -> Result<(), DataError> {
        match self.len {
            Some(len) if len < total => {
                Err(DataError::Truncated { path: self.path.clone(), what: what(), needed: total, found: len })
            }
            Some(len) if len > total => {
                Err(DataError::TrailingBytes { path: self.path.clone(), what: what(), needed: total, found: Some(len) })
            }
            _ => Ok(()),
        }
    }

    /// The whole file, which must hold exactly `total` bytes, after `prefix` (its first bytes)
    /// has been read. The memory is reserved before anything is read into it.
    pub(crate) fn read_exact_total(
        mut self,
        mut bytes: Vec<u8>,
        total: u64,
        what: &dyn Fn() -> String,
    ) -> Result<Vec<u8>, DataError> {
        self.check_length(total, what)?;
        // One byte more than announced tells a stream that goes on from one that ends there.
        let wanted = total.saturating_add(1);
        let more = usize::try_from(wanted.saturating_sub(bytes.len() as u64))
            .map_err(|_| DataError::Allocation { path: self.path.clone(), bytes: total })?;
        bytes.try_reserve_exact(more).map_err(|_| DataError::Allocation { path: self.path.clone(), bytes: total })?;
        let rest = wanted.saturating_sub(bytes.len() as u64);
        (&mut self.file).take(rest).read_to_end(&mut bytes).map_err(|e| self.io_error(e))?;
        let found = bytes.len() as u64;
        if found < total {
            return Err(DataError::Truncated { path: self.path, what: what(), needed: total, found });
        }
        if found > total {
            // A regular file that grew while it was read, or a stream that does not end.
            let found = self.len.filter(|&len| len > total);
            return Err(DataError::TrailingBytes { path: self.path, what: what(), needed: total, found });
        }
        Ok(bytes)
    }

    /// The whole file, of at most `limit` bytes (whatever it holds is checked by the caller);
    /// `used` is what the data set takes already, for the message. A regular file longer than
    /// `limit` is refused from its length, before it is read.
    pub(crate) fn read_all_within(mut self, limit: u64, used: u64) -> Result<Vec<u8>, DataError> {
        let too_large = |path: &Path, len: u64| DataError::TooLarge {
            path: path.to_path_buf(),
            needed: used.saturating_add(len),
            limit: used.saturating_add(limit),
        };
        if let Some(len) = self.len
            && len > limit
        {
            return Err(too_large(&self.path, len));
        }
        let cap = self.len.unwrap_or(0);
        let mut bytes = Vec::new();
        let cap_usize =
            usize::try_from(cap).map_err(|_| DataError::Allocation { path: self.path.clone(), bytes: cap })?;
        bytes
            .try_reserve_exact(cap_usize)
            .map_err(|_| DataError::Allocation { path: self.path.clone(), bytes: cap })?;
        (&mut self.file).take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| self.io_error(e))?;
        if bytes.len() as u64 > limit {
            return Err(too_large(&self.path, bytes.len() as u64));
        }
        Ok(bytes)
    }
}

/// Reserves room for `n` values, as an error rather than an abort when memory is short.
pub(crate) fn reserve_vec<T>(path: &Path, n: usize) -> Result<Vec<T>, DataError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| DataError::Allocation {
        path: path.to_path_buf(),
        bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
    })?;
    Ok(v)
}
