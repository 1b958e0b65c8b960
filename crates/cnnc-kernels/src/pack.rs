//! Weight packing: PyTorch's `oihw` (`[O][I/groups][KH][KW]`) to each blocked layout the
//! kernels read and back (the back end packs once at load, and unpacks to save checkpoints and
//! to report weight gradients).
//!
//! | layout | floats | element |
//! | --- | --- | --- |
//! | `OIhw16i16o` / `gOIhw16i16o` | `G x OB x IB x KH x KW x 256` | `[g][ob][ib][y][x][i][o]` = `w[g*Og + ob*16 + o][ib*16 + i][y][x]` |
//! | `IOhw16o16i` (backward data) | `G x IB x OB x KH x KW x 256` | `[g][ib][ob][KH-1-y][KW-1-x][o][i]`, the same element |
//! | `Goihw16g` (depthwise) | `GB x KH x KW x 16` | `[gb][y][x][g]` = `w[gb*16 + g][0][y][x]` |
//! | `OI16i16o` (1x1, gemm on maps) | as `OIhw16i16o` with `KH = KW = 1` | |
//! | `Oihw16o` (plain-input convolution) | `OB x I x KH x KW x 16` | `[ob][i][y][x][o]` = `w[ob*16 + o][i][y][x]` |
//!
//! `OB = ceil(Og / 16)`, `IB = ceil(Ig / 16)` per group; every padded position is zero, which is
//! what makes the padding lanes of blocked activations harmless. Training rewrites the forward
//! form as the backward-data form each step ([`forward_to_backward_data`]).

use super::error::{KernelError, check_len, product};

/// The logical shape of a convolution's weights: `o` filters of `i` (per group) x `kh` x `kw`,
/// in `groups` groups (`o` is the total over groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightShape {
    pub o: usize,
    pub i: usize,
    pub kh: usize,
    pub kw: usize,
    pub groups: usize,
}

impl WeightShape {
    fn check(&self) -> Result<(usize, usize, usize), KernelError> {
        if [self.o, self.i, self.kh, self.kw, self.groups].contains(&0) || !self.o.is_multiple_of(self.groups) {
            return Err(KernelError::Shape { what: "weight shape" });
        }
        let og = self.o / self.groups;
        Ok((og, og.div_ceil(16), self.i.div_ceil(16)))
    }

    /// Floats of the plain `oihw` tensor.
    pub fn plain_len(&self) -> Result<usize, KernelError> {
        product("weights", &[self.o, self.i, self.kh, self.kw])
    }

    /// Floats of the blocked layouts (`gOIhw16i16o`, `IOhw16o16i`).
    pub fn blocked_len(&self) -> Result<usize, KernelError> {
        let (_, ob, ib) = self.check()?;
        product("packed weights", &[self.groups, ob, ib, self.kh, self.kw, 256])
    }
}

/// Which blocked layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// `gOIhw16i16o` (forward; `OIhw16i16o` for one group).
    Forward,
    /// `gIOhw16o16i` with the kernel rotated 180 degrees (backward data).
    BackwardData,
}

/// The packed index of plain element `(o, i, y, x)` in `layout`.
fn blocked_index(s: &WeightShape, layout: Blocked, o: usize, i: usize, y: usize, x: usize) -> usize {
    let og = s.o / s.groups;
    let (ob_n, ib_n) = (og.div_ceil(16), s.i.div_ceil(16));
    let (g, oo) = (o / og, o % og);
    let (ob, ol, ib, il) = (oo / 16, oo % 16, i / 16, i % 16);
    let taps = s.kh * s.kw;
    match layout {
        Blocked::Forward => ((((g * ob_n + ob) * ib_n + ib) * taps + y * s.kw + x) * 16 + il) * 16 + ol,
        Blocked::BackwardData => {
            let (ry, rx) = (s.kh - 1 - y, s.kw - 1 - x);
            ((((g * ib_n + ib) * ob_n + ob) * taps + ry * s.kw + rx) * 16 + ol) * 16 + il
        }
    }
}

