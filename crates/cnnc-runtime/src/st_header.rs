//! The header of a safetensors file, parsed and validated here rather than by the
//! `safetensors` crate, so that a corrupt file is reported in cnnc's words and names the tensor
//! that is wrong.
//!
//! The format: an 8-byte little-endian header length `n`, `n` bytes of JSON, then the data. The
//! JSON is an object whose keys are tensor names (plus an optional `__metadata__` object of
//! strings), each `{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}` with the
//! byte range relative to the start of the data. The ranges must tile the data: no gaps, no
//! overlaps, each exactly `elements * dtype size` long.
//!
//! Checks, in order, each error naming what it is about: the JSON itself (never serde's own
//! message, only where it went wrong), duplicate names, each entry (keys, dtype, shape,
//! offsets, and the length the shape needs), then the tiling. A tensor whose range was moved
//! (its length is right but it overlaps others, and the bytes it would fit are unused) is
//! found and named, rather than the innocent neighbour where the tiling first breaks.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The largest header accepted, as the `safetensors` crate: 100 MB.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The metadata key, which names no tensor.
const METADATA: &str = "__metadata__";

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range in the data, `begin..end`.
    pub begin: u64,
    pub end: u64,
}

/// The validated header: every tensor, in the order the header lists them, and the length of
/// the data they tile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub entries: Vec<Entry>,
    pub data_len: u64,
    /// The `__metadata__` strings (empty when the file has none).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// What is wrong with a header. Messages read as a continuation of "`w.safetensors` is not a
/// valid safetensors file: ".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("it is {found} bytes long, shorter than the 8-byte header length every safetensors file starts with")]
    TooShort { found: u64 },
    #[error(
        "its header length field says {len} bytes, more than the {MAX_HEADER_BYTES} accepted (the file is \
         probably not safetensors, or corrupt)"
    )]
    HeaderTooLarge { len: u64 },
    #[error("it ends after {found} bytes, inside its {len}-byte header")]
    TruncatedHeader { len: u64, found: u64 },
    #[error("its header is not valid JSON: {}, at line {line}, column {column} of the header", if *.eof { "it ends early" } else { "a syntax error" })]
    NotJson { eof: bool, line: usize, column: usize },
    #[error("its header is not a JSON object of tensors (it is {found})")]
    NotAnObject { found: &'static str },
    #[error("its header lists tensor `{name}` twice")]
    Duplicate { name: String },
    #[error("its `__metadata__` is not an object of strings with distinct keys")]
    Metadata,
    #[error("tensor `{name}`: {problem}")]
    Entry { name: String, problem: String },
    #[error(
        "tensor `{name}`: shape {shape:?} of {dtype} needs {needed} bytes, but its data_offsets [{begin}, {end}] hold {}",
        .end - .begin
    )]
    Length { name: String, dtype: String, shape: Vec<usize>, needed: u64, begin: u64, end: u64 },
    #[error(
        "tensor `{name}`: its data_offsets [{begin}, {end}] {}, and bytes {gap_begin} to {gap_end}, exactly its size, \
         belong to no tensor: its offsets were changed or moved",
        placement(overlapping)
    )]
    Moved { name: String, begin: u64, end: u64, overlapping: Vec<String>, gap_begin: u64, gap_end: u64 },
    #[error("tensors `{first}` [{first_begin}, {first_end}] and `{second}` [{second_begin}, {second_end}] overlap")]
    Overlap { first: String, first_begin: u64, first_end: u64, second: String, second_begin: u64, second_end: u64 },
    #[error("bytes {begin} to {end} of its data belong to no tensor (the next one, `{next}`, starts at {end})")]
    Gap { begin: u64, end: u64, next: String },
    #[error("it is truncated: its header describes {expected} bytes of data, but only {found} follow")]
    DataTruncated { expected: u64, found: u64 },
    #[error("more bytes follow the {expected} bytes of data its header describes")]
    TrailingBytes { expected: u64 },
}

