//! The weight transforms of an execution plan, applied to a checkpoint's tensors: batch-norm
//! folding and packing into the kernels' layouts. The one implementation: the passes use it to
//! fold weights, every back end to load them, and checkpoints are written back through
//! [`unpack`].

use crate::TensorMap;
use crate::tensor::Tensor;
use crate::weights::NUM_BATCHES_TRACKED;
use cnnc_ir::plan::{ParamPlan, WeightTransform};
use cnnc_ir::{ParamRole, WeightLayout};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("weight `{name}` is missing")]
    Missing { name: String },
    #[error("weight `{name}` has shape {found:?}, expected {expected}")]
    Shape { name: String, expected: String, found: Vec<usize> },
}

/// Packs the optimiser state of `weights` that `params` store packed: a checkpoint holds it in
/// logical layout, as [`unpack`] gives it back, but the plan's transforms pack weights only
/// (state absent from a checkpoint starts at zero, which needs no packing). A tensor already
/// in its stored, flat form is left as it is.
pub fn pack_optimizer_state(params: &[ParamPlan], weights: &mut TensorMap) {
    for p in params {
        if let (Some(layout), ParamRole::OptimizerState) = (p.layout, p.role)
            && let Some(t) = weights.get_mut(&p.name)
            && t.shape == p.dims
        {
            *t = pack(t, layout, p.groups);
        }
    }
}

/// Applies `transforms` to `weights` in order.
pub fn apply_transforms(transforms: &[WeightTransform], weights: &mut TensorMap) -> Result<(), TransformError> {
    for t in transforms {
        match t {
            WeightTransform::FoldBn { layer, bn, eps } => fold_bn(weights, layer, bn, *eps)?,
            WeightTransform::Pack { param, layout, groups } => {
                let tensor = weights.get(param).ok_or_else(|| TransformError::Missing { name: param.clone() })?;
                let packed = pack(tensor, *layout, *groups);
                weights.insert(param.clone(), packed);
            }
        }
    }
    Ok(())
}

/// Folds batch norm `bn` into the convolution or matrix product `layer`, per output channel
/// `o`: `w'[o, ...] = w[o, ...] * s[o]`, `b'[o] = (b[o] - mean[o]) * s[o] + beta[o]` with
/// `s = gamma / sqrt(var + eps)`, in f64 and rounded once to f32. `layer` gains a bias if it
/// had none; `bn`'s tensors (and a `num_batches_tracked` entry) leave the map.
pub fn fold_bn(weights: &mut TensorMap, layer: &str, bn: &str, eps: f64) -> Result<(), TransformError> {
    let weight_name = format!("{layer}.weight");
    let w = weights.get(&weight_name).ok_or_else(|| TransformError::Missing { name: weight_name.clone() })?;
    let Some(&channels) = w.shape.first() else {
        return Err(TransformError::Shape { name: weight_name, expected: "[out, ...]".into(), found: w.shape.clone() });
    };
    let get = |name: String| -> Result<Vec<f64>, TransformError> {
        let t = weights.get(&name).ok_or_else(|| TransformError::Missing { name: name.clone() })?;
        if t.shape != [channels] {
            return Err(TransformError::Shape { name, expected: format!("[{channels}]"), found: t.shape.clone() });
        }
        Ok(t.data.iter().map(|&x| f64::from(x)).collect())
    };
    let bias_name = format!("{layer}.bias");
    let bias = if weights.contains_key(&bias_name) { get(bias_name.clone())? } else { vec![0.0; channels] };
    let gamma = get(format!("{bn}.weight"))?;
    let beta = get(format!("{bn}.bias"))?;
    let mean = get(format!("{bn}.running_mean"))?;
    let var = get(format!("{bn}.running_var"))?;

    let scale: Vec<f64> = (0..channels).map(|c| gamma[c] / (var[c] + eps).sqrt()).collect();
    let new_b: Vec<f32> = (0..channels).map(|c| ((bias[c] - mean[c]) * scale[c] + beta[c]) as f32).collect();
    // In place, one output channel's run at a time: the weights are most of a model's bytes
    // (ResNet-50's 100 MB), so neither a second copy nor a division per element.
    if let Some(w) = weights.get_mut(&weight_name) {
        let per_channel = w.data.len().checked_div(channels).unwrap_or(0).max(1);
        for (run, &s) in w.data.chunks_exact_mut(per_channel).zip(&scale) {
            for x in run {
                *x = (f64::from(*x) * s) as f32;
            }
        }
    }
    weights.insert(bias_name, Tensor { shape: vec![channels], data: new_b });
    for suffix in ["weight", "bias", "running_mean", "running_var"] {
        weights.remove(&format!("{bn}.{suffix}"));
    }
    weights.remove(&format!("{bn}{NUM_BATCHES_TRACKED}"));
    Ok(())
}

