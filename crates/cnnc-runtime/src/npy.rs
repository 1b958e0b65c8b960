//! Reading and writing NumPy `.npy` files: float inputs, integer class labels, uint8 images.
//!
//! The format (numpy's `numpy/lib/format.py`): the magic `\x93NUMPY`, a major and minor version
//! byte, the header length (u16 little-endian in 1.0, u32 in 2.0 and 3.0), then the header: a
//! Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with
//! spaces and a final `\n` so the data starts on a 64-byte boundary, then the raw elements.
//!
//! The header is parsed here by hand rather than with a Python-literal crate: it is a three-key
//! dict of strings, booleans and integer tuples, and owning the parser lets every malformed
//! header become an error that names what is wrong. Every length is checked against the bytes
//! actually present before anything is allocated, so no file (truncated, corrupt, lying about
//! its shape) can make the reader panic or allocate more than the file's own size.
//!
//! Files are read with a size bound ([`read_npy_within`]): the header is read first, and the
//! data it announces must fit the bound before any of it is read, so a special file
//! (`/dev/zero`, a pipe that never ends) or a huge array is an error, not a process that reads
//! until memory runs out.

use crate::atomic::write_atomic;
use crate::budget::{MemoryBudget, human_bytes};
use crate::tensor::Tensor;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Bytes before the header in format 1.0: magic, two version bytes, a u16 length.
const PREFIX_V1: usize = MAGIC.len() + 2 + 2;

/// numpy aligns the start of the data to this many bytes (so files can be memory-mapped).
const ALIGN: usize = 64;

/// numpy pads the header so the first axis can grow to this many digits in place
/// (`GROWTH_AXIS_MAX_DIGITS`); we copy it so our files are byte-identical to numpy's.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// The largest header accepted. A plain array's header is about 128 bytes; numpy itself
/// refuses more than 10,000 by default. The limit keeps a corrupt length field from making us
/// scan (and quote in an error message) megabytes of garbage.
pub const MAX_HEADER_LEN: usize = 100_000;

/// How much of a malformed header an error message quotes.
const QUOTE_LIMIT: usize = 200;

/// An array read from a `.npy` file: floats become an f32 [`Tensor`], integers (class labels)
/// stay integers.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyArray {
    /// From `float32`, or `float64` rounded to the nearest f32.
    F32(Tensor),
    /// From `int64`, or `int32` widened.
    I64 { shape: Vec<usize>, data: Vec<i64> },
    /// From `uint8` (images as stored, 0..=255), kept as bytes: a data set of them is a quarter
    /// of its size as floats, and whoever reads them decides how to scale them.
    U8 { shape: Vec<usize>, data: Vec<u8> },
}

impl NpyArray {
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::F32(t) => &t.shape,
            NpyArray::I64 { shape, .. } | NpyArray::U8 { shape, .. } => shape,
        }
    }

    /// What kind of values the array holds, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            NpyArray::F32(_) => "floating-point",
            NpyArray::I64 { .. } | NpyArray::U8 { .. } => "integer",
        }
    }
}

/// Why some bytes are not a `.npy` array cnnc can read. Messages read as a continuation of
/// "cannot read `file`: ".
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NpyFormatError {
    #[error("it does not start with the .npy magic string \\x93NUMPY{hint}")]
    BadMagic { hint: &'static str },
    #[error("it ends after {found} bytes, inside the {part} (which needs {needed} bytes from the start)")]
    Truncated { part: &'static str, needed: u64, found: u64 },
    #[error("it is in .npy format version {major}.{minor}; cnnc reads versions 1.0, 2.0 and 3.0")]
    Version { major: u8, minor: u8 },
    #[error(
        "its header length field says {len} bytes, more than the {MAX_HEADER_LEN} cnnc accepts \
         (a plain array's header is about 128 bytes; the file is probably corrupt)"
    )]
    HeaderTooLarge { len: u64 },
    #[error("its header is not valid UTF-8, which format version 3.0 requires")]
    HeaderEncoding,
    #[error("its header is not a valid Python dict literal ({reason}); the header reads {header:?}")]
    HeaderSyntax { reason: String, header: String },
    #[error("its header has no '{key}' entry (a .npy header holds 'descr', 'fortran_order' and 'shape')")]
    MissingKey { key: &'static str },
    #[error(
        "its header has an unexpected '{key}' entry (a .npy header holds only 'descr', 'fortran_order' and 'shape')"
    )]
    UnknownKey { key: String },
    #[error("its header has the '{key}' entry twice")]
    DuplicateKey { key: String },
    #[error(
        "its dtype {descr} is not supported: cnnc reads float32 ('<f4'), float64 ('<f8', rounded to \
         float32), int32 ('<i4'), int64 ('<i8') and uint8 ('|u1'); convert with `a.astype(np.float32)` or \
         `a.astype(np.int64)` before `np.save`"
    )]
    Dtype { descr: String },
    #[error(
        "its array is stored in Fortran (column-major) order and cnnc reads only C order; save \
         `np.ascontiguousarray(a)` instead"
    )]
    FortranOrder,
    #[error("its 'fortran_order' is {found}, not True or False")]
    BadFortranOrder { found: String },
    #[error("its 'shape' is {found}, not a tuple of non-negative integers such as (2, 3) or (5,)")]
    BadShape { found: String },
    #[error("its shape {shape} has more elements than this machine can address")]
    Overflow { shape: String },
    #[error(
        "its shape {shape:?} of {dtype} needs {expected} bytes of data after the header, but more follow (it is \
         not a regular file, and does not end there)"
    )]
    TrailingData { shape: Vec<usize>, dtype: &'static str, expected: u64 },
    #[error(
        "its shape {shape:?} of {dtype} needs {expected} bytes of data after the header, but {found} \
         follow ({})",
        data_length_note(*.found, *.expected)
    )]
    DataLength { shape: Vec<usize>, dtype: &'static str, expected: u64, found: u64 },
}