/// Where a moved tensor's range lies: over which other tensors, or past all of them.
fn placement(overlapping: &[String]) -> String {
    if overlapping.is_empty() {
        "lie past all the other tensors".to_string()
    } else {
        let names: Vec<String> = overlapping.iter().map(|o| format!("`{o}`")).collect();
        format!("overlap {}", names.join(", "))
    }
}

/// Bytes per element of each safetensors dtype cnnc knows (all whole-byte types).
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// Parses and validates the JSON of a header.
pub fn parse(json: &[u8]) -> Result<Header, HeaderError> {
    let root = Json::parse(json)?;
    let Json::Object(items) = root else {
        return Err(HeaderError::NotAnObject { found: root.kind() });
    };
    let mut seen = std::collections::HashSet::new();
    let mut entries = Vec::with_capacity(items.len());
    let mut metadata = std::collections::BTreeMap::new();
    for (name, value) in items {
        if !seen.insert(name.clone()) {
            return Err(HeaderError::Duplicate { name });
        }
        if name == METADATA {
            let Json::Object(pairs) = value else { return Err(HeaderError::Metadata) };
            for (key, value) in pairs {
                let Json::String(value) = value else { return Err(HeaderError::Metadata) };
                if metadata.insert(key, value).is_some() {
                    return Err(HeaderError::Metadata);
                }
            }
            continue;
        }
        entries.push(entry(name, value)?);
    }
    let data_len = check_tiling(&entries)?;
    Ok(Header { entries, data_len, metadata })
}

/// One tensor's entry, checked on its own.
fn entry(name: String, value: Json) -> Result<Entry, HeaderError> {
    let bad = |problem: String| HeaderError::Entry { name: name.clone(), problem };
    let Json::Object(fields) = value else {
        return Err(bad(format!("its entry is {}, not an object with dtype, shape and data_offsets", value.kind())));
    };
    let (mut dtype, mut shape, mut offsets) = (None, None, None);
    for (key, v) in fields {
        let slot = match key.as_str() {
            "dtype" => &mut dtype,
            "shape" => &mut shape,
            "data_offsets" => &mut offsets,
            other => return Err(bad(format!("its entry has an unknown key `{other}`"))),
        };
        if slot.replace(v).is_some() {
            return Err(bad(format!("its entry has `{key}` twice")));
        }
    }
    let missing = |key: &str| bad(format!("its entry has no `{key}`"));
    let dtype = match dtype.ok_or_else(|| missing("dtype"))? {
        Json::String(s) if dtype_size(&s).is_some() => s,
        Json::String(s) => return Err(bad(format!("its dtype `{s}` is not a safetensors dtype"))),
        other => return Err(bad(format!("its dtype is {}, not a string", other.kind()))),
    };
    let shape: Vec<usize> = match shape.ok_or_else(|| missing("shape"))? {
        Json::Array(dims) => dims
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("its shape is not a list of non-negative integers".into()))?,
        other => return Err(bad(format!("its shape is {}, not a list", other.kind()))),
    };
    let (begin, end) = match offsets.ok_or_else(|| missing("data_offsets"))? {
        Json::Array(pair) => match pair.as_slice() {
            [b, e] => match (b.as_u64(), e.as_u64()) {
                (Some(b), Some(e)) if b <= e => (b, e),
                (Some(b), Some(e)) => return Err(bad(format!("its data_offsets [{b}, {e}] end before they begin"))),
                _ => return Err(bad("its data_offsets are not two byte offsets".into())),
            },
            _ => return Err(bad("its data_offsets are not two byte offsets [begin, end]".into())),
        },
        other => return Err(bad(format!("its data_offsets are {}, not a list", other.kind()))),
    };
    let size = dtype_size(&dtype).expect("checked above");
    let needed = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d as u64));
    if needed != Some(end - begin) {
        let needed = needed.unwrap_or(u64::MAX);
        return Err(HeaderError::Length { name, dtype, shape, needed, begin, end });
    }
    Ok(Entry { name, dtype, shape, begin, end })
}

