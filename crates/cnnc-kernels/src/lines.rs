//! `Lines`: an owned float buffer whose first float starts a 64-byte cache line, as the
//! JIT's and a generated module's buffers do. A `Vec<f32>` promises 4 bytes (the allocator
//! often gives 16 past a line), so every AVX-512 load and store of a kernel run on one would
//! straddle two lines: benchmarks, examples and tests that time kernels use this instead.

/// Floats per 64-byte line.
const LINE_FLOATS: usize = 16;

/// `len` floats starting on a 64-byte line (see the module comment); derefs to `[f32]`.
pub struct Lines {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Lines {
    /// `len` floats, float `i` being `value(i)`.
    pub fn from_fn(len: usize, value: impl Fn(usize) -> f32) -> Lines {
        let mut buf = vec![0.0f32; len + LINE_FLOATS - 1];
        // `align_offset` counts floats here; `usize::MAX` (no offset aligns) cannot happen for
        // a 4-byte aligned pointer and a 64-byte line, the `min` keeps the slice in bounds.
        let start = buf.as_ptr().align_offset(64).min(LINE_FLOATS - 1);
        for (i, x) in buf[start..start + len].iter_mut().enumerate() {
            *x = value(i);
        }
        Lines { buf, start, len }
    }

    /// `len` copies of `value`.
    pub fn filled(len: usize, value: f32) -> Lines {
        Lines::from_fn(len, |_| value)
    }
}

impl core::ops::Deref for Lines {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl core::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}
