// Support code of every generated module (core only): errors, the safetensors reader, the
// parameter tables and the weight transforms of the plan, arena places. Pasted verbatim after
// the generated items by `cnnc-codegen` (src/support.rs); not a module of that crate.

// @item Name
/// A tensor name read from a weights file, kept inline (no allocation): up to 96 bytes, longer
/// names are cut (and say so when printed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name {
    bytes: [u8; 96],
    len: u8,
    cut: bool,
}

impl Name {
    fn new(s: &[u8]) -> Name {
        let mut bytes = [0u8; 96];
        let len = s.len().min(96);
        bytes[..len].copy_from_slice(&s[..len]);
        Name { bytes, len: len as u8, cut: s.len() > 96 }
    }

    /// The name (or its first 96 bytes), `?` where those bytes are not UTF-8.
    pub fn as_str(&self) -> &str {
        ::core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

impl ::core::fmt::Debug for Name {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        ::core::fmt::Display::fmt(self, f)
    }
}

impl ::core::fmt::Display for Name {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        f.write_str(self.as_str())?;
        if self.cut { f.write_str("...") } else { Ok(()) }
    }
}

// @item Dims
/// A tensor shape read from a weights file (at most 8 dimensions), kept inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    dims: [usize; 8],
    rank: usize,
}