/// A `.npy` file that cannot be read or written.
#[derive(Debug, Error)]
pub enum NpyError {
    #[error("cannot read `{}`: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot read `{}`: {source}", .path.display())]
    Format { path: PathBuf, source: NpyFormatError },
    #[error(
        "`{}` holds {} of data, more than the {} of memory cnnc may use",
        .path.display(),
        human_bytes(*.needed),
        human_bytes(*.limit)
    )]
    TooLarge { path: PathBuf, needed: u64, limit: u64 },
    #[error("not enough memory to read `{}`: its array takes {}", .path.display(), human_bytes(*.bytes))]
    Allocation { path: PathBuf, bytes: u64 },
    #[error("`{}` holds {found} values, but {expected} values are needed here{hint}", .path.display())]
    Kind { path: PathBuf, expected: &'static str, found: &'static str, hint: &'static str },
    #[error("cannot write `{}`: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "cannot write `{}`: shape {shape:?} holds {} elements but {found} values were given",
        .path.display(),
        element_count(*.expected)
    )]
    ShapeMismatch { path: PathBuf, shape: Vec<usize>, expected: Option<usize>, found: usize },
}

fn data_length_note(found: u64, expected: u64) -> &'static str {
    if found < expected { "the file is truncated" } else { "there are extra bytes at the end" }
}

fn element_count(n: Option<usize>) -> String {
    n.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
}

/// Reads a `.npy` file (format 1.0, 2.0 or 3.0; float32, float64, int32 or int64; C order),
/// within the memory this machine has available.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray, NpyError> {
    read_npy_within(path, MemoryBudget::detect().bytes)
}

/// Reads a `.npy` file of at most `limit` bytes. The header comes first: the data it announces
/// must fit before any of it is read.
pub fn read_npy_within(path: impl AsRef<Path>, limit: u64) -> Result<NpyArray, NpyError> {
    let path = path.as_ref();
    let read_error = |source| NpyError::Read { path: path.to_path_buf(), source };
    let format = |source| NpyError::Format { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if meta.is_dir() {
        return Err(read_error(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory")));
    }
    // The prefix (at most 12 bytes in version 2.0 and 3.0) and the longest header accepted.
    let mut bytes = Vec::new();
    (&mut file).take(12 + MAX_HEADER_LEN as u64).read_to_end(&mut bytes).map_err(read_error)?;
    // A wrong header, or a file that ends inside it, is an error before any data is read.
    let Prefix { data_start, elem, shape, .. } = parse_prefix(&bytes).map_err(format)?;
    let data = data_bytes(elem, &shape).map_err(format)?;
    let total = (data_start as u64).saturating_add(data);
    if total > limit {
        return Err(NpyError::TooLarge { path: path.to_path_buf(), needed: total, limit });
    }
    // One byte more than announced tells a file that goes on from one that ends there.
    let wanted = usize::try_from(total + 1).unwrap_or(usize::MAX);
    if meta.is_file() && meta.len() < total {
        // A truncated file is found from its length, before its data is allocated.
        let found = meta.len().saturating_sub(data_start as u64);
        return Err(format(NpyFormatError::DataLength { shape, dtype: elem.name(), expected: data, found }));
    }
    bytes
        .try_reserve_exact(wanted.saturating_sub(bytes.len()))
        .map_err(|_| NpyError::Allocation { path: path.to_path_buf(), bytes: total })?;
    let rest = (total + 1).saturating_sub(bytes.len() as u64);
    (&mut file).take(rest).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > total && !meta.is_file() {
        return Err(format(NpyFormatError::TrailingData { shape, dtype: elem.name(), expected: data }));
    }
    if bytes.len() as u64 > total {
        // A regular file says how long it is, so the message can give the real count.
        let found = meta.len().saturating_sub(data_start as u64);
        return Err(format(NpyFormatError::DataLength { shape, dtype: elem.name(), expected: data, found }));
    }
    read_npy_bytes(&bytes).map_err(format)
}

/// Reads a `.npy` file that must hold floats (a batch of inputs, say).
pub fn read_npy_f32(path: impl AsRef<Path>) -> Result<Tensor, NpyError> {
    read_npy_f32_within(path, MemoryBudget::detect().bytes)
}

/// [`read_npy_f32`] of at most `limit` bytes.
pub fn read_npy_f32_within(path: impl AsRef<Path>, limit: u64) -> Result<Tensor, NpyError> {
    let path = path.as_ref();
    match read_npy_within(path, limit)? {
        NpyArray::F32(t) => Ok(t),
        array @ NpyArray::I64 { .. } => Err(NpyError::Kind {
            path: path.to_path_buf(),
            expected: "floating-point",
            found: array.kind(),
            hint: " (is this the labels file? convert inputs with `a.astype(np.float32)`)",
        }),
        array @ NpyArray::U8 { .. } => Err(NpyError::Kind {
            path: path.to_path_buf(),
            expected: "floating-point",
            found: array.kind(),
            hint: " (uint8 pixels: scale and convert them as the model was trained, such as \
                   `(a / 255).astype(np.float32)`)",
        }),
    }
}

/// Reads a `.npy` file that must hold integer class labels (int64, int32 or uint8); returns the
/// shape and the labels.
pub fn read_npy_labels(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<i64>), NpyError> {
    read_npy_labels_within(path, MemoryBudget::detect().bytes)
}

/// [`read_npy_labels`] of at most `limit` bytes.
pub fn read_npy_labels_within(path: impl AsRef<Path>, limit: u64) -> Result<(Vec<usize>, Vec<i64>), NpyError> {
    let path = path.as_ref();
    match read_npy_within(path, limit)? {
        NpyArray::I64 { shape, data } => Ok((shape, data)),
        // uint8 labels are common (MNIST converted with numpy keeps its bytes).
        NpyArray::U8 { shape, data } => Ok((shape, data.into_iter().map(i64::from).collect())),
        array @ NpyArray::F32(_) => Err(NpyError::Kind {
            path: path.to_path_buf(),
            expected: "integer",
            found: array.kind(),
            hint: " (class labels must be int32 or int64: convert with `y.astype(np.int64)`)",
        }),
    }
}

/// Element types cnnc reads, with their byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
    I32,
    I64,
    U8,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::U8 => 1,
            Elem::F32 | Elem::I32 => 4,
            Elem::F64 | Elem::I64 => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Elem::F32 => "float32",
            Elem::F64 => "float64",
            Elem::I32 => "int32",
            Elem::I64 => "int64",
            Elem::U8 => "uint8",
        }
    }
}

