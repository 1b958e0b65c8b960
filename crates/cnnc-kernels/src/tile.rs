//! The one building block: a register-tiled microkernel in the batch-reduce GEMM style
//! (Georganas et al., "Harnessing Deep Learning via a Single Building Block", IPDPS 2020).
//!
//! A tile is `NW` columns x `K` blocks of 16 lanes, `NW * K` accumulator vectors held in
//! registers for a whole reduction: `acc[j][k] += A[a + j * AC] * B[b + k * b_blk][0..16]`, the
//! A value broadcast, the B vector loaded, over `steps` steps (A and B advancing by `a_step`,
//! `b_step`) inside three nested loops over block pairs ([`Reduce`]). Forward convolution
//! (columns = output pixels, steps = input channels, pairs = input blocks x kernel taps),
//! backward-data (the same on the output gradient), backward-weights (columns = the 16 input
//! channels of a pixel, steps = output pixels), 1x1 convolutions and matrix products are all
//! this loop with other strides. Then the epilogue ([`Out`]) runs on the tile before it is
//! written once: `+ C` (accumulate), `+ bias`, `* scale + shift`, `+ residual`, activation.
//!
//! The column stride `AC` (16: pixels of a blocked map; 1: consecutive floats; 2: every other
//! float, for stride-2 convolutions on plain maps) is a
//! compile-time constant so that every broadcast is one instruction with a constant
//! displacement. The tile bodies are unrolled in the source (macro-generated statements with
//! literal indices, no loop over columns or blocks: LLVM vectorised such loops wrongly, see
//! `../shared/notes/machine-and-kernels.md`). Each (shape, `AC`, instruction set) is its own
//! function in a table ([`tiles`]), so drivers pick a shape at run time through one indirect
//! call per tile.

use super::act::{self, Act, ActKind};
use super::simd::{Isa, Portable, Simd, isa_fn};
#[cfg(target_arch = "x86_64")]
use super::x86::{Avx2, Avx512};

/// The reduction of one tile: three nested loops over block pairs (outermost first; trip
/// counts and A / B strides in floats), then `steps` steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Reduce {
    pub n: [usize; 3],
    pub a: [isize; 3],
    pub b: [isize; 3],
    pub steps: usize,
    pub a_step: isize,
    pub b_step: isize,
    /// Distance between the `K` 16-wide blocks of B.
    pub b_blk: isize,
}

/// Where and how a tile is written: vector `(j, k)` goes to `c + k * c_blk + j * c_col`.
/// `bias`, `scale`, `shift` (null: absent; `scale` and `shift` come together) point at
/// `16 * K` floats, block `k` at `16 * k`; the residual vector `(j, k)` is at
/// `res + k * res_blk + j * res_col` and may be the very memory of C (read before written).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Out {
    pub c: *mut f32,
    pub c_col: isize,
    pub c_blk: isize,
    /// Add the tile to what C holds instead of overwriting it.
    pub accumulate: bool,
    pub bias: *const f32,
    pub scale: *const f32,
    pub shift: *const f32,
    pub res: *const f32,
    pub res_col: isize,
    pub res_blk: isize,
    pub act: Act,
    /// Lines the tile asks the caches for while it runs (weights of tiles that follow it, see
    /// `conv_fwd.rs`): the `pf_lines` 64-byte lines from `pf` on, spread evenly over its
    /// innermost block pairs, each line also `pf_blk`, `2 * pf_blk`, .. floats further
    /// (`pf_copies` lines in all: the same part of each of a block pair's blocks). Prefetches
    /// are hints: `pf` need not point into any buffer.
    pub pf: *const f32,
    pub pf_lines: usize,
    pub pf_copies: usize,
    pub pf_blk: isize,
}

impl Out {
    /// Whether the epilogue is at most accumulation, bias, residual and ReLU, which the tiles
    /// apply in registers.
    pub fn is_register_epilogue(&self) -> bool {
        self.scale.is_null() && matches!(self.act.kind, ActKind::None | ActKind::Relu)
    }

    /// Plain store (or accumulation) of the tile, no epilogue.
    pub fn plain(c: *mut f32, c_col: isize, c_blk: isize, accumulate: bool) -> Out {
        Out {
            c,
            c_col,
            c_blk,
            accumulate,
            bias: core::ptr::null(),
            scale: core::ptr::null(),
            shift: core::ptr::null(),
            res: core::ptr::null(),
            res_col: 0,
            res_blk: 0,
            act: Act::NONE,
            pf: core::ptr::null(),
            pf_lines: 0,
            pf_copies: 1,
            pf_blk: 0,
        }
    }
}

