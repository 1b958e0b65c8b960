//! 2x2/2 max pooling of a plain (`nchw`) map whose neighbours are channel-blocked, for
//! training: the forward pass reads the plain map once and writes the pooled map straight in
//! `nChw16c` (the next convolution's layout, so no reorder runs) and the argmax plain; the
//! backward pass reads the output gradient in `nChw16c` and writes the plain input gradient
//! once, with full-vector stores, the ReLU mask of a saved map applied as it goes and the
//! per-channel sums (the bias gradient of the convolution before) accumulated on the way: one
//! pass instead of a reorder, a clear-and-scatter, an activation backward and a reduction.
//!
//! Semantics as `pool.rs` and `pool_bwd.rs` (floor mode, no padding): the taps in the order
//! `(0,0) (0,1) (1,0) (1,1)`, a larger value or a NaN takes over (the first maximum wins
//! ties), the argmax is the f32 flat index `y * W + x` in the plane (-1 when no tap beat the
//! initial -inf); the gradient goes to the argmax pixel only, times the ReLU derivative of the
//! mask map there (`m > 0`: 1, else 0), as the activation backward multiplies it. Rows and
//! columns past the last whole window get 0. AVX-512 plans use zmm registers (the shuffles
//! between the two layouts are `vpermps` and gathers from L1); others run the scalar loops.

use super::error::{KernelError, product};
use super::par::Parallel;
use super::simd::{Cpu, Isa};
use super::view::{Layout, View, check_apart, check_same_or_apart};

/// A 2x2/2 max pooling of `n x c x ih x iw` (see the module comment).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Max2Plan {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) ih: usize,
    pub(crate) iw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) isa: Isa,
}

/// Raw operands of the forward pass (image strides in floats): `x` plain, `y` blocked,
/// `argmax` plain (output shape).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Max2FwdArgs {
    pub x: *const f32,
    pub x_bs: usize,
    pub y: *mut f32,
    pub y_bs: usize,
    pub argmax: *mut f32,
    pub argmax_bs: usize,
}

/// Raw operands of the backward pass: `gy` blocked (output shape), `argmax` plain (output
/// shape), `mask` plain (input shape; null: no ReLU mask), `dx` plain (input shape), `bias`
/// `c` floats (null: no sums).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Max2BwdArgs {
    pub gy: *const f32,
    pub gy_bs: usize,
    pub argmax: *const f32,
    pub argmax_bs: usize,
    pub mask: *const f32,
    pub mask_bs: usize,
    pub dx: *mut f32,
    pub dx_bs: usize,
    pub bias: *mut f32,
}

// SAFETY: plain pointers; each task reads the inputs and writes only its own planes.
unsafe impl Sync for Max2FwdArgs {}
// SAFETY: as above.
unsafe impl Send for Max2FwdArgs {}
// SAFETY: as above; each backward task writes its own channels' planes and bias entries.
unsafe impl Sync for Max2BwdArgs {}
// SAFETY: as above.
unsafe impl Send for Max2BwdArgs {}

impl Max2Plan {
    /// Pools `n x c x ih x iw` (both at least 2; planes of at most 2^24 pixels, so flat
    /// indices are exact in f32) on `cpu`'s instruction set.
    pub fn new(n: usize, c: usize, [ih, iw]: [usize; 2], cpu: Cpu) -> Result<Max2Plan, KernelError> {
        if n == 0 || c == 0 || ih < 2 || iw < 2 {
            return Err(KernelError::Shape { what: "2x2 max pooling needs a nonempty map of at least 2x2" });
        }
        let plane = product("2x2 max pooling plane", &[ih, iw])?;
        product("2x2 max pooling input", &[n, c.div_ceil(16) * 16, plane])?;
        if plane > 1 << 24 {
            return Err(KernelError::Shape { what: "2x2 max pooling plane larger than 2^24 pixels" });
        }
        Ok(Max2Plan { n, c, ih, iw, oh: ih / 2, ow: iw / 2, isa: cpu.isa() })
    }

    /// The output's rows and columns.
    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }

    /// Forward tasks: one per image and 16-channel block.
    pub fn forward_tasks(&self) -> usize {
        self.n * self.c.div_ceil(16)
    }

    /// Backward tasks: one per 16-channel block (all images: the block's bias sums are the
    /// task's own).
    pub fn backward_tasks(&self) -> usize {
        self.c.div_ceil(16)
    }
}