/// Decodes the bytes of a whole `.npy` file.
pub fn read_npy_bytes(bytes: &[u8]) -> Result<NpyArray, NpyFormatError> {
    let Prefix { data_start, elem, big_endian, shape } = parse_prefix(bytes)?;
    let data = &bytes[data_start..];
    let expected = data_bytes(elem, &shape)?;
    if data.len() as u64 != expected {
        return Err(NpyFormatError::DataLength { shape, dtype: elem.name(), expected, found: data.len() as u64 });
    }
    // Only now, with the length proven, is anything the size of the data allocated.
    Ok(decode(elem, big_endian, shape, data))
}

/// What the start of a file says: where the data starts and what it holds.
struct Prefix {
    data_start: usize,
    elem: Elem,
    big_endian: bool,
    shape: Vec<usize>,
}

/// The bytes of data an array of this element type and shape needs.
fn data_bytes(elem: Elem, shape: &[usize]) -> Result<u64, NpyFormatError> {
    let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    elements
        .and_then(|n| n.checked_mul(elem.size()))
        .map(|n| n as u64)
        .ok_or_else(|| NpyFormatError::Overflow { shape: format!("{shape:?}") })
}

/// Validates the magic, version and header at the start of a file: where the data starts, its
/// element type and its shape.
fn parse_prefix(bytes: &[u8]) -> Result<Prefix, NpyFormatError> {
    let found = bytes.len() as u64;
    let start = &bytes[..bytes.len().min(MAGIC.len())];
    if !MAGIC.starts_with(start) {
        let hint = if bytes.starts_with(b"PK\x03\x04") {
            " (it is a zip archive, probably an .npz: extract its .npy members or save each array with `np.save`)"
        } else {
            ""
        };
        return Err(NpyFormatError::BadMagic { hint });
    }
    let truncated = |part, needed: usize| NpyFormatError::Truncated { part, needed: needed as u64, found };
    if bytes.len() < MAGIC.len() + 2 {
        return Err(truncated("magic string and version", MAGIC.len() + 2));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => return Err(NpyFormatError::Version { major, minor }),
    };
    let header_start = MAGIC.len() + 2 + len_bytes;
    let len_field = bytes.get(MAGIC.len() + 2..header_start).ok_or_else(|| truncated("header length", header_start))?;
    let header_len = len_field.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if header_len > MAX_HEADER_LEN as u64 {
        return Err(NpyFormatError::HeaderTooLarge { len: header_len });
    }
    // Bounded by MAX_HEADER_LEN just above, so these additions cannot overflow.
    let data_start = header_start + header_len as usize;
    let raw_header = bytes.get(header_start..data_start).ok_or_else(|| truncated("header", data_start))?;
    // Versions 1.0 and 2.0 encode the header in latin-1, where every byte is the char with the
    // same code point; 3.0 uses UTF-8.
    let header: String = if utf8 {
        std::str::from_utf8(raw_header).map_err(|_| NpyFormatError::HeaderEncoding)?.to_owned()
    } else {
        raw_header.iter().map(|&b| char::from(b)).collect()
    };
    let (elem, big_endian, shape) = parse_header(&header)?;
    Ok(Prefix { data_start, elem, big_endian, shape })
}

