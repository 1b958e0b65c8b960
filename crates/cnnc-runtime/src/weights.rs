//! Model weights in safetensors files, and checking a set of weights against a graph.
//!
//! safetensors is the format PyTorch users export with `safetensors.torch.save_file(
//! model.state_dict(), path)`: a JSON header naming each tensor's dtype, shape and byte range,
//! then the raw little-endian data. Reading validates the header here ([`crate::st_header`]):
//! size limits, each tensor's dtype, shape and byte range, ranges that tile the data exactly,
//! no repeated names; a corrupt file is an error naming the tensor that is wrong, never a
//! panic. The header is read first, and the data it describes must fit the memory bound
//! ([`load_safetensors_within`]) before any of it is read, so a huge file or a special one
//! (`/dev/zero`) is an error, not a read until memory runs out. Writing streams the file (the
//! header, then each tensor's bytes through a small buffer: no copy of the weights in memory),
//! byte for byte what the `safetensors` crate writes (a test checks it against the crate).
//!
//! PyTorch's batch-norm layers carry a `num_batches_tracked` counter (an int64 scalar) in their
//! state_dict. cnnc has no use for it (it only matters for `momentum=None`, a cumulative
//! average cnnc does not offer), so such entries are skipped on load and ignored by
//! [`check_weights`]: demanding their removal would make every PyTorch export fail.

use crate::TensorMap;
use crate::atomic::write_atomic;
use crate::budget::{MemoryBudget, human_bytes};
use crate::st_header::{self, HeaderError, MAX_HEADER_BYTES};
use crate::tensor::Tensor;
use cnnc_ir::Graph;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The key suffix of PyTorch's batch-norm step counter; see the module documentation.
pub const NUM_BATCHES_TRACKED: &str = ".num_batches_tracked";

/// A weights file that cannot be read or written, or weights that do not fit a model.
#[derive(Debug, Error)]
pub enum WeightsError {
    #[error("cannot read weights file `{}`: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("`{}` is not a valid safetensors file: {problem}", .path.display())]
    Format { path: PathBuf, problem: HeaderError },
    #[error(
        "`{}` holds {} of tensors, more than the {} of memory cnnc may use",
        .path.display(),
        human_bytes(*.needed),
        human_bytes(*.limit)
    )]
    TooLarge { path: PathBuf, needed: u64, limit: u64 },
    #[error("not enough memory to read `{}`: its tensors take {}", .path.display(), human_bytes(*.bytes))]
    Allocation { path: PathBuf, bytes: u64 },
    #[error(
        "tensor `{name}` in `{}` has dtype {dtype}, but cnnc reads only F32 weights; convert \
         before saving, e.g. `{{k: v.float() for k, v in state_dict.items()}}`",
        .path.display()
    )]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error("cannot write weights file `{}`: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "cannot save weights to `{}`: tensor `{name}` has shape {shape:?} but holds {len} values",
        .path.display()
    )]
    Inconsistent { path: PathBuf, name: String, shape: Vec<usize>, len: usize },
    #[error("missing weight `{name}`: the model needs a tensor of shape {expected:?} under that name")]
    Missing { name: String, expected: Vec<usize> },
    #[error("unexpected weight `{name}`: the model has no parameter of that name{}", did_you_mean(.suggestion))]
    Unexpected { name: String, suggestion: Option<String> },
    #[error("weight `{name}` has shape {found:?}, but the model expects {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion.as_ref().map_or_else(String::new, |s| format!("; did you mean `{s}`?"))
}

/// Loads every tensor of a safetensors file, within the memory this machine has available.
/// Every tensor must be F32, except PyTorch's `*.num_batches_tracked` counters, which are
/// skipped (see the module documentation).
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<TensorMap, WeightsError> {
    load_safetensors_within(path, MemoryBudget::detect().bytes)
}

/// [`load_safetensors`] of a file of at most `limit` bytes: the header is read and checked
/// first, and the data it describes must fit before any of it is read.
pub fn load_safetensors_within(path: impl AsRef<Path>, limit: u64) -> Result<TensorMap, WeightsError> {
    load_safetensors_with_metadata_within(path, limit).map(|(tensors, _)| tensors)
}

/// The metadata of a safetensors file (its header's `__metadata__` strings: `format`, and
/// what cnnc stores beside trained weights, such as the input normalisation), read with the
/// tensors.
pub type Metadata = std::collections::BTreeMap<String, String>;

