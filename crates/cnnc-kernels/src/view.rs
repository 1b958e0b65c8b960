//! Tensor views into a workspace arena: where a batch of activations lives and how it is laid
//! out, and the checks every safe kernel runs on them (inside the buffer, apart from each
//! other, the dimensions the plan expects).
//!
//! A back end executes a model over one `&mut [f32]` arena; each operand and result of a
//! kernel is a [`View`] into it. Image `n` of a view starts at `offset + n * batch_stride`
//! floats; the batch stride need not be the image size (a view may be a channel slice of a
//! concatenation buffer). Layouts per image: `nchw` = `[C][H][W]`; `nChw16c` =
//! `[ceil(C/16)][H][W][16]`, whose last block's padding lanes (channels `C..`) hold finite
//! values that consumers may read but never depend on.

use super::error::KernelError;

/// The physical layout of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Layout {
    /// `[C][H][W]` (also `[F]` vectors, with `h = w = 1`).
    Nchw = 0,
    /// `[ceil(C/16)][H][W][16]`.
    NChw16c = 1,
}

/// A batch of `n` images of `c x h x w` in `layout`, inside some arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct View {
    pub offset: usize,
    pub batch_stride: usize,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub layout: Layout,
}

/// `ceil(c / 16) * 16`.
pub const fn pad16(c: usize) -> usize {
    c.div_ceil(16) * 16
}

impl View {
    /// A dense batch (batch stride = image size) at `offset`.
    pub fn dense(offset: usize, n: usize, c: usize, h: usize, w: usize, layout: Layout) -> View {
        let mut v = View { offset, batch_stride: 0, n, c, h, w, layout };
        v.batch_stride = v.image_len().unwrap_or(0);
        v
    }

    /// Stored floats of one image (padding lanes included).
    pub fn image_len(&self) -> Option<usize> {
        let c = match self.layout {
            Layout::Nchw => self.c,
            Layout::NChw16c => self.c.checked_add(15)? / 16 * 16,
        };
        c.checked_mul(self.h)?.checked_mul(self.w)
    }

    /// One past the last float of the last image.
    pub fn end(&self) -> Option<usize> {
        let last = self.n.checked_sub(1)?.checked_mul(self.batch_stride)?;
        self.offset.checked_add(last)?.checked_add(self.image_len()?)
    }

    /// Checks that the view is non-empty, its images do not overlap each other and it lies in
    /// a buffer of `len` floats.
    pub fn check_in(&self, what: &'static str, len: usize) -> Result<(), KernelError> {
        if self.n == 0 || self.c == 0 || self.h == 0 || self.w == 0 {
            return Err(KernelError::Shape { what });
        }
        let image = self.image_len().ok_or(KernelError::Overflow { what })?;
        if self.n > 1 && self.batch_stride < image {
            return Err(KernelError::Overlap { first: what, second: what });
        }
        let end = self.end().ok_or(KernelError::Overflow { what })?;
        if end > len {
            return Err(KernelError::OutOfBounds { what, end, len });
        }
        Ok(())
    }

    /// Checks the logical dimensions and layout.
    pub fn expect(&self, what: &'static str, dims: [usize; 4], layout: Layout) -> Result<(), KernelError> {
        if [self.n, self.c, self.h, self.w] != dims || self.layout != layout {
            return Err(KernelError::View { what });
        }
        Ok(())
    }

    /// Whether the two views share at least one float. Exact for views with one batch stride
    /// (channel slices of one concatenation buffer are disjoint); conservative (the whole
    /// spans) otherwise. Both views must have passed [`View::check_in`].
    pub fn overlaps(&self, other: &View) -> bool {
        let (la, lb) = (self.image_len().unwrap_or(usize::MAX), other.image_len().unwrap_or(usize::MAX));
        let hit = |a0: usize, a1: usize, b0: usize, b1: usize| a0 < b1 && b0 < a1;
        if self.n == 1 && other.n == 1 {
            return hit(self.offset, self.offset + la, other.offset, other.offset + lb);
        }
        if self.batch_stride != other.batch_stride || self.batch_stride == 0 {
            return hit(self.offset, self.end().unwrap_or(usize::MAX), other.offset, other.end().unwrap_or(usize::MAX));
        }
        // Same stride: image i of self [a0, a0 + la) meets image j of other
        // [ob + j bs, ob + j bs + lb) iff a0 - ob - lb < j bs < a0 + la - ob; only the smallest
        // j above the lower bound needs checking.
        let bs = self.batch_stride as i128;
        let (ob, la, lb) = (other.offset as i128, la as i128, lb as i128);
        (0..self.n).any(|i| {
            let a0 = self.offset as i128 + i as i128 * bs;
            let j = ((a0 - ob - lb).div_euclid(bs) + 1).max(0);
            j < other.n as i128 && j * bs < a0 + la - ob
        })
    }

    /// Whether two views are the very same memory with the same layout (an in-place operand).
    pub fn same_memory(&self, other: &View) -> bool {
        self == other
    }
}

/// Checks that `out` shares no memory with any of `inputs`.
pub fn check_apart(out: (&'static str, &View), inputs: &[(&'static str, &View)]) -> Result<(), KernelError> {
    for (name, v) in inputs {
        if out.1.overlaps(v) {
            return Err(KernelError::Overlap { first: out.0, second: name });
        }
    }
    Ok(())
}

/// Checks that `a` is either exactly `b` or apart from it.
pub fn check_same_or_apart(a: (&'static str, &View), b: (&'static str, &View)) -> Result<(), KernelError> {
    if a.1.same_memory(b.1) || !a.1.overlaps(b.1) {
        Ok(())
    } else {
        Err(KernelError::Overlap { first: a.0, second: b.0 })
    }
}