/// Runs forward task `task` (image `task / blocks`, channel block `task % blocks`).
///
/// # Safety
/// `p` from [`Max2Plan::new`] on a CPU with its instruction set; the pointers valid for the
/// plan's images (`x` plain input, `y` blocked output with its padding lanes, `argmax` plain
/// output); `y` and `argmax` apart from each other and from `x`.
pub unsafe fn forward_task(p: &Max2Plan, a: &Max2FwdArgs, task: usize) {
    #[cfg(target_arch = "x86_64")]
    if p.isa == Isa::Avx512 {
        // SAFETY: the plan's instruction set is this CPU's; forwarded contract.
        unsafe { avx512::forward(p, a, task) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { forward_scalar(p, a, task) }
}

/// Runs backward task `task` (channels `16 task ..`, every image).
///
/// # Safety
/// `p` from [`Max2Plan::new`] on a CPU with its instruction set; the pointers valid for the
/// plan's images (`gy` blocked output shape, `argmax` and `mask` plain, `dx` plain input
/// shape, `bias` `c` floats when not null); `dx` and `bias` apart from every input, except
/// that `dx` may be the very memory of `mask` (in place: each vector of the mask is read
/// before the same vector of `dx` is written).
pub unsafe fn backward_task(p: &Max2Plan, a: &Max2BwdArgs, task: usize) {
    #[cfg(target_arch = "x86_64")]
    if p.isa == Isa::Avx512 {
        // SAFETY: the plan's instruction set is this CPU's; forwarded contract.
        unsafe { avx512::backward(p, a, task) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { backward_scalar(p, a, task) }
}

/// One window's value and argmax: the four taps in order from -inf and -1.
#[inline(always)]
fn best_of(taps: [(f32, f32); 4]) -> (f32, f32) {
    taps.iter().fold((f32::NEG_INFINITY, -1.0), |(v, i), &(t, ti)| if t > v || t.is_nan() { (t, ti) } else { (v, i) })
}

/// The scalar forward task (see [`forward_task`]).
///
/// # Safety
/// As [`forward_task`].
unsafe fn forward_scalar(p: &Max2Plan, a: &Max2FwdArgs, task: usize) {
    let blocks = p.c.div_ceil(16);
    let (n, cb) = (task / blocks, task % blocks);
    // SAFETY (whole block): every index is inside image n's planes of the three operands.
    unsafe {
        let y = a.y.add(n * a.y_bs + cb * p.oh * p.ow * 16);
        for l in 0..16 {
            let c = cb * 16 + l;
            for o in 0..p.oh * p.ow {
                let (oy, ox) = (o / p.ow, o % p.ow);
                let value = if c < p.c {
                    let x = a.x.add(n * a.x_bs + c * p.ih * p.iw);
                    let at = |dy: usize, dx: usize| {
                        let i = (2 * oy + dy) * p.iw + 2 * ox + dx;
                        (*x.add(i), i as f32)
                    };
                    let (v, i) = best_of([at(0, 0), at(0, 1), at(1, 0), at(1, 1)]);
                    *a.argmax.add(n * a.argmax_bs + c * p.oh * p.ow + o) = i;
                    v
                } else {
                    0.0
                };
                *y.add(o * 16 + l) = value;
            }
        }
    }
}

/// The scalar backward task (see [`backward_task`]).
///
/// # Safety
/// As [`backward_task`].
unsafe fn backward_scalar(p: &Max2Plan, a: &Max2BwdArgs, cb: usize) {
    for c in cb * 16..(cb * 16 + 16).min(p.c) {
        // SAFETY: forwarded contract; c is a channel of the task's block.
        unsafe { backward_channel(p, a, c) };
    }
}

/// One channel of [`backward_scalar`].
///
/// # Safety
/// As [`backward_task`], `c < C`.
unsafe fn backward_channel(p: &Max2Plan, a: &Max2BwdArgs, c: usize) {
    let (plane, out) = (p.ih * p.iw, p.oh * p.ow);
    let mut sum = 0.0f32;
    // SAFETY (whole block): every index is inside image n's planes of channel c.
    unsafe {
        for n in 0..p.n {
            let gy = a.gy.add(n * a.gy_bs + (c / 16) * out * 16 + c % 16);
            let am = a.argmax.add(n * a.argmax_bs + c * out);
            let dx = a.dx.add(n * a.dx_bs + c * plane);
            for iy in 0..p.ih {
                for ix in 0..p.iw {
                    let i = iy * p.iw + ix;
                    let (oy, ox) = (iy / 2, ix / 2);
                    let v = if oy < p.oh && ox < p.ow && *am.add(oy * p.ow + ox) == i as f32 {
                        let g = *gy.add((oy * p.ow + ox) * 16);
                        if a.mask.is_null() {
                            g
                        } else {
                            let m = *a.mask.add(n * a.mask_bs + c * plane + i);
                            g * if m > 0.0 { 1.0 } else { 0.0 }
                        }
                    } else {
                        0.0
                    };
                    *dx.add(i) = v;
                    sum += v;
                }
            }
        }
        if !a.bias.is_null() {
            *a.bias.add(c) = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Max2BwdArgs, Max2FwdArgs, Max2Plan};
    use core::arch::x86_64::*;

    /// Lanes `0..n` (n at most 16).
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as __mmask16 }
    }

    /// Loads lanes `k` of `p` (zero elsewhere): a plain load when they are all 16.
    ///
    /// # Safety
    /// Lanes `k` of `p` readable; the CPU has AVX-512 F.
    #[inline(always)]
    unsafe fn load(k: __mmask16, p: *const f32) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { if k == 0xffff { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(k, p) } }
    }

    /// Stores lanes `k` of `v` at `p`: a plain store when they are all 16 (masked stores ran
    /// the in-place backward pass at half speed).
    ///
    /// # Safety
    /// Lanes `k` of `p` writable; the CPU has AVX-512 F.
    #[inline(always)]
    unsafe fn store(p: *mut f32, k: __mmask16, v: __m512) {
        // SAFETY: the caller's contract.
        unsafe { if k == 0xffff { _mm512_storeu_ps(p, v) } else { _mm512_mask_storeu_ps(p, k, v) } }
    }

    /// The forward task with zmm registers: per output row and 16-channel block, each
    /// channel's row of up to 16 windows from two pairs of row loads (even and odd columns by
    /// `vpermt2ps`), then the 16 x 16 tile turned to pixel-major by gathers from L1.
    ///
    /// # Safety
    /// As `super::forward_task`; the CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(p: &Max2Plan, a: &Max2FwdArgs, task: usize) {
        let blocks = p.c.div_ceil(16);
        let (n, cb) = (task / blocks, task % blocks);
        let mut tile = [0.0f32; 256];
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        let cols = _mm512_cvtepi32_ps(even);
        let by_channel = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(16),
        );
        // SAFETY (whole block): loads and stores are masked to the columns of the planes of
        // image n (rows 2 oy and 2 oy + 1 < ih; windows ox0 .. ox0 + cnt <= ow); the tile is
        // 256 floats and the gathers read `tile[l * 16 + k]`, l < 16, k < 16.
        unsafe {
            let y = a.y.add(n * a.y_bs + cb * p.oh * p.ow * 16);
            for oy in 0..p.oh {
                for ox0 in (0..p.ow).step_by(16) {
                    let cnt = (p.ow - ox0).min(16);
                    let (ka, kb) = (lanes((2 * cnt).min(16)), lanes((2 * cnt).saturating_sub(16)));
                    for l in 0..16 {
                        let c = cb * 16 + l;
                        if c >= p.c {
                            _mm512_storeu_ps(tile.as_mut_ptr().add(l * 16), _mm512_setzero_ps());
                            continue;
                        }
                        let base = (2 * oy) * p.iw + 2 * ox0;
                        let r0 = a.x.add(n * a.x_bs + c * p.ih * p.iw + base);
                        let r1 = r0.add(p.iw);
                        let (r0a, r0b) = (load(ka, r0), load(kb, r0.add(16)));
                        let (r1a, r1b) = (load(ka, r1), load(kb, r1.add(16)));
                        let pix = _mm512_add_ps(cols, _mm512_set1_ps(base as f32));
                        let one = _mm512_set1_ps(1.0);
                        let below = _mm512_set1_ps(p.iw as f32);
                        let taps = [
                            (_mm512_permutex2var_ps(r0a, even, r0b), pix),
                            (_mm512_permutex2var_ps(r0a, odd, r0b), _mm512_add_ps(pix, one)),
                            (_mm512_permutex2var_ps(r1a, even, r1b), _mm512_add_ps(pix, below)),
                            (_mm512_permutex2var_ps(r1a, odd, r1b), _mm512_add_ps(_mm512_add_ps(pix, below), one)),
                        ];
                        let (mut v, mut i) = (_mm512_set1_ps(f32::NEG_INFINITY), _mm512_set1_ps(-1.0));
                        for (t, ti) in taps {
                            let m = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(t, v) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(t, t);
                            v = _mm512_mask_mov_ps(v, m, t);
                            i = _mm512_mask_mov_ps(i, m, ti);
                        }
                        _mm512_storeu_ps(tile.as_mut_ptr().add(l * 16), v);
                        let am = a.argmax.add(n * a.argmax_bs + c * p.oh * p.ow + oy * p.ow + ox0);
                        store(am, lanes(cnt), i);
                    }
                    for k in 0..cnt {
                        let v = _mm512_i32gather_ps::<4>(by_channel, tile.as_ptr().add(k));
                        _mm512_storeu_ps(y.add((oy * p.ow + ox0 + k) * 16), v);
                    }
                }
            }
        }
    }

    /// The backward task with zmm registers: per image and channel of the block, plane by
    /// plane (one stream each of argmax, mask and gradient: many interleaved planes 4 KB apart
    /// ran 2x slower than four separate passes), eight windows at a time (their gradients
    /// gathered from the image's block, 16 KB at 16x16 that stays in L1 for its 16
    /// channels; their argmax loaded), each duplicated
    /// into the 16 input columns under them (`vpermps`), compared with the pixels' indices,
    /// masked by the ReLU map and stored whole.
    ///
    /// # Safety
    /// As `super::backward_task`; the CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward(p: &Max2Plan, a: &Max2BwdArgs, cb: usize) {
        let (plane, out) = (p.ih * p.iw, p.oh * p.ow);
        let channels = (p.c - cb * 16).min(16);
        let dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let by_pixel = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
        let iota = _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.);
        let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
        let mut sums = [zero; 16];
        // SAFETY (whole block): every access is masked to windows ox0 .. ox0 + cnt <= ow of
        // row oy < oh (input columns < 2 ow <= iw, rows 2 oy + r < ih) of the planes of channel
        // c < C of image n; the edge stores below stay inside the plane.
        unsafe {
            for n in 0..p.n {
                let gy = a.gy.add(n * a.gy_bs + cb * out * 16);
                // The block's gradient into L1 first, line by line: gathers that miss in
                // cache wait for each of their lines.
                for i in (0..out * 16).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(gy.add(i).cast::<i8>());
                }
                for (l, sum) in sums.iter_mut().enumerate().take(channels) {
                    let c = cb * 16 + l;
                    let am = a.argmax.add(n * a.argmax_bs + c * out);
                    let dx = a.dx.add(n * a.dx_bs + c * plane);
                    let mask = (!a.mask.is_null()).then(|| a.mask.add(n * a.mask_bs + c * plane));
                    for oy in 0..p.oh {
                        for ox0 in (0..p.ow).step_by(8) {
                            let cnt = (p.ow - ox0).min(8);
                            let kw = lanes(cnt);
                            let from = gy.add((oy * p.ow + ox0) * 16 + l);
                            let g = _mm512_mask_i32gather_ps::<4>(zero, kw, by_pixel, from);
                            let m = _mm512_maskz_loadu_ps(kw, am.add(oy * p.ow + ox0));
                            let (g, m) = (_mm512_permutexvar_ps(dup, g), _mm512_permutexvar_ps(dup, m));
                            let kc = lanes(2 * cnt);
                            for r in 0..2 {
                                let at = (2 * oy + r) * p.iw + 2 * ox0;
                                let pix = _mm512_add_ps(iota, _mm512_set1_ps(at as f32));
                                let hit = _mm512_mask_cmp_ps_mask::<_CMP_EQ_OQ>(kc, m, pix);
                                let v = match mask {
                                    Some(mp) => {
                                        let mv = load(kc, mp.add(at));
                                        let live = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(mv, zero);
                                        _mm512_maskz_mul_ps(hit, g, _mm512_maskz_mov_ps(live, one))
                                    }
                                    None => _mm512_maskz_mov_ps(hit, g),
                                };
                                store(dx.add(at), kc, v);
                                *sum = _mm512_add_ps(*sum, v);
                            }
                        }
                        if p.iw > 2 * p.ow {
                            *dx.add((2 * oy) * p.iw + p.iw - 1) = 0.0;
                            *dx.add((2 * oy + 1) * p.iw + p.iw - 1) = 0.0;
                        }
                    }
                    if p.ih > 2 * p.oh {
                        dx.add((p.ih - 1) * p.iw).write_bytes(0, p.iw);
                    }
                }
            }
            if !a.bias.is_null() {
                for (l, sum) in sums.iter().enumerate().take(channels) {
                    *a.bias.add(cb * 16 + l) = _mm512_reduce_add_ps(*sum);
                }
            }
        }
    }
}