/// [`load_safetensors_within`], with the file's [`Metadata`].
pub fn load_safetensors_with_metadata_within(
    path: impl AsRef<Path>,
    limit: u64,
) -> Result<(TensorMap, Metadata), WeightsError> {
    let path = path.as_ref();
    let read_error = |source| WeightsError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if meta.is_dir() {
        return Err(read_error(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory")));
    }
    read_from(file, path, limit, meta.is_file().then_some(meta.len()))
}

/// Reads a safetensors file from `input`, named `path` in messages; `length` is the file's, when
/// known (a regular file), so that a truncated one is found before its data is allocated.
fn read_from(
    mut file: impl Read,
    path: &Path,
    limit: u64,
    length: Option<u64>,
) -> Result<(TensorMap, Metadata), WeightsError> {
    let read_error = |source| WeightsError::Read { path: path.to_path_buf(), source };
    let corrupt = |problem| WeightsError::Format { path: path.to_path_buf(), problem };
    let too_large = |needed| WeightsError::TooLarge { path: path.to_path_buf(), needed, limit };
    let mut prefix = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut prefix).map_err(read_error)?;
    let Ok(len_bytes) = <[u8; 8]>::try_from(prefix.as_slice()) else {
        return Err(corrupt(HeaderError::TooShort { found: prefix.len() as u64 }));
    };
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(corrupt(HeaderError::HeaderTooLarge { len: header_len }));
    }
    if 8 + header_len > limit {
        return Err(too_large(8 + header_len));
    }
    let mut json = Vec::new();
    (&mut file).take(header_len).read_to_end(&mut json).map_err(read_error)?;
    if (json.len() as u64) < header_len {
        return Err(corrupt(HeaderError::TruncatedHeader { len: header_len, found: 8 + json.len() as u64 }));
    }
    let header = st_header::parse(&json).map_err(corrupt)?;
    let needed = (8 + header_len).saturating_add(header.data_len);
    if needed > limit {
        return Err(too_large(needed));
    }
    if let Some(length) = length
        && length < needed
    {
        let found = length - 8 - header_len;
        return Err(corrupt(HeaderError::DataTruncated { expected: header.data_len, found }));
    }
    let allocation = || WeightsError::Allocation { path: path.to_path_buf(), bytes: header.data_len };
    let data_len = usize::try_from(header.data_len).map_err(|_| allocation())?;
    let mut data = Vec::new();
    data.try_reserve_exact(data_len.saturating_add(1)).map_err(|_| allocation())?;
    // One byte more than described tells a file that goes on from one that ends there.
    (&mut file).take(header.data_len + 1).read_to_end(&mut data).map_err(read_error)?;
    match data.len().cmp(&data_len) {
        std::cmp::Ordering::Less => {
            return Err(corrupt(HeaderError::DataTruncated { expected: header.data_len, found: data.len() as u64 }));
        }
        std::cmp::Ordering::Greater => return Err(corrupt(HeaderError::TrailingBytes { expected: header.data_len })),
        std::cmp::Ordering::Equal => {}
    }
    Ok((tensors_of(&header, &data, path)?, header.metadata))
}

/// The F32 tensors of a validated header, from the data it describes.
fn tensors_of(header: &st_header::Header, data: &[u8], path: &Path) -> Result<TensorMap, WeightsError> {
    let mut map = TensorMap::new();
    for entry in &header.entries {
        if entry.name.ends_with(NUM_BATCHES_TRACKED) {
            continue;
        }
        if entry.dtype != "F32" {
            return Err(WeightsError::Dtype {
                path: path.to_path_buf(),
                name: entry.name.clone(),
                dtype: entry.dtype.clone(),
            });
        }
        // The header's ranges were checked to lie in the data, each the length of its shape;
        // should that ever fail, it is still an error rather than a panic.
        let mismatch = || WeightsError::Format {
            path: path.to_path_buf(),
            problem: HeaderError::Entry {
                name: entry.name.clone(),
                problem: "its data does not match its shape".into(),
            },
        };
        let bytes = data.get(entry.begin as usize..entry.end as usize).ok_or_else(mismatch)?;
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let tensor = Tensor::from_vec(&entry.shape, values).map_err(|_| mismatch())?;
        map.insert(entry.name.clone(), tensor);
    }
    Ok(map)
}