impl Dims {
    pub fn as_slice(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    /// The number of elements, `None` on overflow.
    fn elements(&self) -> Option<usize> {
        self.as_slice().iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

impl ::core::fmt::Debug for Dims {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        ::core::fmt::Debug::fmt(self.as_slice(), f)
    }
}

// @item Error error
/// Everything that can go wrong in this module: bad arguments, bad weights, a kernel that
/// refuses its operands. Nothing here panics on the caller's data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Error {
    /// A slice whose length is not what the model needs for this batch.
    Length { what: &'static str, expected: usize, found: usize },
    /// A batch of zero images, or one whose workspace does not fit in memory.
    Batch { batch: usize },
    /// A class label outside `0..classes`.
    Label { sample: usize, label: u32, classes: usize },
    /// The weights are not a valid safetensors file; says what is wrong.
    Format { what: &'static str },
    /// A tensor the model needs is not in the weights.
    MissingTensor { name: &'static str },
    /// A tensor of the weights has another shape than the model's.
    TensorShape { name: &'static str, expected: &'static [usize], found: Dims },
    /// A tensor of the weights is not F32.
    TensorDtype { name: Name },
    /// A tensor of the weights that the model does not have.
    UnexpectedTensor { name: Name },
    /// A tensor whose bytes lie outside the file, or do not match its shape.
    TensorData { name: Name },
    /// A kernel refused to run (a bug in the generated code or the kernels, or a batch so large
    /// that sizes overflow).
    Kernel { layer: &'static str, error: self::cnnc_kernels::error::KernelError },
    /// The workspace of this batch size could not be allocated.
    OutOfMemory { floats: usize },
    /// A result of a step was asked for before any step ran.
    NotRun,
}

impl Error {
    fn kernel(layer: &'static str, error: self::cnnc_kernels::error::KernelError) -> Error {
        Error::Kernel { layer, error }
    }
}

impl ::core::fmt::Display for Error {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        match self {
            Error::Length { what, expected, found } => {
                write!(f, "{what} has {found} elements, expected {expected}")
            }
            Error::Batch { batch } => write!(f, "a batch of {batch} images cannot run (zero, or too large)"),
            Error::Label { sample, label, classes } => {
                write!(f, "label {label} of sample {sample} is not a class (0..{classes})")
            }
            Error::Format { what } => write!(f, "not a valid safetensors file: {what}"),
            Error::MissingTensor { name } => write!(f, "tensor `{name}` is missing from the weights"),
            Error::TensorShape { name, expected, found } => {
                write!(f, "tensor `{name}` has shape {found:?}, the model expects {expected:?}")
            }
            Error::TensorDtype { name } => write!(f, "tensor `{name}` is not F32 (the only dtype this model reads)"),
            Error::UnexpectedTensor { name } => write!(f, "tensor `{name}` is not a tensor of this model"),
            Error::TensorData { name } => {
                write!(f, "the data of tensor `{name}` lies outside the file or does not match its shape")
            }
            Error::Kernel { layer, error } => write!(f, "layer `{layer}`: {error}"),
            Error::OutOfMemory { floats } => write!(f, "cannot allocate a workspace of {floats} floats"),
            Error::NotRun => write!(f, "no step has run yet"),
        }
    }
}

impl ::core::error::Error for Error {}

// @item check_len
/// `Err(Length)` unless `found == expected`.
fn check_len(what: &'static str, found: usize, expected: usize) -> Result<(), Error> {
    if found == expected { Ok(()) } else { Err(Error::Length { what, expected, found }) }
}

// @item batch_len
/// `batch * per`, or `Err(Batch)` for an empty batch or on overflow.
fn batch_len(batch: usize, per: usize) -> Result<usize, Error> {
    if batch == 0 {
        return Err(Error::Batch { batch });
    }
    batch.checked_mul(per).ok_or(Error::Batch { batch })
}

// @item Json
/// The most nested JSON this reader follows (safetensors headers nest two levels).
const JSON_DEPTH: usize = 16;

/// A JSON scanner over a safetensors header: only what the format uses (objects, arrays,
/// strings, non-negative integers; anything else inside `__metadata__` is skipped).
struct Json<'a> {
    s: &'a [u8],
    at: usize,
}

fn bad(what: &'static str) -> Error {
    Error::Format { what }
}

impl<'a> Json<'a> {
    fn ws(&mut self) {
        while self.at < self.s.len() && matches!(self.s[self.at], b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, c: u8, what: &'static str) -> Result<(), Error> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(bad(what))
        }
    }

    /// A string's raw contents (escapes not decoded).
    fn string(&mut self) -> Result<&'a [u8], Error> {
        self.eat(b'"', "a string was expected in the header")?;
        let start = self.at;
        while self.at < self.s.len() {
            match self.s[self.at] {
                b'"' => {
                    let raw = &self.s[start..self.at];
                    self.at += 1;
                    return Ok(raw);
                }
                b'\\' => self.at += 2,
                c if c < 0x20 => return Err(bad("a control character in a header string")),
                _ => self.at += 1,
            }
        }
        Err(bad("an unterminated string in the header"))
    }

    fn integer(&mut self) -> Result<usize, Error> {
        self.ws();
        let start = self.at;
        let mut v: usize = 0;
        while let Some(&c) = self.s.get(self.at).filter(|c| c.is_ascii_digit()) {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(usize::from(c - b'0')))
                .ok_or(bad("an integer in the header overflows"))?;
            self.at += 1;
        }
        if self.at == start { Err(bad("an integer was expected in the header")) } else { Ok(v) }
    }

    /// `[int, ...]` into `out`; the count.
    fn integers(&mut self, out: &mut [usize]) -> Result<usize, Error> {
        self.eat(b'[', "an array was expected in the header")?;
        let mut k = 0;
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(0);
        }
        loop {
            let v = self.integer()?;
            *out.get_mut(k).ok_or(bad("an array in the header is too long"))? = v;
            k += 1;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(k);
                }
                _ => return Err(bad("a malformed array in the header")),
            }
        }
    }

    /// Skips any JSON value.
    fn skip(&mut self, depth: usize) -> Result<(), Error> {
        if depth > JSON_DEPTH {
            return Err(bad("the header nests too deeply"));
        }
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(open @ (b'{' | b'[')) => {
                self.at += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.eat(b':', "a `:` was expected in the header")?;
                    }
                    self.skip(depth + 1)?;
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(c) if c == close => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(bad("a malformed object or array in the header")),
                    }
                }
            }
            Some(_) => {
                let start = self.at;
                while self.at < self.s.len()
                    && (self.s[self.at].is_ascii_alphanumeric() || matches!(self.s[self.at], b'-' | b'+' | b'.'))
                {
                    self.at += 1;
                }
                if self.at == start { Err(bad("a malformed value in the header")) } else { Ok(()) }
            }
            None => Err(bad("the header ends early")),
        }
    }
}