/// The operands of a forward pass: `x` plain (input shape), `y` blocked and `argmax` plain
/// (output shape).
#[derive(Clone, Copy, Debug)]
pub struct Max2FwdIo {
    pub x: View,
    pub y: View,
    pub argmax: View,
}

/// The operands of a backward pass: `gy` blocked and `argmax` plain (output shape), `mask`
/// and `dx` plain (input shape; `dx` may be `mask` itself, in place).
#[derive(Clone, Copy, Debug)]
pub struct Max2BwdIo {
    pub gy: View,
    pub argmax: View,
    pub mask: Option<View>,
    pub dx: View,
}

fn check(v: &View, what: &'static str, len: usize, dims: [usize; 4], layout: Layout) -> Result<(), KernelError> {
    v.check_in(what, len)?;
    v.expect(what, dims, layout)
}

/// Runs a forward pass after checking the operands.
pub fn forward(par: &dyn Parallel, p: &Max2Plan, arena: &mut [f32], io: &Max2FwdIo) -> Result<(), KernelError> {
    let len = arena.len();
    check(&io.x, "input", len, [p.n, p.c, p.ih, p.iw], Layout::Nchw)?;
    check(&io.y, "output", len, [p.n, p.c, p.oh, p.ow], Layout::NChw16c)?;
    check(&io.argmax, "argmax", len, [p.n, p.c, p.oh, p.ow], Layout::Nchw)?;
    check_apart(("output", &io.y), &[("input", &io.x), ("argmax", &io.argmax)])?;
    check_apart(("argmax", &io.argmax), &[("input", &io.x)])?;
    let base = arena.as_mut_ptr();
    let args = Max2FwdArgs {
        x: base.wrapping_add(io.x.offset),
        x_bs: io.x.batch_stride,
        y: base.wrapping_add(io.y.offset),
        y_bs: io.y.batch_stride,
        argmax: base.wrapping_add(io.argmax.offset),
        argmax_bs: io.argmax.batch_stride,
    };
    par.run(p.forward_tasks(), &|t, _| {
        // SAFETY: views checked above; tasks write their own planes.
        unsafe { forward_task(p, &args, t) }
    });
    Ok(())
}