/// Saves the tensors as an F32 safetensors file, atomically (the old file survives any error).
/// The header carries `"format": "pt"`, which Hugging Face loaders expect of PyTorch weights.
pub fn save_safetensors(path: impl AsRef<Path>, weights: &TensorMap) -> Result<(), WeightsError> {
    save_safetensors_with_metadata(path, weights, &Metadata::new())
}

/// [`save_safetensors`] with `metadata` in the header beside `"format": "pt"`.
pub fn save_safetensors_with_metadata(
    path: impl AsRef<Path>,
    weights: &TensorMap,
    metadata: &Metadata,
) -> Result<(), WeightsError> {
    let path = path.as_ref();
    let header = header_of(weights, metadata, path)?;
    write_atomic(path, |out| {
        out.write_all(&header)?;
        write_data(out, weights)
    })
    .map_err(|source| WeightsError::Write { path: path.to_path_buf(), source })
}

/// The file's header: its length (8 bytes, little-endian), then the JSON naming each tensor's
/// dtype, shape and byte range (tensors in name order, back to back) and the metadata, keys
/// sorted so that the same weights give the same bytes, padded with spaces to the 8-byte
/// boundary the data starts at, as the format requires. What the `safetensors` crate writes,
/// but without the crate's copy of every tensor's bytes in memory (a checkpoint of ResNet-18
/// with its optimiser state is 90 MB).
fn header_of(weights: &TensorMap, metadata: &Metadata, path: &Path) -> Result<Vec<u8>, WeightsError> {
    use serde_json::{Map, Value, json};
    let mut meta: Map<String, Value> = metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    meta.insert("format".to_owned(), Value::String("pt".to_owned()));
    let mut header = Map::new();
    header.insert("__metadata__".to_owned(), Value::Object(meta));
    let mut offset = 0u64;
    for (name, t) in weights {
        if t.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) != Some(t.data.len()) || name == "__metadata__"
        {
            return Err(WeightsError::Inconsistent {
                path: path.to_path_buf(),
                name: name.clone(),
                shape: t.shape.clone(),
                len: t.data.len(),
            });
        }
        let end = offset + 4 * t.data.len() as u64;
        header.insert(name.clone(), json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }));
        offset = end;
    }
    // serde_json's maps are sorted (no `preserve_order`), so the keys come out in order.
    let mut text = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| WeightsError::Write { path: path.to_path_buf(), source: io::Error::other(e) })?;
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + text.len());
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&text);
    Ok(bytes)
}

/// Every tensor's values as little-endian bytes, in name order, through a small buffer.
fn write_data(out: &mut dyn Write, weights: &TensorMap) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    for t in weights.values() {
        for chunk in t.data.chunks(buf.len() / 4) {
            for (b, x) in buf.chunks_exact_mut(4).zip(chunk) {
                b.copy_from_slice(&x.to_le_bytes());
            }
            out.write_all(&buf[..4 * chunk.len()])?;
        }
    }
    Ok(())
}