// @item unescape
/// Decodes a JSON string's escapes into `buf`; `None` if it does not fit.
fn unescape<'b>(raw: &[u8], buf: &'b mut [u8; 256]) -> Result<Option<&'b [u8]>, Error> {
    let (mut i, mut k) = (0, 0);
    let mut put = |b: &[u8], k: &mut usize| -> bool {
        if *k + b.len() > buf.len() {
            return false;
        }
        buf[*k..*k + b.len()].copy_from_slice(b);
        *k += b.len();
        true
    };
    while i < raw.len() {
        let fits = if raw[i] != b'\\' {
            i += 1;
            put(&raw[i - 1..i], &mut k)
        } else {
            let e = *raw.get(i + 1).ok_or(bad("a malformed escape in the header"))?;
            i += 2;
            let simple = match e {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                b'/' => Some(b'/'),
                b'b' => Some(8),
                b'f' => Some(12),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                b'u' => None,
                _ => return Err(bad("a malformed escape in the header")),
            };
            match simple {
                Some(b) => put(&[b], &mut k),
                None => {
                    let hex = |at: usize| -> Result<u32, Error> {
                        let digits = raw.get(at..at + 4).ok_or(bad("a malformed \\u escape in the header"))?;
                        let text = ::core::str::from_utf8(digits).map_err(|_| bad("a malformed \\u escape"))?;
                        u32::from_str_radix(text, 16).map_err(|_| bad("a malformed \\u escape in the header"))
                    };
                    let mut cp = hex(i)?;
                    i += 4;
                    if (0xd800..0xdc00).contains(&cp) && raw.get(i..i + 2) == Some(b"\\u") {
                        let low = hex(i + 2)?;
                        if (0xdc00..0xe000).contains(&low) {
                            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                            i += 6;
                        }
                    }
                    let c = char::from_u32(cp).ok_or(bad("a \\u escape that is not a character"))?;
                    let mut utf8 = [0u8; 4];
                    put(c.encode_utf8(&mut utf8).as_bytes(), &mut k)
                }
            }
        };
        if !fits {
            return Ok(None);
        }
    }
    Ok(Some(&buf[..k]))
}

// @item Entry
/// One tensor of a safetensors header.
struct Entry<'a> {
    /// The decoded name (`None`: longer than 256 bytes), and the raw one for messages.
    name: Option<&'a [u8]>,
    raw: &'a [u8],
    f32: bool,
    shape: Dims,
    begin: usize,
    end: usize,
}

// @item safetensors_parts
/// Splits a safetensors file into its JSON header and its data.
fn safetensors_parts(bytes: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let size: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or(bad("shorter than its 8-byte header size"))?;
    let size = usize::try_from(u64::from_le_bytes(size)).map_err(|_| bad("the header size overflows"))?;
    let end = size.checked_add(8).filter(|&e| e <= bytes.len()).ok_or(bad("the header size exceeds the file"))?;
    Ok((&bytes[8..end], &bytes[end..]))
}