fn decode(elem: Elem, big_endian: bool, shape: Vec<usize>, data: &[u8]) -> NpyArray {
    fn words<const N: usize>(data: &[u8], big_endian: bool) -> impl Iterator<Item = [u8; N]> + '_ {
        data.chunks_exact(N).map(move |c| {
            let mut word: [u8; N] = c.try_into().expect("chunks_exact yields N bytes");
            if big_endian {
                word.reverse();
            }
            word
        })
    }
    match elem {
        Elem::F32 => {
            NpyArray::F32(Tensor { shape, data: words::<4>(data, big_endian).map(f32::from_le_bytes).collect() })
        }
        Elem::F64 => NpyArray::F32(Tensor {
            shape,
            // Rounds to nearest; values beyond f32's range become infinities, as numpy's astype.
            data: words::<8>(data, big_endian).map(|w| f64::from_le_bytes(w) as f32).collect(),
        }),
        Elem::I32 => NpyArray::I64 {
            shape,
            data: words::<4>(data, big_endian).map(|w| i64::from(i32::from_le_bytes(w))).collect(),
        },
        Elem::I64 => NpyArray::I64 { shape, data: words::<8>(data, big_endian).map(i64::from_le_bytes).collect() },
        Elem::U8 => NpyArray::U8 { shape, data: data.to_vec() },
    }
}

/// The three header entries, validated.
fn parse_header(header: &str) -> Result<(Elem, bool, Vec<usize>), NpyFormatError> {
    let syntax = |reason: &str| NpyFormatError::HeaderSyntax { reason: reason.to_owned(), header: quote(header) };
    let text = header.trim_matches(is_python_space);
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| syntax("it must be a dict in braces, `{...}`"))?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    let items = split_top_level(inner, ',').map_err(|r| syntax(&r))?;
    let count = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let item = item.trim_matches(is_python_space);
        if item.is_empty() {
            // A trailing comma (numpy always writes one) or an empty dict.
            if i + 1 == count {
                continue;
            }
            return Err(syntax("two commas in a row"));
        }
        let mut kv = split_top_level(item, ':').map_err(|r| syntax(&r))?.into_iter();
        let (Some(key), Some(value), None) = (kv.next(), kv.next(), kv.next()) else {
            return Err(syntax(&format!("`{item}` is not a `'key': value` entry")));
        };
        let key = string_literal(key.trim_matches(is_python_space))
            .ok_or_else(|| syntax(&format!("the key {} is not a quoted string", key.trim())))?;
        let value = value.trim_matches(is_python_space);
        let slot = match key {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            other => return Err(NpyFormatError::UnknownKey { key: other.to_owned() }),
        };
        if slot.replace(value).is_some() {
            return Err(NpyFormatError::DuplicateKey { key: key.to_owned() });
        }
    }
    let descr = descr.ok_or(NpyFormatError::MissingKey { key: "descr" })?;
    let fortran = fortran.ok_or(NpyFormatError::MissingKey { key: "fortran_order" })?;
    let shape = shape.ok_or(NpyFormatError::MissingKey { key: "shape" })?;

    let (elem, big_endian) = parse_descr(descr)?;
    match fortran {
        "False" => {}
        "True" => return Err(NpyFormatError::FortranOrder),
        other => return Err(NpyFormatError::BadFortranOrder { found: quote(other) }),
    }
    Ok((elem, big_endian, parse_shape(shape)?))
}

/// Python's whitespace between tokens (numpy pads with spaces and ends with a newline).
fn is_python_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