/// Packs plain `oihw` weights into `layout`, zero-filling the padding.
pub fn pack(s: &WeightShape, layout: Blocked, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    check_len("plain weights", src.len(), s.plain_len()?)?;
    check_len("packed weights", dst.len(), s.blocked_len()?)?;
    dst.fill(0.0);
    let mut k = 0;
    for o in 0..s.o {
        for i in 0..s.i {
            for y in 0..s.kh {
                for x in 0..s.kw {
                    dst[blocked_index(s, layout, o, i, y, x)] = src[k];
                    k += 1;
                }
            }
        }
    }
    Ok(())
}

/// Unpacks `layout` back to plain `oihw` (the padding is dropped).
pub fn unpack(s: &WeightShape, layout: Blocked, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    check_len("packed weights", src.len(), s.blocked_len()?)?;
    check_len("plain weights", dst.len(), s.plain_len()?)?;
    let mut k = 0;
    for o in 0..s.o {
        for i in 0..s.i {
            for y in 0..s.kh {
                for x in 0..s.kw {
                    dst[k] = src[blocked_index(s, layout, o, i, y, x)];
                    k += 1;
                }
            }
        }
    }
    Ok(())
}

/// Tasks of [`forward_to_backward_data_task`]: one per group and output block.
pub fn forward_to_backward_data_tasks(s: &WeightShape) -> Result<usize, KernelError> {
    let (_, ob, _) = s.check()?;
    product("weight blocks", &[s.groups, ob])
}

/// Rewrites packed forward weights (`gOIhw16i16o`) as backward-data weights (`gIOhw16o16i`,
/// kernel rotated), block by block without the plain layout in between: a back end that
/// trains keeps the forward form, which the optimiser updates, and remakes this one from it
/// each step.
pub fn forward_to_backward_data(s: &WeightShape, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    let len = s.blocked_len()?;
    check_len("packed weights", src.len(), len)?;
    check_len("backward-data weights", dst.len(), len)?;
    for task in 0..forward_to_backward_data_tasks(s)? {
        // SAFETY: both slices hold the blocked length, checked above; one task at a time.
        unsafe { forward_to_backward_data_task(s, [[0, s.kh], [0, s.kw]], src.as_ptr(), dst.as_mut_ptr(), task) };
    }
    Ok(())
}

/// One task of [`forward_to_backward_data`]: the blocks of group and output block `task`
/// (`task = g * OB + ob`) at kernel rows `taps[0]` and columns `taps[1]` (`[start, end)`,
/// forward indices), each 16 x 16 block transposed and moved to its rotated tap. A
/// backward-data pass that reads only some taps (a map smaller than the kernel's reach) has
/// only those rewritten; the others are left as they were.
///
/// # Safety
/// `s` valid (`blocked_len` succeeds), `task < forward_to_backward_data_tasks(s)`, the ranges
/// within `0..kh` and `0..kw`, `src` readable and `dst` writable for `s.blocked_len()`
/// floats, apart; no other running task has this `task` (tasks write disjoint blocks).
pub unsafe fn forward_to_backward_data_task(
    s: &WeightShape,
    taps: [[usize; 2]; 2],
    src: *const f32,
    dst: *mut f32,
    task: usize,
) {
    let og = s.o / s.groups;
    let (ob_n, ib_n) = (og.div_ceil(16), s.i.div_ceil(16));
    let [[y0, y1], [x0, x1]] = taps;
    let taps = s.kh * s.kw;
    let (g, ob) = (task / ob_n, task % ob_n);
    let kernel = (y0..y1).flat_map(|y| (x0..x1).map(move |x| y * s.kw + x));
    for ib in 0..ib_n {
        for t in kernel.clone() {
            let from = (((g * ob_n + ob) * ib_n + ib) * taps + t) * 256;
            let to = (((g * ib_n + ib) * ob_n + ob) * taps + (taps - 1 - t)) * 256;
            // SAFETY: both blocks lie inside the packed tensors (indices below blocked_len),
            // apart (the caller's contract); the destination block is this task's.
            unsafe { transpose_block(&*(src.add(from) as *const Block), &mut *(dst.add(to) as *mut Block)) };
        }
    }
}