// @item safetensors_entries
/// Calls `f` on every tensor of the header (not on `__metadata__`).
fn safetensors_entries(header: &[u8], f: &mut dyn FnMut(&Entry<'_>) -> Result<(), Error>) -> Result<(), Error> {
    let mut j = Json { s: header, at: 0 };
    j.eat(b'{', "the header is not a JSON object")?;
    if j.peek() == Some(b'}') {
        j.at += 1;
    } else {
        loop {
            let raw = j.string()?;
            j.eat(b':', "a `:` was expected in the header")?;
            if raw == b"__metadata__" {
                j.skip(1)?;
            } else {
                let mut buf = [0u8; 256];
                let name = unescape(raw, &mut buf)?;
                let mut entry = Entry { name, raw, f32: false, shape: Dims { dims: [0; 8], rank: 0 }, begin: 0, end: 0 };
                let (mut dtype, mut shape, mut offsets) = (false, false, false);
                j.eat(b'{', "a tensor entry is not an object")?;
                loop {
                    let key = j.string()?;
                    j.eat(b':', "a `:` was expected in the header")?;
                    match key {
                        b"dtype" => {
                            entry.f32 = j.string()? == b"F32";
                            dtype = true;
                        }
                        b"shape" => {
                            entry.shape.rank = j.integers(&mut entry.shape.dims)?;
                            shape = true;
                        }
                        b"data_offsets" => {
                            let mut o = [0usize; 2];
                            if j.integers(&mut o)? != 2 {
                                return Err(bad("data_offsets is not a pair"));
                            }
                            (entry.begin, entry.end) = (o[0], o[1]);
                            offsets = true;
                        }
                        _ => j.skip(2)?,
                    }
                    match j.peek() {
                        Some(b',') => j.at += 1,
                        Some(b'}') => {
                            j.at += 1;
                            break;
                        }
                        _ => return Err(bad("a malformed tensor entry")),
                    }
                }
                if !(dtype && shape && offsets) {
                    return Err(bad("a tensor entry lacks dtype, shape or data_offsets"));
                }
                f(&entry)?;
            }
            match j.peek() {
                Some(b',') => j.at += 1,
                Some(b'}') => {
                    j.at += 1;
                    break;
                }
                _ => return Err(bad("a malformed header object")),
            }
        }
    }
    j.ws();
    if j.at != header.len() { Err(bad("text after the header object")) } else { Ok(()) }
}

// @item Init
/// How `cnnc init` draws a tensor from a seed.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// Zero-mean normal with this standard deviation (He or Xavier), from the tensor's own
    /// stream (xoshiro256** seeded by SplitMix64 from `seed ^ fnv1a64(name)`, Box-Muller).
    Normal(f64),
    /// Every element this value.
    Fill(f32),
}

// @item TensorSpec
/// A tensor of the checkpoint format (PyTorch's `state_dict` names and shapes).
#[derive(Clone, Copy, Debug)]
pub struct TensorSpec {
    pub name: &'static str,
    pub dims: &'static [usize],
    /// Optimiser state: zero when absent from the weights.
    pub optional: bool,
    pub init: Init,
}

// @item Checkpoint
/// Where each tensor's little-endian f32 bytes are in `data` (by its index in the spec table).
struct Checkpoint<'a> {
    data: &'a [u8],
    at: &'a [Option<(usize, usize)>],
}

impl Checkpoint<'_> {
    /// Element `i` of tensor `slot` (0 for an absent optional tensor).
    fn get(&self, slot: usize, i: usize) -> f32 {
        match self.at[slot] {
            Some((begin, _)) => {
                let b = begin + 4 * i;
                f32::from_le_bytes([self.data[b], self.data[b + 1], self.data[b + 2], self.data[b + 3]])
            }
            None => 0.0,
        }
    }
}