/// Runs a backward pass after checking the operands; `bias`, when given, receives the
/// per-channel sums of `dx` (`c` floats).
pub fn backward(
    par: &dyn Parallel,
    p: &Max2Plan,
    arena: &mut [f32],
    io: &Max2BwdIo,
    bias: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    let len = arena.len();
    check(&io.gy, "output gradient", len, [p.n, p.c, p.oh, p.ow], Layout::NChw16c)?;
    check(&io.argmax, "argmax", len, [p.n, p.c, p.oh, p.ow], Layout::Nchw)?;
    check(&io.dx, "input gradient", len, [p.n, p.c, p.ih, p.iw], Layout::Nchw)?;
    check_apart(("input gradient", &io.dx), &[("output gradient", &io.gy), ("argmax", &io.argmax)])?;
    if let Some(m) = &io.mask {
        check(m, "mask", len, [p.n, p.c, p.ih, p.iw], Layout::Nchw)?;
        check_same_or_apart(("input gradient", &io.dx), ("mask", m))?;
    }
    let bias = match bias {
        Some(b) if b.len() == p.c => b.as_mut_ptr(),
        Some(b) => return Err(KernelError::Length { what: "bias sums", expected: p.c, found: b.len() }),
        None => core::ptr::null_mut(),
    };
    let base = arena.as_mut_ptr();
    let args = Max2BwdArgs {
        gy: base.wrapping_add(io.gy.offset),
        gy_bs: io.gy.batch_stride,
        argmax: base.wrapping_add(io.argmax.offset),
        argmax_bs: io.argmax.batch_stride,
        mask: io.mask.map_or(core::ptr::null(), |m| base.wrapping_add(m.offset) as *const f32),
        mask_bs: io.mask.map_or(0, |m| m.batch_stride),
        dx: base.wrapping_add(io.dx.offset),
        dx_bs: io.dx.batch_stride,
        bias,
    };
    par.run(p.backward_tasks(), &|t, _| {
        // SAFETY: views checked above (dx apart from every input; bias a separate slice of
        // c floats); tasks write their own channels.
        unsafe { backward_task(p, &args, t) }
    });
    Ok(())
}
