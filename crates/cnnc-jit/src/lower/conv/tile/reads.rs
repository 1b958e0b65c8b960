//! How the forward tiles read a convolution's input and weights ([`Reads`]): blocked weights
//! on blocked input, repacked `Oihw16o` weights on plain input, and those of grouped
//! convolutions whose groups are not whole blocks.

use super::TALL;
use crate::lower::Val;
use crate::lower::conv::Geo;
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Layout, WeightLayout};

/// How a convolution reads its input and weights (offsets in floats). The input channels
/// reduced are `chunks` chunks of `chunk_len` channels each.
pub(super) struct Reads {
    pub chunks: usize,
    pub chunk_len: usize,
    pub x_chunk: i64,
    pub w_chunk: i64,
    pub x_chan: i64,
    pub w_chan: i64,
    /// Between horizontally adjacent input pixels, and input rows.
    pub x_pix: i64,
    pub x_row: i64,
    /// Between kernel taps (row-major over the kernel).
    pub w_tap: i64,
    /// Per block of 16 output channels: where its weights start, and its first input chunk.
    pub w_base: Vec<i32>,
    pub x_base: Vec<i32>,
    /// Per `(block, tile of the block)`: where the tile's input channels start, from the
    /// block's; for grouped convolutions whose groups are not whole blocks (a block's tiles
    /// then belong to different groups).
    pub x_part: Option<Vec<i32>>,
}

/// The reads of blocked weights on blocked input, or `None` when the layout does not fit.
pub(super) fn blocked_reads(g: &Geo, x: &Val, wp: &ParamPlan) -> Option<Reads> {
    let layout = wp.layout?;
    let grouped = match layout {
        WeightLayout::OIhw16i16o | WeightLayout::OI16i16o => false,
        WeightLayout::GOIhw16i16o => true,
        WeightLayout::Oihw | WeightLayout::Goihw16g | WeightLayout::Oi => return None,
    };
    if x.layout != Layout::Blocked16
        || grouped != (g.groups > 1)
        || (grouped && (!g.cg().is_multiple_of(16) || !g.og().is_multiple_of(16)))
    {
        return None;
    }
    let dims = &wp.dims;
    let off = |o: usize, i: usize, y: usize, xx: usize| layout.offset(dims, g.groups, [o, i, y, xx]) as i64;
    let (taps, hw) = ((g.kh * g.kw) as i64, (g.h * g.w) as i64);
    let ocb = g.o.div_ceil(16);
    let w_base = (0..ocb).map(|b| i32::try_from(off(b * 16, 0, 0, 0)).ok()).collect::<Option<Vec<_>>>()?;
    let x_base = (0..ocb)
        .map(|b| i32::try_from((b * 16 / g.og().max(1)) * g.cg() / 16 * 16 * (g.h * g.w)).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(Reads {
        chunks: g.cg().div_ceil(16),
        chunk_len: 16,
        x_chunk: 16 * hw,
        w_chunk: 256 * taps,
        x_chan: 1,
        w_chan: 16,
        x_pix: 16,
        x_row: 16 * g.w as i64,
        w_tap: 256,
        w_base,
        x_base,
        x_part: None,
    })
}

/// The reads of `Oihw16o` weights on plain input (one group).
pub(super) fn plain_reads(g: &Geo) -> Option<Reads> {
    let taps = g.kh * g.kw;
    let w_base = (0..g.o.div_ceil(16)).map(|b| i32::try_from(b * g.c * taps * 16).ok()).collect::<Option<Vec<_>>>()?;
    Some(Reads {
        chunks: 1,
        chunk_len: g.c,
        x_chunk: 0,
        w_chunk: 0,
        x_chan: (g.h * g.w) as i64,
        w_chan: 16 * taps as i64,
        x_pix: 1,
        x_row: g.w as i64,
        w_tap: 16,
        x_base: vec![0; w_base.len()],
        w_base,
        x_part: None,
    })
}

/// The reads of `Oihw16o` weights (repacked from `oihw`, each group's inputs as the input
/// channels) of a grouped convolution on blocked input whose groups are not whole blocks, in
/// tiles of four output channels (which must then lie in one group): a group's inputs are
/// whole blocks, or lie within one block.
pub(super) fn grouped_reads(g: &Geo, x: &Val) -> Option<Reads> {
    let (cg, og) = (g.cg(), g.og());
    if g.groups == 1 || x.layout != Layout::Blocked16 || !og.is_multiple_of(TALL.channels()) {
        return None;
    }
    let (chunks, chunk_len) = match (cg.is_multiple_of(16), 16 % cg == 0) {
        (true, _) => (cg / 16, 16),
        (false, true) => (1, cg),
        (false, false) => return None,
    };
    let (taps, hw, ocb) = (g.kh * g.kw, g.h * g.w, g.o.div_ceil(16));
    let w_base = (0..ocb).map(|b| i32::try_from(b * cg * taps * 16).ok()).collect::<Option<Vec<_>>>()?;
    let x_part = (0..ocb * TALL.parts())
        .map(|k| {
            let o0 = (k * TALL.channels()).min(g.o - 1);
            let c0 = o0 / og * cg;
            i32::try_from(c0 / 16 * 16 * hw + c0 % 16).ok()
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Reads {
        chunks,
        chunk_len,
        x_chunk: 16 * hw as i64,
        w_chunk: 256 * taps as i64,
        x_chan: 1,
        w_chan: 16 * taps as i64,
        x_pix: 16,
        x_row: 16 * g.w as i64,
        w_tap: 16,
        x_base: vec![0; ocb],
        w_base,
        x_part: Some(x_part),
    })
}