// @item locate
/// Finds every tensor of `specs` in a safetensors file: `at[k]` the byte range of `specs[k]`.
/// Every error names the tensor: missing (unless optional), misshapen, not F32, unknown, or
/// data outside the file. PyTorch's `*.num_batches_tracked` counters are skipped.
fn locate<'a>(
    bytes: &'a [u8],
    specs: &[TensorSpec],
    at: &mut [Option<(usize, usize)>],
) -> Result<&'a [u8], Error> {
    let (header, data) = safetensors_parts(bytes)?;
    safetensors_entries(header, &mut |e| {
        let slot = e.name.and_then(|n| specs.binary_search_by(|s| s.name.as_bytes().cmp(n)).ok());
        if slot.is_none() && e.name.is_some_and(|n| n.ends_with(b".num_batches_tracked")) {
            return Ok(());
        }
        let name = Name::new(e.name.unwrap_or(e.raw));
        let Some(slot) = slot else { return Err(Error::UnexpectedTensor { name }) };
        if !e.f32 {
            return Err(Error::TensorDtype { name });
        }
        let spec = &specs[slot];
        if e.shape.as_slice() != spec.dims {
            return Err(Error::TensorShape { name: spec.name, expected: spec.dims, found: e.shape });
        }
        let bytes = e.shape.elements().and_then(|n| n.checked_mul(4));
        if e.begin > e.end || e.end > data.len() || bytes != Some(e.end - e.begin) {
            return Err(Error::TensorData { name });
        }
        if at[slot].replace((e.begin, e.end)).is_some() {
            return Err(bad("a tensor appears twice"));
        }
        Ok(())
    })?;
    for (spec, place) in specs.iter().zip(at.iter()) {
        if place.is_none() && !spec.optional {
            return Err(Error::MissingTensor { name: spec.name });
        }
    }
    Ok(data)
}

// @item Stored
/// How a parameter is stored: as in a checkpoint, or in one of the plan's packed layouts
/// (`cnnc_ir::WeightLayout`, element by element the same definitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Row-major, the checkpoint's own layout (`oihw`, `oi`, vectors).
    Plain,
    /// `[O/16][I/16][KH][KW][16 i][16 o]`, zero-padded (also `OI16i16o`, with KH = KW = 1).
    OIhw16i16o,
    /// Per group, `[g][O_g/16][I_g/16][KH][KW][16 i][16 o]`.
    GOIhw16i16o,
    /// `[g/16][O_g][I_g][KH][KW][16 g]`, zero-padded.
    Goihw16g,
}

// @item weight_dims
/// `(O, I, KH, KW)` of a weight's logical dims.
fn weight_dims(dims: &[usize]) -> (usize, usize, usize, usize) {
    match *dims {
        [o, i, kh, kw] => (o, i, kh, kw),
        [o, i] => (o, i, 1, 1),
        _ => (dims.iter().product(), 1, 1, 1),
    }
}

impl Stored {
    /// Where logical element `[o, i, y, x]` (`i` within its group) is stored.
    fn offset(self, dims: &[usize], groups: usize, o: usize, i: usize, y: usize, x: usize) -> usize {
        let (oo, ii, kh, kw) = weight_dims(dims);
        let r16 = |v: usize| v.div_ceil(16) * 16;
        match self {
            Stored::Plain => ((o * ii + i) * kh + y) * kw + x,
            Stored::OIhw16i16o => {
                let blocks_i = r16(ii) / 16;
                ((((o / 16) * blocks_i + i / 16) * kh + y) * kw + x) * 256 + (i % 16) * 16 + o % 16
            }
            Stored::GOIhw16i16o => {
                let og = oo / groups;
                let (g, o) = (o / og, o % og);
                let per_group = r16(og) * r16(ii) * kh * kw;
                let blocks_i = r16(ii) / 16;
                g * per_group + ((((o / 16) * blocks_i + i / 16) * kh + y) * kw + x) * 256 + (i % 16) * 16 + o % 16
            }
            Stored::Goihw16g => {
                let og = oo / groups;
                let (g, o) = (o / og, o % og);
                ((((g / 16) * og + o) * ii + i) * kh + y) * kw * 16 + x * 16 + g % 16
            }
        }
    }
}

// @item Fold
/// One batch-norm folding step (`cnnc_ir::plan::WeightTransform::FoldBn`) as it changes one
/// tensor: `w' = w * s` (weights) or `b' = (b - mean) * s + beta` (biases) per output channel,
/// `s = gamma / sqrt(var + eps)`, in f64, rounded once to f32.
#[derive(Clone, Copy, Debug)]
pub struct Fold {
    pub bias: bool,
    pub gamma: usize,
    pub beta: usize,
    pub mean: usize,
    pub var: usize,
    pub eps: f64,
}