/// The data's length if the ranges tile `0..length` exactly; otherwise what breaks the tiling,
/// blaming a moved tensor when exactly one explains it.
fn check_tiling(entries: &[Entry]) -> Result<u64, HeaderError> {
    let breaks = tiling_breaks(entries, None);
    let Some(first) = breaks.first() else {
        return Ok(entries.iter().map(|e| e.end).max().unwrap_or(0));
    };
    // Candidates: every tensor in an overlap, and those the size of the first gap.
    let first_gap = breaks.iter().find_map(|b| match b {
        Break::Gap { begin, end, .. } => Some(end - begin),
        Break::Overlap { .. } => None,
    });
    let mut candidates: Vec<usize> = breaks
        .iter()
        .flat_map(|b| match b {
            Break::Overlap { first, second } => vec![*first, *second],
            Break::Gap { .. } => vec![],
        })
        .chain((0..entries.len()).filter(|&i| Some(entries[i].end - entries[i].begin) == first_gap))
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    // Bounded, so a file of a million overlapping tensors cannot make this quadratic.
    candidates.truncate(16);
    let moved: Vec<(usize, (u64, u64))> = candidates
        .into_iter()
        .filter(|&c| entries[c].end > entries[c].begin)
        .filter_map(|c| explains(entries, c).map(|gap| (c, gap)))
        .collect();
    if let [(c, (gap_begin, gap_end))] = moved[..] {
        let e = &entries[c];
        let overlapping = entries
            .iter()
            .enumerate()
            .filter(|(i, o)| *i != c && o.begin < e.end && e.begin < o.end)
            .map(|(_, o)| o.name.clone())
            .collect();
        return Err(HeaderError::Moved {
            name: e.name.clone(),
            begin: e.begin,
            end: e.end,
            overlapping,
            gap_begin,
            gap_end,
        });
    }
    Err(match *first {
        Break::Overlap { first, second } => {
            let (a, b) = (&entries[first], &entries[second]);
            HeaderError::Overlap {
                first: a.name.clone(),
                first_begin: a.begin,
                first_end: a.end,
                second: b.name.clone(),
                second_begin: b.begin,
                second_end: b.end,
            }
        }
        Break::Gap { begin, end, next } => HeaderError::Gap { begin, end, next: entries[next].name.clone() },
    })
}

/// Where a sorted walk over the ranges finds the tiling broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Break {
    /// Entry `second` starts inside `first`.
    Overlap { first: usize, second: usize },
    /// Nothing covers `begin..end`; entry `next` starts at `end`.
    Gap { begin: u64, end: u64, next: usize },
}

/// Every break of the tiling, in data order, leaving out entry `skip`.
fn tiling_breaks(entries: &[Entry], skip: Option<usize>) -> Vec<Break> {
    let mut order: Vec<usize> = (0..entries.len()).filter(|&i| Some(i) != skip).collect();
    order.sort_by_key(|&i| (entries[i].begin, entries[i].end, i));
    let mut breaks = Vec::new();
    let mut covered = 0;
    let mut cover: Option<usize> = None;
    for i in order {
        let e = &entries[i];
        if e.begin > covered {
            breaks.push(Break::Gap { begin: covered, end: e.begin, next: i });
        } else if e.begin < covered
            && let Some(c) = cover
        {
            breaks.push(Break::Overlap { first: c, second: i });
        }
        if e.end > covered || cover.is_none() {
            covered = covered.max(e.end);
            cover = Some(i);
        }
    }
    breaks
}