/// A tile kernel.
///
/// # Safety
/// Every A float and B vector the reduction visits must be readable, every C (and residual)
/// vector of the tile readable and writable, the epilogue pointers valid for `16 * K` floats,
/// and the function must belong to the table of an instruction set the CPU supports.
pub type TileFn = unsafe fn(a: *const f32, b: *const f32, r: &Reduce, out: &Out);

/// The tiles of one column stride: `k1[w - 1]` has `w` columns and one block, and so on. The
/// lengths are the widest tiles that fit the instruction set's registers.
#[derive(Debug)]
pub struct TileSet {
    /// Machine registers per 16-lane vector (1 for AVX-512, 2 for AVX2 and portable).
    pub regs_per_vector: usize,
    pub k1: &'static [TileFn],
    pub k2: &'static [TileFn],
    pub k4: &'static [TileFn],
}

impl TileSet {
    /// The widest tile with `k` blocks (1, 2 or 4).
    pub fn max_width(&self, k: usize) -> usize {
        self.blocks(k).len()
    }

    /// The tile with `w` columns and `k` blocks; `w` is clamped to `1..=max_width(k)`, and a
    /// block count the set lacks falls back to one block (callers choose shapes the set has).
    pub fn get(&self, k: usize, w: usize) -> TileFn {
        let set = if self.blocks(k).is_empty() { self.k1 } else { self.blocks(k) };
        set[w.clamp(1, set.len()) - 1]
    }

    /// Measured relative speed of the tile `k x w` on this set (1 = the best shape), from
    /// `examples/tiles.rs` on Zen 5: below about 14 accumulator registers (12 for AVX2) FMA
    /// latency and load ports cap a tile at roughly `sqrt(registers / 14)`; one block per tile
    /// costs a load per FMA (82 % at best with AVX-512); two and four blocks are at the peak.
    pub fn efficiency(&self, k: usize, w: usize) -> f64 {
        let (regs, target, base) = match (self.regs_per_vector, k) {
            (1, 1) => (w, 14.0, 0.82),
            (1, _) => (k * w, 14.0, 1.0),
            (_, 1) => (2 * w, 12.0, 0.92),
            (_, _) => (2 * k * w, 12.0, 0.9),
        };
        base * super::fmath::sqrt64(regs as f64 / target).min(1.0)
    }

    fn blocks(&self, k: usize) -> &'static [TileFn] {
        match k {
            4 => self.k4,
            2 => self.k2,
            _ => self.k1,
        }
    }
}

/// Every tile of one instruction set, by A column stride.
#[derive(Debug)]
pub struct Tiles {
    /// Columns 16 floats apart (pixels of a blocked map).
    pub a16: TileSet,
    /// Columns 1 float apart.
    pub a1: TileSet,
    /// Columns 2 floats apart (stride-2 convolutions reading a plain map).
    pub a2: TileSet,
}

/// The tile tables of an instruction set. Portable tables exist on every target; asking for an
/// x86 set elsewhere gives the portable one.
pub fn tiles(isa: Isa) -> &'static Tiles {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => &AVX512_TILES,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &AVX2_TILES,
        _ => &PORTABLE_TILES,
    }
}

/// One tile shape: its body, generic over the instruction set and column stride.
trait Shape {
    /// # Safety
    /// As [`TileFn`].
    unsafe fn run<S: Simd, const AC: isize>(s: S, a: *const f32, b: *const f32, r: &Reduce, out: &Out);
}