// @item ParamSpec
/// A parameter as the plan stores it: where, in what layout, and how it is made from the
/// checkpoint (its tensor, or zeros, then the folds in order, then the packing).
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub dims: &'static [usize],
    pub stored: Stored,
    pub groups: usize,
    pub offset: usize,
    pub len: usize,
    pub src: Option<usize>,
    pub folds: &'static [Fold],
}

// @item for_each_element
/// The logical elements of a weight of `dims`, visited as `f(o, i, y, x, flat index)`.
fn for_each_element(dims: &[usize], mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let (o, i, kh, kw) = weight_dims(dims);
    let mut flat = 0;
    for a in 0..o {
        for b in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    f(a, b, y, x, flat);
                    flat += 1;
                }
            }
        }
    }
}

// @item fold_factors
/// The per-output-channel factors of a fold for channel `o`: `(s, mean, beta)`.
fn fold_factors(c: &Checkpoint<'_>, fold: &Fold, o: usize) -> (f64, f64, f64) {
    let (gamma, var) = (f64::from(c.get(fold.gamma, o)), f64::from(c.get(fold.var, o)));
    (gamma / sqrt_f64(var + fold.eps), f64::from(c.get(fold.mean, o)), f64::from(c.get(fold.beta, o)))
}

// @item store_params
/// Stores every parameter of `params` into `storage` from the checkpoint: the plan's weight
/// transforms, exactly as `cnnc_runtime::apply_transforms` computes them.
fn store_params(c: &Checkpoint<'_>, params: &[ParamSpec], storage: &mut [f32]) {
    for p in params {
        let dst = &mut storage[p.offset..p.offset + p.len];
        dst.fill(0.0);
        // At most a few folds per tensor: their factors for the current output channel.
        let mut factors = [(0.0f64, 0.0f64, 0.0f64); 4];
        let mut channel = usize::MAX;
        for_each_element(p.dims, |o, i, y, x, flat| {
            if o != channel {
                channel = o;
                for (k, fold) in p.folds.iter().enumerate().take(4) {
                    factors[k] = fold_factors(c, fold, o);
                }
            }
            let mut v = p.src.map_or(0.0, |s| c.get(s, flat));
            for (fold, &(s, mean, beta)) in p.folds.iter().zip(&factors) {
                v = if fold.bias { ((f64::from(v) - mean) * s + beta) as f32 } else { (f64::from(v) * s) as f32 };
            }
            dst[p.stored.offset(p.dims, p.groups, o, i, y, x)] = v;
        });
    }
}

// @item Window
/// Which images the layers being run see: the whole batch, or one image of a depth-first run
/// (a batch of one to its layers). The values that only the depth-first layers use then live
/// in one image's memory after the batch's (`local`); the others in their image's part of the
/// batch.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub image: Option<usize>,
    /// The first layer (node index) past the depth-first ones.
    pub prefix: usize,
    pub batch: usize,
    pub local: usize,
}

impl Window {
    /// The whole batch of `batch`, with one image's memory at `local`.
    const fn whole(batch: usize, local: usize) -> Window {
        Window { image: None, prefix: 0, batch, local }
    }

    /// Where `p` is for the layers being run.
    const fn at(self, p: Place) -> Place {
        match self.image {
            Some(_) if p.last < self.prefix => Place { buf: self.local + p.buf, ..p },
            Some(i) => Place { buf: p.buf * self.batch + i * p.stride, ..p },
            None => p,
        }
    }
}

