// Support code of generated modules that use std: the correctly rounded square root of the
// weight transforms, seeded initialisation exactly as `cnnc init` draws it, checkpoints from
// named tensors, and the safetensors writer. Pasted verbatim by `cnnc-codegen`.

// @item sqrt_f64
/// `sqrt` in f64 as `cnnc_runtime::fold_bn` computes it (correctly rounded).
fn sqrt_f64(x: f64) -> f64 {
    x.sqrt()
}

// @item Xoshiro
/// xoshiro256** seeded by SplitMix64, with Box-Muller normals: `cnnc_runtime::Rng`, step for
/// step, so that `from_seed` draws the weights `cnnc init --seed` writes.
struct Xoshiro {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Xoshiro {
    fn for_name(seed: u64, name: &str) -> Xoshiro {
        let mut sm = seed ^ fnv1a64(name.as_bytes());
        let mut next = || {
            sm = sm.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Xoshiro { s: [next(), next(), next(), next()], spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * ::std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

// @item Bytes
/// Checkpoint bytes (little-endian f32, tensor after tensor) and each tensor's range.
type Bytes = (::std::vec::Vec<u8>, ::std::vec::Vec<Option<(usize, usize)>>);

// @item seeded_checkpoint
/// The checkpoint `cnnc init --seed SEED` writes (optional tensors, the optimiser state, left
/// absent: they start at zero).
fn seeded_checkpoint(specs: &[TensorSpec], seed: u64) -> Bytes {
    let mut data = ::std::vec::Vec::new();
    let mut at = ::std::vec::Vec::with_capacity(specs.len());
    for spec in specs {
        if spec.optional {
            at.push(None);
            continue;
        }
        let n: usize = spec.dims.iter().product();
        let begin = data.len();
        data.reserve(4 * n);
        match spec.init {
            Init::Normal(std) => {
                let mut rng = Xoshiro::for_name(seed, spec.name);
                for _ in 0..n {
                    data.extend_from_slice(&((std * rng.normal()) as f32).to_le_bytes());
                }
            }
            Init::Fill(v) => (0..n).for_each(|_| data.extend_from_slice(&v.to_le_bytes())),
        }
        at.push(Some((begin, data.len())));
    }
    (data, at)
}

// @item named_checkpoint
/// A checkpoint from named tensors in the checkpoint layout (each as long as its shape says).
fn named_checkpoint(specs: &[TensorSpec], tensors: &[(&str, &[f32])]) -> Result<Bytes, Error> {
    let mut data = ::std::vec::Vec::new();
    let mut at = ::std::vec![None; specs.len()];
    for &(name, values) in tensors {
        let Ok(slot) = specs.binary_search_by(|s| s.name.cmp(name)) else {
            if name.ends_with(".num_batches_tracked") {
                continue;
            }
            return Err(Error::UnexpectedTensor { name: Name::new(name.as_bytes()) });
        };
        let spec = &specs[slot];
        check_len(spec.name, values.len(), spec.dims.iter().product())?;
        if at[slot].is_some() {
            return Err(Error::Format { what: "a tensor appears twice" });
        }
        let begin = data.len();
        values.iter().for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        at[slot] = Some((begin, data.len()));
    }
    if let Some(spec) = specs.iter().zip(&at).find(|(s, a)| a.is_none() && !s.optional).map(|(s, _)| s) {
        return Err(Error::MissingTensor { name: spec.name });
    }
    Ok((data, at))
}

// @item write_safetensors
/// A safetensors file holding `tensors` (F32, in the order given, which should be sorted by
/// name), with `{"format": "pt"}` metadata as PyTorch's exports carry.
fn write_safetensors(tensors: &[(&str, &[usize], ::std::vec::Vec<f32>)]) -> ::std::vec::Vec<u8> {
    use ::std::fmt::Write as _;
    let mut header = ::std::string::String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut offset = 0usize;
    for (name, dims, data) in tensors {
        header.push_str(",\"");
        for ch in name.chars() {
            match ch {
                '"' => header.push_str("\\\""),
                '\\' => header.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    // Writing into a String cannot fail.
                    let _ = write!(header, "\\u{:04x}", c as u32);
                }
                c => header.push(c),
            }
        }
        let dims: ::std::vec::Vec<::std::string::String> = dims.iter().map(|d| d.to_string()).collect();
        let end = offset + 4 * data.len();
        // Writing into a String cannot fail.
        let _ = write!(header, "\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}", dims.join(","));
        offset = end;
    }
    header.push('}');
    // The data starts 8-aligned, as the safetensors writer pads.
    while (header.len() + 8) % 8 != 0 {
        header.push(' ');
    }
    let mut out = ::std::vec::Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, data) in tensors {
        data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
    out
}

// @item Threads threads par
/// Who runs the kernels' tasks: the kernels' process-wide pool (`CNNC_THREADS` threads, or
/// every core), a pool of the model's own, or the calling thread alone.
enum Threads {
    Global,
    Own(self::cnnc_kernels::threads::ThreadPool),
    Serial,
}

impl Threads {
    fn new(threads: usize) -> Threads {
        match threads {
            0 => Threads::Global,
            1 => Threads::Serial,
            n => Threads::Own(self::cnnc_kernels::threads::ThreadPool::new(n)),
        }
    }

    fn par(&self) -> &dyn self::cnnc_kernels::par::Parallel {
        match self {
            Threads::Global => self::cnnc_kernels::threads::ThreadPool::global(),
            Threads::Own(pool) => pool,
            Threads::Serial => &self::cnnc_kernels::par::Serial,
        }
    }
}

// @item zeros
/// A zeroed buffer of `len` floats starting on a 64-byte line, or `Err(OutOfMemory)` (a batch
/// too large for memory).
fn zeros(len: usize) -> Result<Floats, Error> {
    let total = len.checked_add(LINE_FLOATS - 1).ok_or(Error::OutOfMemory { floats: len })?;
    let mut buf = ::std::vec::Vec::new();
    buf.try_reserve_exact(total).map_err(|_| Error::OutOfMemory { floats: len })?;
    buf.resize(total, 0.0);
    // Floats to skip to the next line boundary (0..16: the buffer is 4-byte aligned).
    let start = buf.as_ptr().align_offset(64).min(LINE_FLOATS - 1);
    Ok(Floats { buf, start, len })
}

// @item Floats
/// Floats of a 64-byte cache line: one AVX-512 vector.
const LINE_FLOATS: usize = 16;

/// A float buffer whose first float starts a 64-byte line ([`zeros`] makes one). The kernels'
/// plans place every tensor at a multiple of 16 floats, so on such a buffer no vector load or
/// store straddles two lines; a `Vec<f32>` from the system allocator starts 16 bytes past a
/// line, where every 64-byte access would (ResNet-50's generated forward ran 5-10 % slower so
/// than the JIT on its 64-byte aligned memory).
struct Floats {
    buf: ::std::vec::Vec<f32>,
    start: usize,
    len: usize,
}

impl ::core::ops::Deref for Floats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl ::core::ops::DerefMut for Floats {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}