/// The loops of a [`Reduce`] around `$body`, which sees the current A and B pointers as
/// `$pa` and `$pb`, with `$pre` run at every innermost block pair. Pointers advance with
/// wrapping arithmetic: the last advance of each loop may leave the buffer without being
/// dereferenced.
macro_rules! reduce_loops {
    ($r:ident, $a:ident, $b:ident, $pa:ident, $pb:ident, $pre:block, $body:block) => {
        let mut a0 = $a;
        let mut b0 = $b;
        for _ in 0..$r.n[0] {
            let (mut a1, mut b1) = (a0, b0);
            for _ in 0..$r.n[1] {
                let (mut a2, mut b2) = (a1, b1);
                for _ in 0..$r.n[2] {
                    $pre
                    let (mut $pa, mut $pb) = (a2, b2);
                    for _ in 0..$r.steps {
                        $body
                        $pa = $pa.wrapping_offset($r.a_step);
                        $pb = $pb.wrapping_offset($r.b_step);
                    }
                    a2 = a2.wrapping_offset($r.a[2]);
                    b2 = b2.wrapping_offset($r.b[2]);
                }
                a1 = a1.wrapping_offset($r.a[1]);
                b1 = b1.wrapping_offset($r.b[1]);
            }
            a0 = a0.wrapping_offset($r.a[0]);
            b0 = b0.wrapping_offset($r.b[0]);
        }
    };
}