// @item depth_first_prefix
/// How many nodes of the plan, from the first, run depth first at batch `n` (each image
/// through all of them before the next): up to the last whose values (inputs and output) take
/// more than `limit` bytes for the whole batch. `table`: those bytes per image of each leading
/// node that may (cnnc_ir::depth's rule, `prefix_of`).
fn depth_first_prefix(table: &[u64], n: usize, limit: u64) -> usize {
    if n < 2 {
        return 0;
    }
    table.iter().rposition(|&b| b.saturating_mul(n as u64) > limit).map_or(0, |i| i + 1)
}

// @item unpack_param
/// The logical (checkpoint-layout) elements of a parameter stored as `p` says, into `out`.
fn unpack_param(p: &ParamSpec, stored: &[f32], out: &mut [f32]) {
    for_each_element(p.dims, |o, i, y, x, flat| out[flat] = stored[p.stored.offset(p.dims, p.groups, o, i, y, x)]);
}

// @item Place view
/// Where a batched value lives in the arena, in floats: image `i` of a batch of `n` starts at
/// `buf * n + off + i * stride` (the plan's `image_offset` rule), as `c x h x w` in `layout`.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    pub buf: usize,
    pub off: usize,
    pub stride: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub layout: self::cnnc_kernels::view::Layout,
    /// The last layer (node index) using its memory (`usize::MAX` for inputs and
    /// temporaries): a depth-first run of the layers before it keeps it in one image's memory.
    pub last: usize,
}

impl Place {
    /// The kernels' view of this value for a batch of `n`.
    const fn view(self, n: usize) -> self::cnnc_kernels::view::View {
        self::cnnc_kernels::view::View {
            offset: self.buf * n + self.off,
            batch_stride: self.stride,
            n,
            c: self.c,
            h: self.h,
            w: self.w,
            layout: self.layout,
        }
    }

    /// Logical elements per image.
    const fn len(self) -> usize {
        self.c * self.h * self.w
    }

    /// A plain value seen as a flat vector (the same bytes).
    const fn flat(self) -> Place {
        Place { c: self.c * self.h * self.w, h: 1, w: 1, ..self }
    }

    /// Whether the images of a batch of `n` follow each other with no gap (a plain value).
    const fn dense(self, n: usize) -> bool {
        n == 1 || self.stride == self.c * self.h * self.w
    }

    /// Floats `start .. end` of a batch of `n` of a dense plain value.
    const fn range(self, n: usize) -> (usize, usize) {
        let start = self.buf * n + self.off;
        (start, start + n * self.c * self.h * self.w)
    }

    /// Offset, from its image's start, of logical element `(c, y, x)`.
    fn at(self, c: usize, y: usize, x: usize) -> usize {
        match self.layout {
            self::cnnc_kernels::view::Layout::Nchw => (c * self.h + y) * self.w + x,
            self::cnnc_kernels::view::Layout::NChw16c => (((c / 16) * self.h + y) * self.w + x) * 16 + c % 16,
        }
    }

    /// Calls `f(arena index, logical index)` for every logical element of a batch of `n`,
    /// row-major over `[n, c, h, w]`.
    fn for_each(self, n: usize, mut f: impl FnMut(usize, usize)) {
        let v = self.view(n);
        let mut k = 0;
        for b in 0..n {
            let base = v.offset + b * self.stride;
            for c in 0..self.c {
                for y in 0..self.h {
                    for x in 0..self.w {
                        f(base + self.at(c, y, x), k);
                        k += 1;
                    }
                }
            }
        }
    }
}

// @item write_place
/// Copies a caller's dense `[n, c, h, w]` tensor into the arena at `p`.
fn write_place(arena: &mut [f32], p: Place, n: usize, src: &[f32]) {
    p.for_each(n, |a, k| arena[a] = src[k]);
}

// @item read_place
/// Copies the value at `p` into a caller's dense `[n, c, h, w]` tensor.
fn read_place(arena: &[f32], p: Place, n: usize, dst: &mut [f32]) {
    p.for_each(n, |a, k| dst[k] = arena[a]);
}
