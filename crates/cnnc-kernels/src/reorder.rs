//! Activation reorders between `nchw` and `nChw16c` (the `reorder` op at the edges of blocked
//! regions), in 16 x 16 tiles (16 channels x 16 pixels) so that both sides are read and
//! written in whole cache lines. Padding lanes of a blocked result are written as zeros.

use super::error::KernelError;
use super::par::{Parallel, SyncPtr};
use super::view::{Layout, View, check_apart};

/// `dst` (blocked) = `src` (plain), or the reverse when `to_blocked` is false.
///
/// # Safety
/// `src` must hold `n` images of the source layout at `src + i * src_bs`, `dst` `n` images of
/// the destination layout at `dst + i * dst_bs`, `c x hw` each, and the two must not overlap.
/// Tasks are `(image, block)` pairs: `n * ceil(c / 16)` of them.
#[allow(clippy::too_many_arguments)]
pub unsafe fn reorder_task(
    to_blocked: bool,
    src: *const f32,
    src_bs: usize,
    dst: *mut f32,
    dst_bs: usize,
    c: usize,
    hw: usize,
    task: usize,
) {
    let blocks = c.div_ceil(16);
    let (n, cb) = (task / blocks, task % blocks);
    let lanes = (c - cb * 16).min(16);
    let src = src.wrapping_add(n * src_bs);
    let dst = dst.wrapping_add(n * dst_bs);
    let plain = |l: usize, p: usize| (cb * 16 + l) * hw + p;
    let blocked = |l: usize, p: usize| (cb * hw + p) * 16 + l;
    let mut p0 = 0;
    while p0 < hw {
        let np = (hw - p0).min(16);
        let mut t = [[0.0f32; 16]; 16];
        for (l, row) in t.iter_mut().enumerate().take(if to_blocked { lanes } else { 16 }) {
            for (q, v) in row.iter_mut().enumerate().take(np) {
                let i = if to_blocked { plain(l, p0 + q) } else { blocked(l, p0 + q) };
                // SAFETY: l < lanes (real channels) or < 16 (the block's lanes), p0 + q < hw.
                *v = unsafe { *src.add(i) };
            }
        }
        for (l, row) in t.iter().enumerate().take(if to_blocked { 16 } else { lanes }) {
            for (q, v) in row.iter().enumerate().take(np) {
                let i = if to_blocked { blocked(l, p0 + q) } else { plain(l, p0 + q) };
                // SAFETY: as above, on the destination side.
                unsafe { *dst.add(i) = *v };
            }
        }
        p0 += np;
    }
}

/// Reorders `src` into `dst` (one `nchw`, the other `nChw16c`, same `n x c x h x w`) inside
/// `arena`, on `par`'s threads.
pub fn reorder(par: &dyn Parallel, arena: &mut [f32], src: View, dst: View) -> Result<(), KernelError> {
    src.check_in("source", arena.len())?;
    dst.check_in("destination", arena.len())?;
    let to_blocked = match (src.layout, dst.layout) {
        (Layout::Nchw, Layout::NChw16c) => true,
        (Layout::NChw16c, Layout::Nchw) => false,
        _ => return Err(KernelError::View { what: "a reorder converts nchw to nChw16c or back" }),
    };
    dst.expect("destination", [src.n, src.c, src.h, src.w], dst.layout)?;
    check_apart(("destination", &dst), &[("source", &src)])?;
    let base = SyncPtr(arena.as_mut_ptr());
    let hw = src.h * src.w;
    par.run(src.n * src.c.div_ceil(16), &|task, _| {
        let b = base.get();
        // SAFETY: both views were checked inside the arena and apart; each task writes its own
        // (image, block) of the destination.
        unsafe {
            reorder_task(
                to_blocked,
                b.wrapping_add(src.offset),
                src.batch_stride,
                b.wrapping_add(dst.offset),
                dst.batch_stride,
                src.c,
                hw,
                task,
            )
        }
    });
    Ok(())
}