/// A weight of logical shape `tensor.shape` stored in `layout` (zero padding included), as a
/// flat tensor of [`WeightLayout::stored_len`] elements; a plain layout copies it unchanged.
pub fn pack(tensor: &Tensor, layout: WeightLayout, groups: usize) -> Tensor {
    if layout.is_plain() {
        return tensor.clone();
    }
    let dims = &tensor.shape;
    let mut data = vec![0.0; layout.stored_len(dims, groups)];
    for_each_pair(dims, layout, groups, |stored, flat, taps| {
        let stride = layout.tap_stride();
        for t in 0..taps {
            data[stored + t * stride] = tensor.data[flat + t];
        }
    });
    Tensor { shape: vec![data.len()], data }
}

/// The inverse of [`pack`]: the logical `[O, I, KH, KW]` (or `[O, I]`) tensor of `dims`.
pub fn unpack(stored: &[f32], dims: &[usize], layout: WeightLayout, groups: usize) -> Tensor {
    if layout.is_plain() {
        return Tensor { shape: dims.to_vec(), data: stored.to_vec() };
    }
    let mut data = vec![0.0; dims.iter().product()];
    for_each_pair(dims, layout, groups, |at, flat, taps| {
        let stride = layout.tap_stride();
        for t in 0..taps {
            data[flat + t] = stored[at + t * stride];
        }
    });
    Tensor { shape: dims.to_vec(), data }
}

/// Calls `f(stored offset of tap 0, row-major offset of tap 0, taps)` for every `(o, i)` pair
/// of a weight of `dims`: its `KH * KW` taps lie `tap_stride` apart when stored and next to
/// each other in the checkpoint's layout.
fn for_each_pair(dims: &[usize], layout: WeightLayout, groups: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (o, i, taps) = match dims {
        [o, i, kh, kw] => (*o, *i, kh * kw),
        [o, i] => (*o, *i, 1),
        _ => (dims.iter().product(), 1, 1),
    };
    // Every layout's offset of a pair is a function of `o` plus a function of `i`
    // (`WeightLayout::offset`): two tables instead of one offset computation per pair.
    let zero = layout.offset(dims, groups, [0, 0, 0, 0]);
    let rows: Vec<usize> = (0..o).map(|a| layout.offset(dims, groups, [a, 0, 0, 0])).collect();
    let cols: Vec<usize> = (0..i).map(|b| layout.offset(dims, groups, [0, b, 0, 0]) - zero).collect();
    for (a, &row) in rows.iter().enumerate() {
        for (b, &col) in cols.iter().enumerate() {
            f(row + col, (a * i + b) * taps, taps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor { shape: shape.to_vec(), data: (0..n).map(|i| i as f32 + 1.0).collect() }
    }

    #[test]
    fn packing_round_trips_and_pads_with_zeros() {
        for (layout, dims, groups) in [
            (WeightLayout::OIhw16i16o, vec![20, 3, 3, 3], 1),
            (WeightLayout::OI16i16o, vec![17, 33], 1),
            (WeightLayout::GOIhw16i16o, vec![64, 16, 3, 3], 2),
            (WeightLayout::Goihw16g, vec![40, 1, 3, 3], 20),
        ] {
            let w = ramp(&dims);
            let packed = pack(&w, layout, groups);
            assert_eq!(packed.data.len(), layout.stored_len(&dims, groups), "{}", layout.name());
            let nonzero = packed.data.iter().filter(|&&x| x != 0.0).count();
            assert_eq!(nonzero, w.data.len(), "every element lands in its own slot: {}", layout.name());
            assert_eq!(unpack(&packed.data, &dims, layout, groups), w, "{}", layout.name());
        }
    }

    #[test]
    fn oihw16i16o_puts_output_channels_innermost() {
        let dims = [32, 16, 1, 1];
        let l = WeightLayout::OIhw16i16o;
        assert_eq!(l.offset(&dims, 1, [0, 0, 0, 0]), 0);
        assert_eq!(l.offset(&dims, 1, [1, 0, 0, 0]), 1);
        assert_eq!(l.offset(&dims, 1, [0, 1, 0, 0]), 16);
        assert_eq!(l.offset(&dims, 1, [16, 0, 0, 0]), 256);
    }

    #[test]
    fn folding_scales_weights_and_moves_the_shift_into_the_bias() {
        let mut w = TensorMap::new();
        w.insert("c.weight".into(), Tensor { shape: vec![2, 1, 1, 1], data: vec![1.0, 2.0] });
        w.insert("b.weight".into(), Tensor { shape: vec![2], data: vec![2.0, 1.0] });
        w.insert("b.bias".into(), Tensor { shape: vec![2], data: vec![0.5, 0.0] });
        w.insert("b.running_mean".into(), Tensor { shape: vec![2], data: vec![1.0, -1.0] });
        w.insert("b.running_var".into(), Tensor { shape: vec![2], data: vec![3.0, 0.0] });
        fold_bn(&mut w, "c", "b", 1.0).unwrap();
        assert_eq!(w["c.weight"].data, vec![1.0, 2.0]);
        assert_eq!(w["c.bias"].data, vec![-0.5, 1.0]);
        assert!(!w.contains_key("b.weight"));
        let e = fold_bn(&mut w, "c", "b", 1.0).unwrap_err();
        assert_eq!(e.to_string(), "weight `b.weight` is missing");
    }
}
