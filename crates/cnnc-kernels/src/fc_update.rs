//! A fully connected layer's weight gradient with the optimiser's update fused: each
//! backward-weights task (`fc.rs`) computes a row group of the gradient into its thread's
//! scratch and updates those rows of the weight from it at once, so the gradient, as large as
//! the weight, is never written to memory and read back. Training only (the JIT calls it when
//! the update is the gradient's only reader): inference modules carry `fc` without it.

use super::fc::{self, FcPlan};
use super::optim::{StepRule, UpdateArgs, update_at};

/// Scratch floats per thread of [`backward_weights_update_task`]: one row group's gradient.
pub fn update_scratch_len(p: &FcPlan) -> usize {
    fc::weight_group(p) * p.i
}

/// Backward-weights task `task` with the optimiser's update applied to each row group of the
/// weight gradient it computed, from `scratch` ([`update_scratch_len`] floats, the task's
/// own), where the group is written instead of `dw`: the gradient stays in cache and
/// never goes to memory (a gradient written to memory and read back by the update costs three
/// passes over a weight that only bandwidth limits). Task 0 also writes `db` (non-null when the
/// plan has a bias).
///
/// # Safety
/// As [`fc::backward_weights_task`] without `dw`; `rule` and `ua` as
/// [`update_at`] takes them for a parameter of `o x i` floats; `scratch` valid for
/// writing its length and used by nothing else meanwhile.
pub unsafe fn backward_weights_update_task(
    p: &FcPlan,
    gy: *const f32,
    x: *const f32,
    db: *mut f32,
    (rule, ua): (&StepRule, &UpdateArgs),
    task: usize,
    scratch: *mut f32,
) {
    if task == 0 && !db.is_null() {
        // SAFETY: forwarded contract.
        unsafe { fc::bias_grad(p, gy, db, false) };
    }
    for (o0, rows) in fc::row_groups(p, task) {
        // SAFETY: the scratch holds rows x i floats (rows <= fc::weight_group); the update's range
        // o0 i .. (o0 + rows) i lies inside the o x i parameter and is this task's.
        unsafe {
            fc::weight_rows(p, gy, x, o0, rows, scratch, false);
            update_at(rule, ua, o0 * p.i, scratch, rows * p.i);
        }
    }
}