/// Defines one marker type per tile shape `Name: K, NW, [column indices]`, with its body
/// unrolled: one broadcast and `K` FMAs per column per step, as separate statements.
macro_rules! shapes {
    ($($name:ident: $k:tt, $nw:literal, [$($j:literal)*];)*) => {$(
        struct $name;
        impl Shape for $name {
            #[inline(always)]
            unsafe fn run<S: Simd, const AC: isize>(s: S, a: *const f32, b: *const f32, r: &Reduce, out: &Out) {
                let z = s.zero();
                let mut acc = [[z; $k]; $nw];
                // A few lines of weights ahead per block pair: spread over the tile, the
                // stream from memory overlaps the FMAs (see `conv_fwd.rs`).
                let (mut pf, mut pf_left) = (out.pf, out.pf_lines);
                let pairs = r.n[0] * r.n[1] * r.n[2];
                let pf_per = if pf_left == 0 || pairs == 0 { 0 } else { pf_left.div_ceil(pairs) };
                reduce_loops!(r, a, b, pa, pb, {
                    let lines = pf_per.min(pf_left);
                    pf_left -= lines;
                    for _ in 0..lines {
                        let mut p = pf;
                        for _ in 0..out.pf_copies {
                            s.prefetch(p);
                            p = p.wrapping_offset(out.pf_blk);
                        }
                        pf = pf.wrapping_add(16);
                    }
                }, {
                    shapes!(@step $k, s, pa, pb, r, acc, AC, [$($j)*]);
                });
                if out.is_register_epilogue() {
                    // Accumulation, bias, residual and ReLU straight from the accumulators: no
                    // spill, no call (7-15 % of a tile with a short reduction: the stem, 1x1 on
                    // 64 channels, a forward reduction cut into chunks).
                    let relu = out.act.kind == ActKind::Relu;
                    let has_res = !out.res.is_null();
                    let bias: [S::V; $k] = core::array::from_fn(|k| {
                        // SAFETY: a non-null bias holds 16 * K floats (TileFn's contract).
                        if out.bias.is_null() { z } else { unsafe { s.load(out.bias.add(16 * k)) } }
                    });
                    $( shapes!(@fast $k, s, acc, $j, bias, out, has_res, relu, z); )*
                    return;
                }
                let mut buf = [0.0f32; 16 * $k * $nw];
                let p = buf.as_mut_ptr();
                // Constant indices only, so that `acc` stays in registers.
                $( shapes!(@spill $k, s, p, acc, $j); )*
                // SAFETY: buf holds the tile; the caller guarantees the rest of `out`.
                unsafe { finish(S::ISA, buf.as_ptr(), $nw, $k, out) };
            }
        }
    )*};
    (@fast 1, $s:ident, $acc:ident, $j:literal, $bias:ident, $out:ident, $res:ident, $relu:ident, $z:ident) => {
        shapes!(@fast_one $s, $acc, $j, 0, $bias, $out, $res, $relu, $z);
    };
    (@fast 2, $s:ident, $acc:ident, $j:literal, $bias:ident, $out:ident, $res:ident, $relu:ident, $z:ident) => {
        shapes!(@fast_one $s, $acc, $j, 0, $bias, $out, $res, $relu, $z);
        shapes!(@fast_one $s, $acc, $j, 1, $bias, $out, $res, $relu, $z);
    };
    (@fast 4, $s:ident, $acc:ident, $j:literal, $bias:ident, $out:ident, $res:ident, $relu:ident, $z:ident) => {
        shapes!(@fast_one $s, $acc, $j, 0, $bias, $out, $res, $relu, $z);
        shapes!(@fast_one $s, $acc, $j, 1, $bias, $out, $res, $relu, $z);
        shapes!(@fast_one $s, $acc, $j, 2, $bias, $out, $res, $relu, $z);
        shapes!(@fast_one $s, $acc, $j, 3, $bias, $out, $res, $relu, $z);
    };
    (@fast_one $s:ident, $acc:ident, $j:literal, $k:literal, $bias:ident, $out:ident, $res:ident, $relu:ident, $z:ident) => {
        // SAFETY: vector (j, k) of C and of the residual belong to the tile (TileFn's contract).
        unsafe {
            let c = $out.c.wrapping_offset($k * $out.c_blk + $j * $out.c_col);
            // The order of `finish_generic`: C, then bias, residual, activation.
            let mut v = $acc[$j][$k];
            if $out.accumulate {
                v = $s.add(v, $s.load(c));
            }
            v = $s.add(v, $bias[$k]);
            if $res {
                v = $s.add(v, $s.load($out.res.wrapping_offset($k * $out.res_blk + $j * $out.res_col)));
            }
            if $relu {
                v = $s.max(v, $z);
            }
            $s.store(c, v);
        }
    };
    (@spill 1, $s:ident, $p:ident, $acc:ident, $j:literal) => {
        // SAFETY: (j * K + k) * 16 + 16 <= buf.len() for every k < K.
        unsafe { $s.store($p.add($j * 16), $acc[$j][0]) };
    };
    (@spill 2, $s:ident, $p:ident, $acc:ident, $j:literal) => {
        // SAFETY: as above.
        unsafe {
            $s.store($p.add($j * 32), $acc[$j][0]);
            $s.store($p.add($j * 32 + 16), $acc[$j][1]);
        }
    };
    (@spill 4, $s:ident, $p:ident, $acc:ident, $j:literal) => {
        // SAFETY: as above.
        unsafe {
            $s.store($p.add($j * 64), $acc[$j][0]);
            $s.store($p.add($j * 64 + 16), $acc[$j][1]);
            $s.store($p.add($j * 64 + 32), $acc[$j][2]);
            $s.store($p.add($j * 64 + 48), $acc[$j][3]);
        }
    };
    (@step 1, $s:ident, $pa:ident, $pb:ident, $r:ident, $acc:ident, $ac:ident, [$($j:literal)*]) => {
        // SAFETY: the caller guarantees every A float and B vector of the reduction.
        unsafe {
            let w0 = $s.load($pb);
            $( $acc[$j][0] = $s.fmadd($s.bcast($pa.wrapping_offset($j * $ac)), w0, $acc[$j][0]); )*
        }
    };
    (@step 2, $s:ident, $pa:ident, $pb:ident, $r:ident, $acc:ident, $ac:ident, [$($j:literal)*]) => {
        // SAFETY: as above.
        unsafe {
            let w0 = $s.load($pb);
            let w1 = $s.load($pb.wrapping_offset($r.b_blk));
            $(
                let x = $s.bcast($pa.wrapping_offset($j * $ac));
                $acc[$j][0] = $s.fmadd(x, w0, $acc[$j][0]);
                $acc[$j][1] = $s.fmadd(x, w1, $acc[$j][1]);
            )*
        }
    };
    (@step 4, $s:ident, $pa:ident, $pb:ident, $r:ident, $acc:ident, $ac:ident, [$($j:literal)*]) => {
        // SAFETY: as above.
        unsafe {
            let w0 = $s.load($pb);
            let w1 = $s.load($pb.wrapping_offset($r.b_blk));
            let w2 = $s.load($pb.wrapping_offset(2 * $r.b_blk));
            let w3 = $s.load($pb.wrapping_offset(3 * $r.b_blk));
            $(
                let x = $s.bcast($pa.wrapping_offset($j * $ac));
                $acc[$j][0] = $s.fmadd(x, w0, $acc[$j][0]);
                $acc[$j][1] = $s.fmadd(x, w1, $acc[$j][1]);
                $acc[$j][2] = $s.fmadd(x, w2, $acc[$j][2]);
                $acc[$j][3] = $s.fmadd(x, w3, $acc[$j][3]);
            )*
        }
    };
}