/// Checks weights against the parameters the graph declares (`Graph::named_params`): every
/// missing, unexpected and mis-shaped tensor is reported, all in one go. Missing and
/// mis-shaped tensors come in graph order, then unexpected ones in name order, each with a
/// "did you mean" among the missing names when one is close. `*.num_batches_tracked` entries
/// are ignored (see the module documentation).
pub fn check_weights(graph: &Graph, weights: &TensorMap) -> Result<(), Vec<WeightsError>> {
    let expected = graph.named_params();
    let mut errors = Vec::new();
    let mut missing = Vec::new();
    for (name, spec) in &expected {
        match weights.get(name) {
            None => {
                missing.push(name.as_str());
                errors.push(WeightsError::Missing { name: name.clone(), expected: spec.dims.clone() });
            }
            Some(t) if t.shape != spec.dims => errors.push(WeightsError::Shape {
                name: name.clone(),
                expected: spec.dims.clone(),
                found: t.shape.clone(),
            }),
            Some(_) => {}
        }
    }
    let known: HashSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    for name in weights.keys() {
        if known.contains(name.as_str()) || name.ends_with(NUM_BATCHES_TRACKED) {
            continue;
        }
        let suggestion = cnnc_diag::did_you_mean(name, missing.iter().copied()).map(str::to_owned);
        errors.push(WeightsError::Unexpected { name: name.clone(), suggestion });
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_diag::Span;
    use cnnc_ir::{BatchNorm, Conv, Fc, Op, Shape, Window};

    /// The tensors of a whole file's bytes.
    fn decode(bytes: &[u8], path: &Path) -> Result<TensorMap, WeightsError> {
        read_from(bytes, path, u64::MAX, Some(bytes.len() as u64)).map(|(tensors, _)| tensors)
    }

    /// The bytes `save_safetensors_with_metadata` writes.
    fn bytes_of(weights: &TensorMap, metadata: &Metadata, path: &Path) -> Result<Vec<u8>, WeightsError> {
        let mut bytes = header_of(weights, metadata, path)?;
        write_data(&mut bytes, weights).unwrap();
        Ok(bytes)
    }

    /// An f32 tensor seen as the `safetensors` crate's view.
    struct F32View<'a>(&'a Tensor);

    impl safetensors::tensor::View for F32View<'_> {
        fn dtype(&self) -> safetensors::Dtype {
            safetensors::Dtype::F32
        }
        fn shape(&self) -> &[usize] {
            &self.0.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Owned(self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        fn data_len(&self) -> usize {
            self.0.data.len() * 4
        }
    }

    #[test]
    fn the_streamed_file_is_what_the_safetensors_crate_writes_with_sorted_keys() {
        let metadata: Metadata = (0..12).map(|k| (format!("cnnc.key{k}"), format!("v{k}"))).collect();
        let mut weights = sample();
        weights
            .insert("a.long.name".to_owned(), Tensor { shape: vec![3, 5], data: (0..15).map(|i| i as f32).collect() });
        let mut meta: std::collections::HashMap<String, String> = metadata.clone().into_iter().collect();
        meta.insert("format".to_owned(), "pt".to_owned());
        let crate_bytes =
            safetensors::serialize(weights.iter().map(|(n, t)| (n.as_str(), F32View(t))), Some(meta)).unwrap();
        // The crate writes the header in a HashMap's order: compare with its keys sorted.
        let len = u64::from_le_bytes(crate_bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&crate_bytes[8..8 + len]).unwrap();
        let mut json = serde_json::to_vec(&header).unwrap();
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut expected = (json.len() as u64).to_le_bytes().to_vec();
        expected.extend_from_slice(&json);
        expected.extend_from_slice(&crate_bytes[8 + len..]);
        assert_eq!(bytes_of(&weights, &metadata, Path::new("x")).unwrap(), expected);
    }

    fn sample() -> TensorMap {
        TensorMap::from([
            (
                "conv1.weight".to_owned(),
                Tensor { shape: vec![2, 1, 1, 2], data: vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE] },
            ),
            ("conv1.bias".to_owned(), Tensor { shape: vec![2], data: vec![0.0, -0.0] }),
            ("scalar".to_owned(), Tensor { shape: vec![], data: vec![42.0] }),
            ("empty".to_owned(), Tensor { shape: vec![0, 3], data: vec![] }),
        ])
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save_safetensors(&path, &sample()).unwrap();
        let back = load_safetensors(&path).unwrap();
        assert_eq!(back, sample());
        // Bit-exact, including the sign of zero.
        assert!(back["conv1.bias"].data[1].is_sign_negative());
    }

    /// A file as `safetensors.torch.save_file` writes it, built by hand: an 8-byte header length,
    /// the JSON header, then the data.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn reads_a_pytorch_batch_norm_export() {
        let header = r#"{"__metadata__":{"format":"pt"},"bn.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"bn.running_var":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
        let mut data = 7i64.to_le_bytes().to_vec();
        data.extend([1f32, 0.5].iter().flat_map(|x| x.to_le_bytes()));
        let map = decode(&file(header, &data), Path::new("bn.safetensors")).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["bn.running_var"], Tensor { shape: vec![2], data: vec![1.0, 0.5] });
    }

    #[test]
    fn other_dtypes_name_the_tensor() {
        let header = r#"{"fc.weight":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
        let e = decode(&file(header, &[0; 4]), Path::new("m.safetensors")).unwrap_err();
        assert!(
            e.to_string().starts_with("tensor `fc.weight` in `m.safetensors` has dtype BF16, but cnnc reads only F32"),
            "{e}"
        );
    }

    #[test]
    fn truncated_and_corrupted_files_are_errors() {
        let bytes = bytes_of(&sample(), &Metadata::new(), Path::new("x")).unwrap();
        assert!(decode(&bytes, Path::new("x")).is_ok());
        for cut in 0..bytes.len() {
            let e = decode(&bytes[..cut], Path::new("cut.safetensors")).unwrap_err();
            assert!(matches!(e, WeightsError::Format { .. }), "cut at {cut}: {e}");
            assert!(e.to_string().starts_with("`cut.safetensors` is not a valid safetensors file: "), "{e}");
        }
        for i in 0..bytes.len() {
            for v in [0u8, 0xff, b'9', b'"', b'}', b'['] {
                let mut b = bytes.clone();
                b[i] = v;
                // Data bytes may change values; header bytes must give an error. Never a panic.
                let _ = decode(&b, Path::new("x"));
            }
        }
        // A header length far beyond the file, and one beyond the crate's header limit.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(decode(&huge, Path::new("x")).is_err());
        let mut big = 200_000_000u64.to_le_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert!(decode(&big, Path::new("x")).is_err());
        // A lying shape: 1000 elements claimed for 4 bytes.
        let header = r#"{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4]}}"#;
        assert!(decode(&file(header, &[0; 4]), Path::new("x")).is_err());
        let header = r#"{"w":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,4]}}"#;
        assert!(decode(&file(header, &[0; 4]), Path::new("x")).is_err());
    }

    #[test]
    fn reading_is_bounded_by_the_header_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save_safetensors(&path, &sample()).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(load_safetensors_within(&path, size).unwrap(), sample());
        let e = load_safetensors_within(&path, size - 1).unwrap_err();
        assert!(matches!(e, WeightsError::TooLarge { needed, .. } if needed == size), "{e}");
        assert!(e.to_string().contains("of tensors, more than the"), "{e}");
        // A header describing 4 TB of data over a small file: refused before reading it.
        let header = r#"{"w":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4000000000000]}}"#;
        std::fs::write(&path, file(header, &[0; 16])).unwrap();
        let e = load_safetensors_within(&path, 1 << 30).unwrap_err();
        assert!(matches!(e, WeightsError::TooLarge { .. }), "{e}");
        let e = load_safetensors_within(&path, u64::MAX).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("it is truncated: its header describes 4000000000000 bytes of data, but only 16 follow"),
            "{e}"
        );
        // Bytes after the data.
        let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let e = decode(&file(header, &[0; 5]), Path::new("x")).unwrap_err();
        assert!(e.to_string().ends_with("more bytes follow the 4 bytes of data its header describes"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_errors_not_endless_reads() {
        let e = load_safetensors_within("/dev/zero", u64::MAX).unwrap_err();
        assert!(
            e.to_string().starts_with("`/dev/zero` is not a valid safetensors file: its header is not valid JSON"),
            "{e}"
        );
        assert!(matches!(load_safetensors_within("/", u64::MAX), Err(WeightsError::Read { .. })));
    }

    #[test]
    fn a_moved_or_repeated_tensor_is_named() {
        let mut bytes = bytes_of(&sample(), &Metadata::new(), Path::new("x")).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
        // `conv1.weight` (16 bytes) moved 4 bytes on, over its neighbour: it is named.
        let mut json: serde_json::Value = serde_json::from_str(&header).unwrap();
        let offsets = &mut json["conv1.weight"]["data_offsets"];
        let [begin, end] = [0, 1].map(|k| offsets[k].as_u64().unwrap());
        *offsets = serde_json::json!([begin + 4, end + 4]);
        let data = bytes.split_off(8 + header_len);
        let e = decode(&file(&json.to_string(), &data), Path::new("m.safetensors")).unwrap_err().to_string();
        assert!(
            e.starts_with("`m.safetensors` is not a valid safetensors file: tensor `conv1.weight`: its data_offsets"),
            "{e}"
        );
        let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let e = decode(&file(header, &[0; 8]), Path::new("d.safetensors")).unwrap_err().to_string();
        assert_eq!(e, "`d.safetensors` is not a valid safetensors file: its header lists tensor `w` twice");
    }

    #[test]
    fn io_errors_name_the_file() {
        let e = load_safetensors("/no/such/w.safetensors").unwrap_err();
        assert!(e.to_string().starts_with("cannot read weights file `/no/such/w.safetensors`: "), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = save_safetensors(dir.path().join("missing/w.safetensors"), &sample()).unwrap_err();
        assert!(matches!(e, WeightsError::Write { .. }), "{e}");
    }

    #[test]
    fn inconsistent_tensors_are_not_saved_and_the_old_file_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save_safetensors(&path, &sample()).unwrap();
        let mut bad = sample();
        bad.insert("fc.weight".to_owned(), Tensor { shape: vec![2, 3], data: vec![0.0; 5] });
        let e = save_safetensors(&path, &bad).unwrap_err();
        assert!(e.to_string().contains("tensor `fc.weight` has shape [2, 3] but holds 5 values"), "{e}");
        assert_eq!(load_safetensors(&path).unwrap(), sample());
    }

    fn model() -> Graph {
        let mut g = Graph::new("m");
        let s = Span::DUMMY;
        let x = g.add_input("x", Shape(vec![3, 8, 8]), s).unwrap();
        let window = Window { kernel: [3, 3], stride: [1, 1], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
        let conv = Op::Conv(Conv { out_channels: 4, window, groups: 1, bias: false });
        let (c, _) = g.add(conv, vec![x], "conv1", s).unwrap();
        let (b, _) = g.add(Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), vec![c], "bn1", s).unwrap();
        let (f, _) = g.add(Op::Flatten, vec![b], "flatten", s).unwrap();
        let (y, _) = g.add(Op::Fc(Fc { out_features: 10, bias: true }), vec![f], "fc", s).unwrap();
        g.outputs.push(y);
        g
    }

    fn full_weights(g: &Graph) -> TensorMap {
        g.named_params().into_iter().map(|(name, spec)| (name, Tensor::zeros(&spec.dims))).collect()
    }

    #[test]
    fn matching_weights_pass_and_batch_counters_are_ignored() {
        let g = model();
        let mut w = full_weights(&g);
        assert_eq!(w.len(), 7);
        w.insert("bn1.num_batches_tracked".to_owned(), Tensor::zeros(&[]));
        assert!(check_weights(&g, &w).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let g = model();
        let mut w = full_weights(&g);
        let conv = w.remove("conv1.weight").unwrap();
        w.insert("conv1.weights".to_owned(), conv);
        w.remove("bn1.running_var");
        w.insert("fc.weight".to_owned(), Tensor::zeros(&[10, 100]));
        w.insert("head.weight".to_owned(), Tensor::zeros(&[1]));
        let messages: Vec<String> = check_weights(&g, &w).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "missing weight `conv1.weight`: the model needs a tensor of shape [4, 3, 3, 3] under that name",
                "missing weight `bn1.running_var`: the model needs a tensor of shape [4] under that name",
                "weight `fc.weight` has shape [10, 100], but the model expects [10, 256]",
                "unexpected weight `conv1.weights`: the model has no parameter of that name; did you mean `conv1.weight`?",
                "unexpected weight `head.weight`: the model has no parameter of that name",
            ]
        );
    }

    #[test]
    fn a_wrapper_prefix_is_spotted() {
        // nn.DataParallel saves every key under `module.`.
        let g = model();
        let w: TensorMap = full_weights(&g).into_iter().map(|(k, v)| (format!("module.{k}"), v)).collect();
        let errors = check_weights(&g, &w).unwrap_err();
        assert_eq!(errors.len(), 14);
        let e = errors.iter().find(|e| matches!(e, WeightsError::Unexpected { name, .. } if name == "module.fc.bias"));
        assert!(e.unwrap().to_string().ends_with("did you mean `fc.bias`?"), "{errors:?}");
    }

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let metadata: Metadata = (0..20).map(|k| (format!("cnnc.key{k}"), k.to_string())).collect();
        let first = bytes_of(&sample(), &metadata, Path::new("x")).unwrap();
        for _ in 0..5 {
            assert_eq!(bytes_of(&sample(), &metadata, Path::new("x")).unwrap(), first);
        }
        let header_len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + header_len) % 8, 0, "the data starts on an 8-byte boundary");
        assert_eq!(decode(&first, Path::new("x")).unwrap(), sample());
    }

    #[test]
    fn metadata_round_trips_beside_the_format() {
        let dir = std::env::temp_dir().join(format!("cnnc-weights-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let metadata = Metadata::from([("cnnc.normalize.mean".to_owned(), "0.5,0.25".to_owned())]);
        save_safetensors_with_metadata(&path, &sample(), &metadata).unwrap();
        let (tensors, read) = load_safetensors_with_metadata_within(&path, u64::MAX).unwrap();
        assert_eq!(tensors, sample());
        assert_eq!(read.get("cnnc.normalize.mean").map(String::as_str), Some("0.5,0.25"));
        assert_eq!(read.get("format").map(String::as_str), Some("pt"), "Hugging Face loaders expect it");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