/// Splits at `sep` where it is outside brackets and quotes. Errors on unbalanced brackets or
/// an unterminated string.
fn split_top_level(text: &str, sep: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if c == '\\' {
                return Err("backslash escapes in strings are not supported".to_owned());
            }
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' => stack.push(')'),
            '[' => stack.push(']'),
            '{' => stack.push('}'),
            ')' | ']' | '}' => {
                let expected = stack.pop();
                if expected != Some(c) {
                    return Err(format!("unbalanced `{c}`"));
                }
            }
            c if c == sep && stack.is_empty() => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if let Some(q) = quote {
        return Err(format!("a string opened with {q} is never closed"));
    }
    if let Some(close) = stack.last() {
        return Err(format!("a bracket is never closed (missing `{close}`)"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// The contents of a `'...'` or `"..."` literal, if `text` is exactly one.
fn string_literal(text: &str) -> Option<&str> {
    for q in ['\'', '"'] {
        if let Some(inner) = text.strip_prefix(q).and_then(|t| t.strip_suffix(q))
            && !inner.contains(q)
        {
            return Some(inner);
        }
    }
    None
}

fn parse_descr(value: &str) -> Result<(Elem, bool), NpyFormatError> {
    let unsupported = || NpyFormatError::Dtype { descr: quote(value) };
    let descr = string_literal(value).ok_or_else(unsupported)?;
    // numpy writes single bytes with '|' (no byte order); either order mark means the same.
    if matches!(descr, "|u1" | "<u1" | ">u1") {
        return Ok((Elem::U8, false));
    }
    let (big_endian, code) = match descr.as_bytes().first() {
        Some(b'<') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        // '=' (native) and '|' (no order) are never written by numpy for these types, and a
        // bare code like 'f4' would leave the byte order to guesswork.
        Some(_) | None => return Err(unsupported()),
    };
    let elem = match code {
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        "i4" => Elem::I32,
        "i8" => Elem::I64,
        _ => return Err(unsupported()),
    };
    Ok((elem, big_endian))
}

/// A Python tuple of ints: `()`, `(5,)`, `(2, 3)`. Python 2's `3L` longs are accepted, as numpy
/// does for files written by old versions. `(5)` is the int 5, not a tuple, and is rejected.
fn parse_shape(value: &str) -> Result<Vec<usize>, NpyFormatError> {
    let bad = || NpyFormatError::BadShape { found: quote(value) };
    let inner = value.strip_prefix('(').and_then(|t| t.strip_suffix(')')).ok_or_else(bad)?;
    let parts = split_top_level(inner, ',').map_err(|_| bad())?;
    let mut items: Vec<&str> = parts.iter().map(|p| p.trim_matches(is_python_space)).collect();
    match items.as_slice() {
        // `()`: a scalar.
        [""] => return Ok(Vec::new()),
        // `(5)`: an int in parentheses.
        [_] => return Err(bad()),
        _ => {}
    }
    if items.last().is_some_and(|last| last.is_empty()) {
        items.pop();
    }
    let mut shape = Vec::with_capacity(items.len());
    for item in items {
        let digits = item.strip_suffix(['L', 'l']).unwrap_or(item);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        // Digits only, so a parse failure can only be a number too large for a usize.
        shape.push(digits.parse::<usize>().map_err(|_| NpyFormatError::Overflow { shape: quote(value) })?);
    }
    Ok(shape)
}

/// A header or value cut down for quoting in a message.
fn quote(text: &str) -> String {
    let text = text.trim_end_matches(is_python_space);
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The header numpy's `np.save` writes (format 1.0) for a C-order array, including its padding.
/// Errors when the header would not fit the 1.0 format's u16 length (a rank in the thousands).
fn header_bytes(descr: &str, shape: &[usize]) -> io::Result<Vec<u8>> {
    // Python's repr of a tuple: `()`, `(5,)`, `(2, 3)`.
    let shape_repr = match shape {
        [] => "()".to_owned(),
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_repr}, }}");
    if let Some(first) = shape.first() {
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(first.to_string().len())));
    }
    // numpy's `_wrap_header`: the padding is never empty (a full ALIGN when already aligned).
    let used = PREFIX_V1 + dict.len() + 1;
    let pad = ALIGN - used % ALIGN;
    dict.push_str(&" ".repeat(pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(PREFIX_V1 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    let len = u16::try_from(dict.len()).map_err(|_| {
        io::Error::other(format!("a rank-{} shape does not fit in a .npy 1.0 header (64 KiB)", shape.len()))
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    Ok(out)
}

/// Writes a whole `.npy` 1.0 file to `out`.
fn write_array<T: Copy, const N: usize>(
    out: &mut dyn Write,
    descr: &str,
    shape: &[usize],
    data: &[T],
    to_le: fn(T) -> [u8; N],
) -> io::Result<()> {
    out.write_all(&header_bytes(descr, shape)?)?;
    // Convert in blocks: one write per element would be slow, one buffer for all doubles memory.
    let mut block = Vec::with_capacity(N * 4096);
    for chunk in data.chunks(4096) {
        block.clear();
        block.extend(chunk.iter().flat_map(|&x| to_le(x)));
        out.write_all(&block)?;
    }
    Ok(())
}

fn check_write(path: &Path, shape: &[usize], len: usize) -> Result<(), NpyError> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(len) {
        return Err(NpyError::ShapeMismatch { path: path.to_path_buf(), shape: shape.to_vec(), expected, found: len });
    }
    Ok(())
}

/// Writes `tensor` as a float32 `.npy` file (format 1.0, C order), atomically.
pub fn write_npy(path: impl AsRef<Path>, tensor: &Tensor) -> Result<(), NpyError> {
    let path = path.as_ref();
    check_write(path, &tensor.shape, tensor.data.len())?;
    write_atomic(path, |out| write_array(out, "<f4", &tensor.shape, &tensor.data, f32::to_le_bytes))
        .map_err(|source| NpyError::Write { path: path.to_path_buf(), source })
}

/// Writes class labels as an int64 `.npy` file (format 1.0, C order), atomically.
pub fn write_npy_labels(path: impl AsRef<Path>, shape: &[usize], labels: &[i64]) -> Result<(), NpyError> {
    let path = path.as_ref();
    check_write(path, shape, labels.len())?;
    write_atomic(path, |out| write_array(out, "<i8", shape, labels, i64::to_le_bytes))
        .map_err(|source| NpyError::Write { path: path.to_path_buf(), source })
}

/// Writes uint8 values (images as stored) as a `.npy` file (format 1.0, C order), atomically.
pub fn write_npy_u8(path: impl AsRef<Path>, shape: &[usize], data: &[u8]) -> Result<(), NpyError> {
    let path = path.as_ref();
    check_write(path, shape, data.len())?;
    write_atomic(path, |out| write_array(out, "|u1", shape, data, |b: u8| [b]))
        .map_err(|source| NpyError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        write_array(&mut out, "<f4", shape, data, f32::to_le_bytes).unwrap();
        out
    }

    /// A file as numpy >= 1.24 writes it, built by hand from the format's rules.
    fn golden(descr: &str, shape_repr: &str, growth: usize, data: &[u8]) -> Vec<u8> {
        let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_repr}, }}");
        dict.push_str(&" ".repeat(growth));
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let header_len = 128 - 10; // the whole prefix + header pads to 128 bytes
        bytes.extend_from_slice(&(header_len as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        bytes.resize(127, b' ');
        bytes.push(b'\n');
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn writes_the_bytes_numpy_writes() {
        // np.save(f, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)), 20 = 21 - len("2").
        let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|x| x.to_le_bytes()).collect();
        let expected = golden("<f4", "(2, 3)", 20, &data);
        let got = encode_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(got, expected);
        assert_eq!(&got[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert_eq!(got[127], b'\n');
        assert_eq!(got.len(), 128 + 24);
        // The literal start of numpy's header, byte for byte.
        assert!(got[10..].starts_with(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
    }

    #[test]
    fn writes_one_dimensional_and_scalar_shapes_as_python_reprs() {
        let got = encode_f32(&[3], &[0.5, -1.0, 2.0]);
        let data: Vec<u8> = [0.5f32, -1.0, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(got, golden("<f4", "(3,)", 20, &data));
        let got = encode_f32(&[], &[7.0]);
        assert_eq!(got, golden("<f4", "()", 0, &7f32.to_le_bytes()));
    }

    #[test]
    fn reads_the_golden_file() {
        let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|x| x.to_le_bytes()).collect();
        let array = read_npy_bytes(&golden("<f4", "(2, 3)", 20, &data)).unwrap();
        assert_eq!(array, NpyArray::F32(Tensor { shape: vec![2, 3], data: vec![1., 2., 3., 4., 5., 6.] }));
    }

    #[test]
    fn header_is_aligned_for_every_rank_and_size() {
        for shape in [vec![], vec![1], vec![9; 4], vec![123_456_789, 1], vec![1; 30]] {
            let n: usize = shape.iter().product();
            if n > 1000 {
                let bytes = header_bytes("<f4", &shape).unwrap();
                assert_eq!(bytes.len() % ALIGN, 0, "{shape:?}");
                assert_eq!(*bytes.last().unwrap(), b'\n');
                continue;
            }
            let bytes = encode_f32(&shape, &vec![1.0; n]);
            assert_eq!((bytes.len() - 4 * n) % ALIGN, 0, "{shape:?}");
            let back = read_npy_bytes(&bytes).unwrap();
            assert_eq!(back.shape(), shape.as_slice());
        }
    }

    /// Builds a file with an arbitrary header text, version and payload.
    fn raw(version: (u8, u8), header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[version.0, version.1]);
        if version.0 == 1 {
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn reads_versions_two_and_three_and_other_dtypes() {
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n";
        let data: Vec<u8> = [1.5f64, -2.25].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            read_npy_bytes(&raw((2, 0), h, &data)).unwrap(),
            NpyArray::F32(Tensor { shape: vec![2], data: vec![1.5, -2.25] })
        );
        let h = "{\"descr\": \"<i4\", \"fortran_order\": False, \"shape\": (1, 3)}";
        let data: Vec<u8> = [3i32, -1, 7].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            read_npy_bytes(&raw((3, 0), h, &data)).unwrap(),
            NpyArray::I64 { shape: vec![1, 3], data: vec![3, -1, 7] }
        );
        let h = "{'shape': (2,), 'fortran_order': False, 'descr': '>i8'}";
        let data: Vec<u8> = [9i64, -4].iter().flat_map(|x| x.to_be_bytes()).collect();
        assert_eq!(
            read_npy_bytes(&raw((1, 0), h, &data)).unwrap(),
            NpyArray::I64 { shape: vec![2], data: vec![9, -4] }
        );
        // Python 2 longs, as numpy on Python 2 wrote them.
        let h = "{'descr': '>f4', 'fortran_order': False, 'shape': (1L, 2L), }";
        let data: Vec<u8> = [1f32, 2.].iter().flat_map(|x| x.to_be_bytes()).collect();
        assert_eq!(read_npy_bytes(&raw((1, 0), h, &data)).unwrap().shape(), &[1, 2]);
    }

    #[test]
    fn empty_arrays_round_trip() {
        let bytes = encode_f32(&[0, 5], &[]);
        assert_eq!(read_npy_bytes(&bytes).unwrap(), NpyArray::F32(Tensor { shape: vec![0, 5], data: vec![] }));
    }

    #[test]
    fn file_round_trip_and_kind_checks() {
        let dir = tempfile::tempdir().unwrap();
        let x = dir.path().join("x.npy");
        let t = Tensor { shape: vec![2, 1, 2, 2], data: vec![0.0, -0.0, 1e-30, f32::MAX, f32::MIN, 3.5, -7.25, 1.0] };
        write_npy(&x, &t).unwrap();
        assert_eq!(read_npy(&x).unwrap(), NpyArray::F32(t.clone()));
        assert_eq!(read_npy_f32(&x).unwrap(), t);
        let e = read_npy_labels(&x).unwrap_err();
        assert!(e.to_string().contains("class labels must be int32 or int64"), "{e}");

        let y = dir.path().join("y.npy");
        write_npy_labels(&y, &[4], &[0, 9, 3, i64::MIN]).unwrap();
        assert_eq!(read_npy_labels(&y).unwrap(), (vec![4], vec![0, 9, 3, i64::MIN]));
        let e = read_npy_f32(&y).unwrap_err();
        assert!(e.to_string().contains("holds integer values, but floating-point"), "{e}");

        let e = write_npy_labels(&y, &[3], &[1, 2]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot write `{}`: shape [3] holds 3 elements but 2 values were given", y.display())
        );
        // The failed write left the earlier file alone.
        assert_eq!(read_npy_labels(&y).unwrap().1.len(), 4);
    }

    #[test]
    fn uint8_arrays_are_read_as_bytes_and_widen_as_labels() {
        // np.save(f, np.array([[0, 7, 255]], dtype=np.uint8)): numpy's own descr is '|u1'.
        let bytes = golden("|u1", "(1, 3)", 20, &[0, 7, 255]);
        assert_eq!(read_npy_bytes(&bytes).unwrap(), NpyArray::U8 { shape: vec![1, 3], data: vec![0, 7, 255] });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u8.npy");
        write_npy_u8(&path, &[1, 3], &[0, 7, 255]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "written as numpy writes it");
        assert_eq!(read_npy_labels(&path).unwrap(), (vec![1, 3], vec![0, 7, 255]));
        let e = read_npy_f32(&path).unwrap_err();
        assert!(
            e.to_string().contains("holds integer values, but floating-point values are needed here (uint8"),
            "{e}"
        );
        // One byte per element in the length checks too.
        let e = read_npy_bytes(&golden("|u1", "(1, 3)", 20, &[0, 7])).unwrap_err();
        assert!(e.to_string().contains("uint8 needs 3 bytes of data after the header, but 2 follow"), "{e}");
        let e = header_error("{'descr': '|i1', 'fortran_order': False, 'shape': (1,), }");
        assert!(e.contains("int64 ('<i8') and uint8 ('|u1')"), "{e}");
    }

    #[test]
    fn shapes_too_long_for_a_version_1_header_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.npy");
        let e = write_npy(&path, &Tensor { shape: vec![1; 30_000], data: vec![1.0] }).unwrap_err();
        assert!(e.to_string().ends_with("a rank-30000 shape does not fit in a .npy 1.0 header (64 KiB)"), "{e}");
        assert!(!path.exists());
        // Far past any real rank, but still inside 64 KiB: written and read back.
        write_npy(&path, &Tensor { shape: vec![1; 10_000], data: vec![1.0] }).unwrap();
        assert_eq!(read_npy_f32(&path).unwrap().shape.len(), 10_000);
    }

    #[test]
    fn missing_files_name_the_path() {
        let e = read_npy("/no/such/file.npy").unwrap_err();
        assert!(e.to_string().starts_with("cannot read `/no/such/file.npy`: "), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        for cut in 0..bytes.len() {
            let e = read_npy_bytes(&bytes[..cut]).unwrap_err();
            match e {
                NpyFormatError::Truncated { found, .. } => assert_eq!(found, cut as u64),
                NpyFormatError::DataLength { expected: 24, found, .. } => assert_eq!(found as usize + 128, cut),
                other => panic!("cut at {cut}: unexpected {other:?}"),
            }
        }
        let e = read_npy_bytes(&bytes[..130]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "its shape [2, 3] of float32 needs 24 bytes of data after the header, but 2 follow (the file is truncated)"
        );
        let mut long = bytes.clone();
        long.push(0);
        assert!(read_npy_bytes(&long).unwrap_err().to_string().contains("extra bytes at the end"));
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let bytes = encode_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        // Every single-byte corruption of the prefix and header, with a few values each.
        for i in 0..128 {
            for v in [0u8, b' ', b'(', b')', b'\'', b',', b'9', b'{', b'}', 0xff, 0x93] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = read_npy_bytes(&b);
            }
        }
        // Deterministic pseudo-random garbage after a valid prefix.
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut b = bytes[..10].to_vec();
            for _ in 0..(state % 150) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                const ALPHABET: &[u8] = b"{}()[]',: 0123456789TrueFalsdhpf<>\n\"L";
                b.push(ALPHABET[(state % ALPHABET.len() as u64) as usize]);
            }
            let _ = read_npy_bytes(&b);
        }
    }

    #[test]
    fn lying_shapes_and_huge_headers_are_errors() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }";
        assert!(matches!(read_npy_bytes(&raw((1, 0), h, &[])), Err(NpyFormatError::DataLength { .. })));
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 18446744073709551615), }";
        assert!(matches!(read_npy_bytes(&raw((1, 0), h, &[])), Err(NpyFormatError::Overflow { .. })));
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }";
        assert!(matches!(read_npy_bytes(&raw((1, 0), h, &[])), Err(NpyFormatError::Overflow { .. })));
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[2, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(read_npy_bytes(&b).unwrap_err(), NpyFormatError::HeaderTooLarge { len: 0xffff_ffff });
    }

    fn header_error(header: &str) -> String {
        read_npy_bytes(&raw((1, 0), header, &[0; 4])).unwrap_err().to_string()
    }

    #[test]
    fn header_errors_say_what_is_wrong() {
        let e = header_error("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }");
        assert!(e.contains("Fortran (column-major) order"), "{e}");
        let e = header_error("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }");
        assert!(e.starts_with("its dtype '<f2' is not supported"), "{e}");
        let e = header_error("{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1,), }");
        assert!(e.starts_with("its dtype [('x', '<f4')] is not supported"), "{e}");
        let e = header_error("{'descr': '<f4', 'shape': (1,), }");
        assert!(e.contains("no 'fortran_order' entry"), "{e}");
        let e = header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}");
        assert!(e.contains("unexpected 'extra' entry"), "{e}");
        let e = header_error("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}");
        assert!(e.contains("'descr' entry twice"), "{e}");
        let e = header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (1), }");
        assert!(e.contains("'shape' is (1), not a tuple"), "{e}");
        let e = header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }");
        assert!(e.contains("not a tuple of non-negative integers"), "{e}");
        let e = header_error("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }");
        assert!(e.contains("'fortran_order' is 0"), "{e}");
        let e = header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (1,, }");
        assert!(e.contains("not a valid Python dict literal"), "{e}");
        let e = header_error("{'descr: '<f4'}");
        assert!(e.contains("never closed"), "{e}");
        let e = read_npy_bytes(b"\x93NUMPY\x04\x00").unwrap_err();
        assert_eq!(e, NpyFormatError::Version { major: 4, minor: 0 });
        let e = read_npy_bytes(b"PK\x03\x04rest of a zip").unwrap_err();
        assert!(e.to_string().contains("probably an .npz"), "{e}");
        let e = read_npy_bytes(b"\x93NUMPY\x03\x00\x02\x00\x00\x00\xff\xfe").unwrap_err();
        assert_eq!(e, NpyFormatError::HeaderEncoding);
    }

    #[test]
    fn long_headers_are_quoted_briefly() {
        let h = format!("{{'descr': '<f4', {}", "x".repeat(5000));
        let e = header_error(&h);
        assert!(e.len() < 600, "{}", e.len());
        assert!(e.ends_with("...\""), "{e}");
    }

    #[test]
    fn reading_is_bounded_by_the_header_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let t = Tensor { shape: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        write_npy(&path, &t).unwrap();
        assert_eq!(read_npy_within(&path, 128 + 24).unwrap(), NpyArray::F32(t.clone()));
        // One byte less than the file needs: refused before the data is read.
        let e = read_npy_within(&path, 128 + 23).unwrap_err();
        assert!(matches!(e, NpyError::TooLarge { needed: 152, limit: 151, .. }), "{e}");
        assert!(e.to_string().ends_with("holds 152 B of data, more than the 151 B of memory cnnc may use"), "{e}");
        // A header announcing 8 TB over a file of a few bytes: refused from the header alone.
        let huge = golden("<f4", "(2000000, 1000000)", 0, &[0; 8]);
        std::fs::write(&path, &huge).unwrap();
        let e = read_npy_within(&path, 1 << 30).unwrap_err();
        assert!(matches!(e, NpyError::TooLarge { needed, .. } if needed == 128 + 8_000_000_000_000), "{e}");
        // Extra bytes in a regular file are counted exactly.
        let mut long = encode_f32(&[2], &[1.0, 2.0]);
        long.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &long).unwrap();
        let e = read_npy_within(&path, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("needs 8 bytes of data after the header, but 108 follow"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_errors_not_endless_reads() {
        // /dev/zero is no .npy file: its first bytes say so.
        let e = read_npy_within("/dev/zero", 1 << 40).unwrap_err();
        assert!(e.to_string().contains("does not start with the .npy magic string"), "{e}");
        let e = read_npy_within("/", 1 << 40).unwrap_err();
        assert!(matches!(e, NpyError::Read { .. }), "{e}");
        // A pipe that goes on after the data it announced is read no further than one byte.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.npy");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            return;
        }
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut out = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                let _ = out.write_all(&encode_f32(&[2], &[1.0, 2.0]));
                // Then endless zeros, until the reader hangs up.
                let zeros = [0u8; 4096];
                while out.write_all(&zeros).is_ok() {}
            })
        };
        let e = read_npy_within(&fifo, 1 << 30).unwrap_err();
        assert!(matches!(e, NpyError::Format { source: NpyFormatError::TrailingData { expected: 8, .. }, .. }), "{e}");
        writer.join().unwrap();
    }
}