shapes! {
    K1W1: 1, 1, [0];
    K1W2: 1, 2, [0 1];
    K1W3: 1, 3, [0 1 2];
    K1W4: 1, 4, [0 1 2 3];
    K1W5: 1, 5, [0 1 2 3 4];
    K1W6: 1, 6, [0 1 2 3 4 5];
    K1W7: 1, 7, [0 1 2 3 4 5 6];
    K1W8: 1, 8, [0 1 2 3 4 5 6 7];
    K1W9: 1, 9, [0 1 2 3 4 5 6 7 8];
    K1W10: 1, 10, [0 1 2 3 4 5 6 7 8 9];
    K1W11: 1, 11, [0 1 2 3 4 5 6 7 8 9 10];
    K1W12: 1, 12, [0 1 2 3 4 5 6 7 8 9 10 11];
    K1W13: 1, 13, [0 1 2 3 4 5 6 7 8 9 10 11 12];
    K1W14: 1, 14, [0 1 2 3 4 5 6 7 8 9 10 11 12 13];
    K1W15: 1, 15, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14];
    K1W16: 1, 16, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15];
    K2W1: 2, 1, [0];
    K2W2: 2, 2, [0 1];
    K2W3: 2, 3, [0 1 2];
    K2W4: 2, 4, [0 1 2 3];
    K2W5: 2, 5, [0 1 2 3 4];
    K2W6: 2, 6, [0 1 2 3 4 5];
    K2W7: 2, 7, [0 1 2 3 4 5 6];
    K2W8: 2, 8, [0 1 2 3 4 5 6 7];
    K2W9: 2, 9, [0 1 2 3 4 5 6 7 8];
    K2W10: 2, 10, [0 1 2 3 4 5 6 7 8 9];
    K2W11: 2, 11, [0 1 2 3 4 5 6 7 8 9 10];
    K2W12: 2, 12, [0 1 2 3 4 5 6 7 8 9 10 11];
    K2W13: 2, 13, [0 1 2 3 4 5 6 7 8 9 10 11 12];
    K2W14: 2, 14, [0 1 2 3 4 5 6 7 8 9 10 11 12 13];
    K4W1: 4, 1, [0];
    K4W2: 4, 2, [0 1];
    K4W3: 4, 3, [0 1 2];
    K4W4: 4, 4, [0 1 2 3];
    K4W5: 4, 5, [0 1 2 3 4];
    K4W6: 4, 6, [0 1 2 3 4 5];
}

/// The epilogue and store of a finished tile held in `buf` (`nw * kk` vectors, `(j, k)` at
/// `(j * kk + k) * 16`).
///
/// # Safety
/// `buf` valid for the tile; `out` as in [`TileFn`].
#[inline(always)]
unsafe fn finish_generic<S: Simd>(s: S, buf: *const f32, nw: usize, kk: usize, o: &Out) {
    let cheap = o.act.is_cheap();
    for k in 0..kk {
        // SAFETY: the epilogue vectors hold 16 * kk floats (caller).
        let (bias, scale) = unsafe {
            let bias = if o.bias.is_null() { s.zero() } else { s.load(o.bias.add(16 * k)) };
            if o.scale.is_null() {
                (bias, None)
            } else {
                (bias, Some((s.load(o.scale.add(16 * k)), s.load(o.shift.add(16 * k)))))
            }
        };
        for j in 0..nw {
            let at = k as isize * o.c_blk + j as isize * o.c_col;
            let c = o.c.wrapping_offset(at);
            // SAFETY: buf holds the tile; C and the residual vector are valid (caller).
            unsafe {
                let mut v = s.load(buf.add((j * kk + k) * 16));
                if o.accumulate {
                    v = s.add(v, s.load(c));
                }
                v = s.add(v, bias);
                if let Some((scale, shift)) = scale {
                    v = s.fmadd(v, scale, shift);
                }
                if !o.res.is_null() {
                    v = s.add(v, s.load(o.res.wrapping_offset(k as isize * o.res_blk + j as isize * o.res_col)));
                }
                if cheap {
                    v = act::forward(s, &o.act, v);
                }
                s.store(c, v);
            }
        }
        if !cheap {
            let first = o.c.wrapping_offset(k as isize * o.c_blk);
            if o.c_col == 16 {
                // SAFETY: the tile's vectors of block k are contiguous and valid (caller).
                unsafe { act::apply_in_place(S::ISA, first, 16 * nw, &o.act) };
            } else {
                for j in 0..nw {
                    // SAFETY: each vector of the tile is valid (caller).
                    unsafe { act::apply_in_place(S::ISA, first.wrapping_offset(j as isize * o.c_col), 16, &o.act) };
                }
            }
        }
    }
}