/// Whether the other entries tile the data but for one gap of exactly `moved`'s size (or none,
/// with `moved` past their end): then `moved` belongs in that gap. Returns the gap.
fn explains(entries: &[Entry], moved: usize) -> Option<(u64, u64)> {
    let size = entries[moved].end - entries[moved].begin;
    match tiling_breaks(entries, Some(moved))[..] {
        [Break::Gap { begin, end, .. }] if end - begin == size => Some((begin, end)),
        [] => {
            let end = entries.iter().enumerate().filter(|&(i, _)| i != moved).map(|(_, e)| e.end).max().unwrap_or(0);
            (entries[moved].begin > end).then_some((end, end + size))
        }
        _ => None,
    }
}

/// A JSON value with objects kept as ordered lists of pairs, so that repeated keys are seen.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool,
    Number(Option<u64>),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(bytes: &[u8]) -> Result<Json, HeaderError> {
        serde_json::from_slice(bytes).map_err(|e| HeaderError::NotJson {
            eof: e.classify() == serde_json::error::Category::Eof,
            line: e.line(),
            column: e.column(),
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "a list",
            Json::Object(_) => "an object",
        }
    }

    /// A non-negative integer, if this is one.
    fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => *n,
            Json::Null | Json::Bool | Json::String(_) | Json::Array(_) | Json::Object(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Bool)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(Some(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(u64::try_from(v).ok()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Number(None))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut pairs = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            pairs.push((key, value));
        }
        Ok(Json::Object(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse(json.as_bytes()).unwrap_err().to_string()
    }

    fn t(name: &str, shape: &str, begin: u64, end: u64) -> String {
        format!(r#""{name}":{{"dtype":"F32","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
    }

    /// LeNet-5's first layers as safetensors lays them out: sorted by name, back to back.
    fn lenet(moved: Option<(&str, u64)>) -> String {
        let layout = [
            ("c1.bias", "[6]", 24),
            ("c1.weight", "[6,1,5,5]", 600),
            ("c3.bias", "[16]", 64),
            ("c3.weight", "[16,6,5,5]", 9600),
        ];
        let mut at = 0;
        let mut parts = vec![r#""__metadata__":{"format":"pt"}"#.to_string()];
        for (name, shape, len) in layout {
            let begin = match moved {
                Some((m, to)) if m == name => to,
                _ => at,
            };
            parts.push(t(name, shape, begin, begin + len));
            at += len;
        }
        format!("{{{}}}", parts.join(","))
    }

    #[test]
    fn a_valid_header_gives_every_tensor_and_the_data_length() {
        let h = parse(lenet(None).as_bytes()).unwrap();
        assert_eq!(h.data_len, 24 + 600 + 64 + 9600);
        let names: Vec<&str> = h.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["c1.bias", "c1.weight", "c3.bias", "c3.weight"]);
        assert_eq!(h.entries[1].shape, [6, 1, 5, 5]);
        assert_eq!(parse(b"{}").unwrap(), Header { entries: vec![], data_len: 0, metadata: Default::default() });
        // Padding spaces after the JSON, as the format allows.
        assert!(parse(format!("{}    ", lenet(None)).as_bytes()).is_ok());
    }

    #[test]
    fn a_moved_tensor_is_named_not_its_neighbour() {
        // c1.weight moved onto c3.weight: it overlaps c3.weight, and its own slot is empty.
        let e = err(&lenet(Some(("c1.weight", 700))));
        assert_eq!(
            e,
            "tensor `c1.weight`: its data_offsets [700, 1300] overlap `c3.weight`, and bytes 24 to 624, exactly its \
             size, belong to no tensor: its offsets were changed or moved"
        );
        // Moved past the end of everything: a gap, no overlap.
        let e = err(&lenet(Some(("c1.weight", 20000))));
        assert!(e.starts_with("tensor `c1.weight`: its data_offsets [20000, 20600] lie past all the other tensors, and bytes 24 to 624"), "{e}");
        // c3.bias moved over c1.weight.
        let e = err(&lenet(Some(("c3.bias", 100))));
        assert!(e.starts_with("tensor `c3.bias`: its data_offsets [100, 164] overlap `c1.weight`"), "{e}");
    }

    #[test]
    fn breaks_nothing_explains_are_reported_where_they_are() {
        let e = err(&format!("{{{},{}}}", t("a", "[2]", 0, 8), t("b", "[4]", 4, 20)));
        assert_eq!(e, "tensors `a` [0, 8] and `b` [4, 20] overlap");
        let e = err(&format!("{{{},{}}}", t("a", "[2]", 0, 8), t("b", "[4]", 12, 28)));
        assert_eq!(e, "bytes 8 to 12 of its data belong to no tensor (the next one, `b`, starts at 12)");
    }

    #[test]
    fn size_mismatches_name_the_tensor() {
        let e = err(&format!("{{{},{}}}", t("ok", "[2]", 0, 8), t("fc.weight", "[10,3]", 8, 48)));
        assert_eq!(e, "tensor `fc.weight`: shape [10, 3] of F32 needs 120 bytes, but its data_offsets [8, 48] hold 40");
        let e = err(&format!("{{{}}}", t("huge", "[18446744073709551615,2]", 0, 4)));
        assert!(e.starts_with("tensor `huge`: shape [18446744073709551615, 2] of F32 needs"), "{e}");
    }

    #[test]
    fn duplicates_and_bad_entries_are_errors() {
        assert_eq!(
            err(&format!("{{{},{}}}", t("w", "[1]", 0, 4), t("w", "[1]", 4, 8))),
            "its header lists tensor `w` twice"
        );
        assert_eq!(
            err(r#"{"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#),
            "tensor `w`: its entry has `dtype` twice"
        );
        assert_eq!(
            err(r#"{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#),
            "tensor `w`: its dtype `F33` is not a safetensors dtype"
        );
        assert_eq!(err(r#"{"w":{"shape":[1],"data_offsets":[0,4]}}"#), "tensor `w`: its entry has no `dtype`");
        assert_eq!(
            err(r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#),
            "tensor `w`: its shape is not a list of non-negative integers"
        );
        assert_eq!(
            err(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#),
            "tensor `w`: its data_offsets [4, 0] end before they begin"
        );
        assert_eq!(
            err(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}"#),
            "tensor `w`: its entry has an unknown key `x`"
        );
        assert_eq!(
            err(r#"{"w":[1,2]}"#),
            "tensor `w`: its entry is a list, not an object with dtype, shape and data_offsets"
        );
        assert_eq!(
            err(r#"{"__metadata__":{"format":1}}"#),
            "its `__metadata__` is not an object of strings with distinct keys"
        );
        let twice = r#"{"__metadata__":{"a":"1","a":"2"}}"#;
        assert_eq!(err(twice), "its `__metadata__` is not an object of strings with distinct keys");
        let header = parse(br#"{"__metadata__":{"format":"pt","cnnc.x":"1.5"}}"#).unwrap();
        assert_eq!(header.metadata.get("cnnc.x").map(String::as_str), Some("1.5"));
        assert_eq!(err("[1]"), "its header is not a JSON object of tensors (it is a list)");
    }

    #[test]
    fn json_errors_say_where_not_what_serde_says() {
        assert_eq!(err(r#"{"w": {"#), "its header is not valid JSON: it ends early, at line 1, column 7 of the header");
        assert_eq!(
            err("{\n\"w\" 1}"),
            "its header is not valid JSON: a syntax error, at line 2, column 5 of the header"
        );
        let e = err("\u{0}\u{0}");
        assert!(e.starts_with("its header is not valid JSON: a syntax error"), "{e}");
    }

    #[test]
    fn zero_sized_tensors_and_other_dtypes_have_their_lengths() {
        let json = r#"{"bn.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]},"h":{"dtype":"BF16","shape":[3],"data_offsets":[8,14]}}"#;
        assert_eq!(parse(json.as_bytes()).unwrap().data_len, 14);
    }
}