/// A 16 x 16 block of packed weights, row by row.
type Block = [[f32; 16]; 16];

/// `b[o][i] = a[i][o]`, straight from block to block in 4 x 4 tiles (each tile's rows held in
/// registers and shuffled: twice as fast on ResNet-18's layer4 as going through a copy of the
/// block and 256 single stores).
#[inline(always)]
fn transpose_block(a: &Block, b: &mut Block) {
    for bi in (0..16).step_by(4) {
        for bo in (0..16).step_by(4) {
            let mut t = [[0.0f32; 4]; 4];
            for (r, row) in a[bi..bi + 4].iter().enumerate() {
                for (c, col) in t.iter_mut().enumerate() {
                    col[r] = row[bo + c];
                }
            }
            for (c, col) in t.iter().enumerate() {
                b[bo + c][bi..bi + 4].copy_from_slice(col);
            }
        }
    }
}

/// Floats of `Oihw16o` weights (plain-input convolutions): `ceil(O/16) x I x KH x KW x 16`.
pub fn plain_input_len(s: &WeightShape) -> Result<usize, KernelError> {
    if s.groups != 1 {
        return Err(KernelError::Unsupported { what: "plain-input convolution with groups" });
    }
    s.check()?;
    product("packed weights", &[s.o.div_ceil(16), s.i, s.kh, s.kw, 16])
}

/// Packs `oihw` into `Oihw16o` (`[ob][i][y][x][o]`, zero past `O`).
pub fn pack_plain_input(s: &WeightShape, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    check_len("plain weights", src.len(), s.plain_len()?)?;
    check_len("packed weights", dst.len(), plain_input_len(s)?)?;
    dst.fill(0.0);
    let taps = s.kh * s.kw;
    for o in 0..s.o {
        for it in 0..s.i * taps {
            dst[((o / 16) * s.i * taps + it) * 16 + o % 16] = src[o * s.i * taps + it];
        }
    }
    Ok(())
}

/// Unpacks `Oihw16o` back to `oihw`.
pub fn unpack_plain_input(s: &WeightShape, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    check_len("packed weights", src.len(), plain_input_len(s)?)?;
    check_len("plain weights", dst.len(), s.plain_len()?)?;
    let taps = s.kh * s.kw;
    for o in 0..s.o {
        for it in 0..s.i * taps {
            dst[o * s.i * taps + it] = src[((o / 16) * s.i * taps + it) * 16 + o % 16];
        }
    }
    Ok(())
}

/// Floats of depthwise `Goihw16g` weights for `channels` channels of `kh x kw`.
pub fn depthwise_len(channels: usize, kh: usize, kw: usize) -> Result<usize, KernelError> {
    product("depthwise weights", &[channels.div_ceil(16), kh, kw, 16])
}

/// Packs depthwise weights (`[C][1][KH][KW]`) into `Goihw16g`.
pub fn pack_depthwise(channels: usize, kh: usize, kw: usize, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    check_len("plain weights", src.len(), product("weights", &[channels, kh, kw])?)?;
    check_len("packed weights", dst.len(), depthwise_len(channels, kh, kw)?)?;
    dst.fill(0.0);
    for c in 0..channels {
        for t in 0..kh * kw {
            dst[((c / 16) * kh * kw + t) * 16 + c % 16] = src[c * kh * kw + t];
        }
    }
    Ok(())
}

/// Unpacks `Goihw16g` back to `[C][1][KH][KW]`.
pub fn unpack_depthwise(
    channels: usize,
    kh: usize,
    kw: usize,
    src: &[f32],
    dst: &mut [f32],
) -> Result<(), KernelError> {
    check_len("packed weights", src.len(), depthwise_len(channels, kh, kw)?)?;
    check_len("plain weights", dst.len(), product("weights", &[channels, kh, kw])?)?;
    for c in 0..channels {
        for t in 0..kh * kw {
            dst[c * kh * kw + t] = src[((c / 16) * kh * kw + t) * 16 + c % 16];
        }
    }
    Ok(())
}