isa_fn! {
    /// The epilogue of a tile (out of line: one copy per instruction set).
    ///
    /// # Safety
    /// As `finish_generic`; `isa` supported by the CPU.
    pub unsafe fn finish(buf: *const f32, nw: usize, kk: usize, o: &Out) = finish_generic;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn tile_avx512<T: Shape, const AC: isize>(a: *const f32, b: *const f32, r: &Reduce, out: &Out) {
    // SAFETY: the AVX-512 table is only used on CPUs with AVX-512 (TileFn's contract).
    unsafe { T::run::<Avx512, AC>(Avx512::new_unchecked(), a, b, r, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<T: Shape, const AC: isize>(a: *const f32, b: *const f32, r: &Reduce, out: &Out) {
    // SAFETY: the AVX2 table is only used on CPUs with AVX2 and FMA (TileFn's contract).
    unsafe { T::run::<Avx2, AC>(Avx2::new_unchecked(), a, b, r, out) }
}

unsafe fn tile_portable<T: Shape, const AC: isize>(a: *const f32, b: *const f32, r: &Reduce, out: &Out) {
    // SAFETY: forwarded contract.
    unsafe { T::run::<Portable, AC>(Portable, a, b, r, out) }
}

/// `&[f(shape, AC), ...]` for a list of shapes.
macro_rules! table {
    ($f:ident, $ac:literal, [$($t:ident)*]) => {
        &[$($f::<$t, $ac> as TileFn),*]
    };
}

/// The tables of one instruction set: `$k1`, `$k2`, `$k4` list the shapes it uses.
macro_rules! tile_tables {
    ($name:ident, $f:ident, $regs:literal, [$($k1:ident)*], [$($k2:ident)*], [$($k4:ident)*]) => {
        static $name: Tiles = Tiles {
            a16: TileSet {
                regs_per_vector: $regs,
                k1: table!($f, 16, [$($k1)*]),
                k2: table!($f, 16, [$($k2)*]),
                k4: table!($f, 16, [$($k4)*]),
            },
            a1: TileSet {
                regs_per_vector: $regs,
                k1: table!($f, 1, [$($k1)*]),
                k2: table!($f, 1, [$($k2)*]),
                k4: table!($f, 1, [$($k4)*]),
            },
            a2: TileSet {
                regs_per_vector: $regs,
                k1: table!($f, 2, [$($k1)*]),
                k2: table!($f, 2, [$($k2)*]),
                k4: table!($f, 2, [$($k4)*]),
            },
        };
    };
}

// 32 zmm registers: up to 28 accumulators plus the B vectors and a broadcast (7 x 4 would
// need 33 and spills: measured 25 % slower than 6 x 4).
#[cfg(target_arch = "x86_64")]
tile_tables!(
    AVX512_TILES,
    tile_avx512,
    1,
    [K1W1 K1W2 K1W3 K1W4 K1W5 K1W6 K1W7 K1W8 K1W9 K1W10 K1W11 K1W12 K1W13 K1W14 K1W15 K1W16],
    [K2W1 K2W2 K2W3 K2W4 K2W5 K2W6 K2W7 K2W8 K2W9 K2W10 K2W11 K2W12 K2W13 K2W14],
    [K4W1 K4W2 K4W3 K4W4 K4W5 K4W6]
);
// 16 ymm registers, two per 16-lane vector: 6 x 1 (12 accumulators, 2 B halves, a
// broadcast) or 2 x 2; 3 x 2 and 1 x 4 need 17 and spill (measured 2x slower).
#[cfg(target_arch = "x86_64")]
tile_tables!(AVX2_TILES, tile_avx2, 2, [K1W1 K1W2 K1W3 K1W4 K1W5 K1W6], [K2W1 K2W2], []);
// Whatever the target's vectors are, small tiles keep the arrays out of memory.
tile_tables!(PORTABLE_TILES, tile_portable, 2, [K1W1 K1W2 K1W3 K1W4], [K2W1 K2W2], []);
