//! One node at a time: the semantics of every op, on logical f64 tensors.
//!
//! Both ways of running a graph (logical, [`crate::run`], and physical, [`crate::run_plan`])
//! gather a node's operands as logical tensors and call [`eval`]; they differ only in where
//! values live. Shapes and attributes were checked before anything runs, so the arithmetic
//! here trusts them.

use crate::buf::Buf;
use crate::error::InterpError;
use crate::loss;
use crate::ops::act::{
    activation_backward, activation_forward, activation_grad_from_output, channel_sums, dropout_mask, ncs,
    prelu_backward, prelu_forward, softmax_backward, softmax_forward,
};
use crate::ops::conv::{
    conv_backward_data, conv_backward_weight, conv_forward, fc_backward_data, fc_backward_weight, fc_forward,
};
use crate::ops::norm::{
    batch_stats, bn_affine_backward_data, bn_apply, bn_gamma_grad, bn_running_update, bn_train_backward_data,
    lrn_backward, lrn_forward,
};
use crate::ops::pool::{Bins, pool_argmax, pool_backward_avg, pool_backward_l2, pool_backward_max, pool_forward};
use crate::update::update;
use cnnc_ir::facts::param_name;
use cnnc_ir::{Conv, Epilogue, FusedBase, Gemm, Node, Op, PoolGeometry, PoolKind, SavedSide, TrainOp, Window};
use std::borrow::Cow;

/// What running a node gives.
pub(crate) enum Output {
    Value(Buf),
    /// An effect's new values for parameters, buffers or optimiser state, by full name.
    Writes(Vec<(String, Buf)>),
}

/// The parameters a node reads, by full name, as logical tensors.
pub(crate) trait Params {
    fn get(&self, name: &str) -> Result<Cow<'_, Buf>, InterpError>;

    /// Optimiser state, which starts at zero: absent before the first step.
    fn get_or_zeros(&self, name: &str, dims: &[usize]) -> Result<Buf, InterpError>;
}

/// Run-time arguments of one evaluation.
pub(crate) struct Ctx {
    pub batch: usize,
    pub seed: u64,
    pub step: u64,
    pub lr: f64,
}

/// `[batch] ++ dims`.
pub(crate) fn full_shape(batch: usize, dims: &[usize]) -> Vec<usize> {
    let mut shape = Vec::with_capacity(dims.len() + 1);
    shape.push(batch);
    shape.extend_from_slice(dims);
    shape
}

/// Runs `node` on its operands `x` (batched ones `[N] ++ shape`, whole-batch ones as they are).
pub(crate) fn eval(node: &Node, x: &[&Buf], params: &impl Params, cx: &Ctx) -> Result<Output, InterpError> {
    let out_shape = full_shape(cx.batch, &node.shape.0);
    let param = |suffix: &str| params.get(&param_name(&node.name, suffix));
    let value = match &node.op {
        Op::Input => unreachable!("sources are read from the caller's inputs"),
        Op::Conv(conv) => {
            let bias = if conv.bias { Some(param("bias")?) } else { None };
            conv_forward(conv, x[0], &*param("weight")?, bias.as_deref(), &out_shape)
        }
        Op::Pool { kind, window } => pool(*kind, &PoolGeometry::Window(*window), x[0], &out_shape),
        Op::GlobalPool(kind) => pool(*kind, &PoolGeometry::Global, x[0], &out_shape),
        Op::AdaptivePool { kind, output } => pool(*kind, &PoolGeometry::Adaptive(*output), x[0], &out_shape),
        Op::Spp { kind, levels } => pool(*kind, &PoolGeometry::Pyramid(levels.clone()), x[0], &out_shape),
        Op::Fc(fc) => {
            let bias = if fc.bias { Some(param("bias")?) } else { None };
            fc_forward(x[0], &*param("weight")?, bias.as_deref())
        }
        Op::Flatten => Buf { shape: out_shape, data: x[0].data.clone() },
        Op::Activation(a) => activation_forward(*a, x[0]),
        Op::Prelu => prelu_forward(x[0], &*param("weight")?),
        Op::Softmax => softmax_forward(x[0]),
        Op::BatchNorm(bn) => {
            let (rm, rv) = (param("running_mean")?, param("running_var")?);
            bn_apply(x[0], bn.eps, &rm.data, &rv.data, &*param("weight")?, &*param("bias")?)
        }
        Op::Lrn(lrn) => lrn_forward(lrn, x[0]),
        // Inverted dropout is the identity outside training graphs (which make its mask explicit).
        Op::Dropout { .. } | Op::Reorder(_) => x[0].clone(),
        Op::Concat | Op::ConcatInPlace => concat(x, &out_shape),
        Op::Add => {
            let mut y = x[0].clone();
            for other in &x[1..] {
                add_into(&mut y, other);
            }
            y
        }
        Op::Gemm(gemm) => base_forward(&FusedBase::Gemm(*gemm), x[0], &param, &out_shape)?,
        Op::Fused { base, epilogue } => fused(base, epilogue, x, &param, &out_shape)?,
        Op::Train(t) => return train(node, t, x, params, cx, &out_shape),
    };
    Ok(Output::Value(value))
}

fn train(
    node: &Node,
    op: &TrainOp,
    x: &[&Buf],
    params: &impl Params,
    cx: &Ctx,
    out_shape: &[usize],
) -> Result<Output, InterpError> {
    let param = |suffix: &str| params.get(&param_name(&node.name, suffix));
    let value = match op {
        TrainOp::Labels { .. } => unreachable!("sources are read from the caller's inputs"),
        TrainOp::Loss(l) => {
            let (value, _) = loss::evaluate(l, x[0], x[1]);
            Buf { shape: Vec::new(), data: vec![value] }
        }
        TrainOp::LossGrad(l) => loss::evaluate(l, x[0], x[1]).1,
        TrainOp::BnStats => {
            let (mean, var) = batch_stats(x[0]);
            let c = mean.len();
            Buf { shape: vec![2, c], data: [mean, var].concat() }
        }
        TrainOp::BnNormalize(bn) => {
            let (mean, var) = stats(x[1]);
            bn_apply(x[0], bn.eps, mean, var, &*param("weight")?, &*param("bias")?)
        }
        TrainOp::BnRunningUpdate { bn, spatial } => {
            let (mean, var) = stats(x[0]);
            let (rm, rv) = (param("running_mean")?, param("running_var")?);
            let (new_mean, new_var) = bn_running_update(bn, &rm, &rv, mean, var, cx.batch * spatial);
            let writes = vec![
                (param_name(&node.name, "running_mean"), new_mean),
                (param_name(&node.name, "running_var"), new_var),
            ];
            return Ok(Output::Writes(writes));
        }
        TrainOp::DropoutMask { p } => {
            Buf { shape: out_shape.to_vec(), data: dropout_mask(cx.seed, &node.name, cx.step, x[0].len(), *p) }
        }
        TrainOp::Mul => {
            let data = x[0].data.iter().zip(&x[1].data).map(|(a, b)| a * b).collect();
            Buf { shape: out_shape.to_vec(), data }
        }
        TrainOp::PoolArgmax(geometry) => {
            let mut y = Buf::zeros(out_shape);
            for_levels(geometry, x[0], |bins, offset| pool_argmax(x[0], bins, &mut y, offset));
            y
        }
        TrainOp::PoolBackward { kind, geometry, input } => {
            let mut gx = Buf::zeros(&full_shape(cx.batch, input));
            let plane_shape = Buf { shape: gx.shape.clone(), data: Vec::new() };
            for_levels(geometry, &plane_shape, |bins, offset| match kind {
                PoolKind::Max => pool_backward_max(x[1], x[0], bins[0].len() * bins[1].len(), offset, &mut gx),
                PoolKind::Avg { include_pad } => pool_backward_avg(*include_pad, bins, x[0], offset, &mut gx),
                PoolKind::L2 => pool_backward_l2(x[0], x[1], bins, x[2], offset, &mut gx),
            });
            gx
        }
        TrainOp::ConvBackwardData { conv, input, mask } => {
            let mut gx = conv_backward_data(conv, x[0], &*param("weight")?, &full_shape(cx.batch, input));
            if let Some(a) = mask {
                for (g, &y) in gx.data.iter_mut().zip(&x[1].data) {
                    *g *= activation_grad_from_output(*a, y)
                        .expect("masks are activations differentiable from their output");
                }
            }
            gx
        }
        TrainOp::ConvBackwardWeight(conv) => conv_backward_weight(conv, x[0], x[1], &node.shape.0),
        TrainOp::GemmBackwardData { gemm, input } => {
            let weight = param("weight")?;
            if x[0].shape.len() == 4 {
                let conv = gemm_as_conv(gemm);
                let (_, h, w) = (x[0].shape[1], x[0].shape[2], x[0].shape[3]);
                conv_backward_data(&conv, x[0], &weight, &[cx.batch, *input, h, w])
            } else {
                fc_backward_data(x[0], &as_matrix(&weight))
            }
        }
        TrainOp::GemmBackwardWeight(gemm) => {
            if x[0].shape.len() == 4 {
                conv_backward_weight(&gemm_as_conv(gemm), x[0], x[1], &node.shape.0)
            } else {
                fc_backward_weight(x[0], x[1])
            }
        }
        TrainOp::BiasGrad => channel_sums(x[0]),
        TrainOp::ActivationBackward { activation, from } => match from {
            SavedSide::Operand => activation_backward(*activation, x[0], x[1]),
            SavedSide::Output => {
                let data = x[0]
                    .data
                    .iter()
                    .zip(&x[1].data)
                    .map(|(&y, &g)| {
                        g * activation_grad_from_output(*activation, y)
                            .expect("the transform reads the output only where the derivative allows it")
                    })
                    .collect();
                Buf { shape: out_shape.to_vec(), data }
            }
        },
        TrainOp::PreluBackwardData => prelu_backward(x[0], &*param("weight")?, x[1]).0,
        TrainOp::PreluBackwardWeight => {
            let c = node.shape.0[0];
            let ones = Buf { shape: vec![c], data: vec![1.0; c] };
            prelu_backward(x[0], &ones, x[1]).1
        }
        TrainOp::SoftmaxBackward => softmax_backward(x[0], x[1]),
        TrainOp::BnBackwardData { bn, batch_stats: true } => {
            let (mean, var) = stats(x[1]);
            bn_train_backward_data(x[0], bn.eps, mean, var, &*param("weight")?, x[2])
        }
        TrainOp::BnBackwardData { bn, batch_stats: false } => {
            bn_affine_backward_data(bn.eps, &param("running_var")?.data, &*param("weight")?, x[0])
        }
        TrainOp::BnGammaGrad { bn, batch_stats: true } => {
            let (mean, var) = stats(x[1]);
            bn_gamma_grad(x[0], bn.eps, mean, var, x[2])
        }
        TrainOp::BnGammaGrad { bn, batch_stats: false } => {
            let (rm, rv) = (param("running_mean")?, param("running_var")?);
            bn_gamma_grad(x[0], bn.eps, &rm.data, &rv.data, x[1])
        }
        TrainOp::LrnBackward(lrn) => lrn_backward(lrn, x[0], x[1]),
        TrainOp::Reshape(_) => Buf { shape: out_shape.to_vec(), data: x[0].data.clone() },
        TrainOp::Slice { start, len } => slice(x[0], *start, *len, out_shape),
        TrainOp::Update(optimizer) => {
            let mut p = param("")?.into_owned();
            let state_names: Vec<String> = optimizer.state().iter().map(|s| param_name(&node.name, s)).collect();
            let mut state: Vec<Buf> = Vec::with_capacity(state_names.len());
            for name in &state_names {
                state.push(params.get_or_zeros(name, &p.shape)?);
            }
            {
                let mut slices: Vec<&mut [f64]> = state.iter_mut().map(|b| b.data.as_mut_slice()).collect();
                update(optimizer, &mut p.data, &x[0].data, &mut slices, cx.lr, cx.step);
            }
            let mut writes = vec![(node.name.clone(), p)];
            writes.extend(state_names.into_iter().zip(state));
            return Ok(Output::Writes(writes));
        }
    };
    Ok(Output::Value(value))
}

/// Rows 0 and 1 of batch-norm statistics: the mean and the variance.
fn stats(s: &Buf) -> (&[f64], &[f64]) {
    let c = s.shape[1];
    (&s.data[..c], &s.data[c..2 * c])
}

/// Calls `f(bins, offset)` for each level of a pooling geometry over `[N, C, H, W]` input
/// `x` (only its shape is read): one level at offset 0, or a pyramid's levels one after
/// another.
fn for_levels(geometry: &PoolGeometry, x: &Buf, mut f: impl FnMut(&[Bins; 2], usize)) {
    let (c, h, w) = (x.shape[1], x.shape[2], x.shape[3]);
    match geometry {
        PoolGeometry::Window(window) => {
            let out = cnnc_ir::shape::window_output(window, [h, w], &cnnc_ir::Shape(vec![c, h, w]), &mut Vec::new())
                .expect("shapes were checked when the graph was built");
            f(&Bins::window(window, [h, w], out), 0);
        }
        PoolGeometry::Global => f(&[Bins::adaptive(1, h), Bins::adaptive(1, w)], 0),
        PoolGeometry::Adaptive(output) => f(&[Bins::adaptive(output[0], h), Bins::adaptive(output[1], w)], 0),
        PoolGeometry::Pyramid(levels) => {
            let mut offset = 0;
            for &l in levels {
                f(&[Bins::adaptive(l, h), Bins::adaptive(l, w)], offset);
                offset += c * l * l;
            }
        }
    }
}

fn pool(kind: PoolKind, geometry: &PoolGeometry, x: &Buf, out_shape: &[usize]) -> Buf {
    let mut y = Buf::zeros(out_shape);
    for_levels(geometry, x, |bins, offset| pool_forward(kind, x, bins, &mut y, offset));
    y
}

fn add_into(y: &mut Buf, other: &Buf) {
    for (a, b) in y.data.iter_mut().zip(&other.data) {
        *a += b;
    }
}

/// Concatenation along axis 1: per sample, the operands' blocks one after another.
fn concat(x: &[&Buf], out_shape: &[usize]) -> Buf {
    let n = out_shape[0];
    let mut data = Vec::with_capacity(out_shape.iter().product());
    for b in 0..n {
        for input in x {
            let per = input.len() / n;
            data.extend_from_slice(&input.data[b * per..][..per]);
        }
    }
    Buf { shape: out_shape.to_vec(), data }
}

/// Channels `start .. start + len` of `x` (features, for `[N, F]`).
fn slice(x: &Buf, start: usize, len: usize, out_shape: &[usize]) -> Buf {
    let (n, c, s) = ncs(&x.shape);
    let mut data = Vec::with_capacity(n * len * s);
    for b in 0..n {
        data.extend_from_slice(&x.data[(b * c + start) * s..][..len * s]);
    }
    Buf { shape: out_shape.to_vec(), data }
}

/// A matrix product on a map is a 1x1 convolution (stride 1, no padding, one group) over the
/// same `[O, C, 1, 1]` weight; on a vector it is an fc layer.
fn gemm_as_conv(gemm: &Gemm) -> Conv {
    let window = Window { kernel: [1, 1], stride: [1, 1], pad: [0, 0], dilation: [1, 1], ceil_mode: false };
    Conv { out_channels: gemm.out, window, groups: 1, bias: gemm.bias }
}

/// A `[O, C, 1, 1]` weight read as the `[O, C]` matrix it is.
fn as_matrix(w: &Buf) -> Cow<'_, Buf> {
    if w.shape.len() == 2 {
        Cow::Borrowed(w)
    } else {
        Cow::Owned(Buf { shape: vec![w.shape[0], w.shape[1..].iter().product()], data: w.data.clone() })
    }
}

/// The base of a fused node (or a plain `gemm`), bias included.
fn base_forward<'p>(
    base: &FusedBase,
    x: &Buf,
    param: &impl Fn(&str) -> Result<Cow<'p, Buf>, InterpError>,
    out_shape: &[usize],
) -> Result<Buf, InterpError> {
    let (conv, has_bias) = match base {
        FusedBase::Conv(conv) => (*conv, conv.bias),
        FusedBase::Gemm(gemm) => (gemm_as_conv(gemm), gemm.bias),
    };
    let weight = param("weight")?;
    let bias = if has_bias { Some(param("bias")?) } else { None };
    Ok(match base {
        FusedBase::Gemm(_) if x.shape.len() == 2 => fc_forward(x, &as_matrix(&weight), bias.as_deref()),
        FusedBase::Conv(_) | FusedBase::Gemm(_) => conv_forward(&conv, x, &weight, bias.as_deref(), out_shape),
    })
}

/// A fused node: the base, `+ residual`, then the activation, all in f64 and stored once.
fn fused<'p>(
    base: &FusedBase,
    epilogue: &Epilogue,
    x: &[&Buf],
    param: &impl Fn(&str) -> Result<Cow<'p, Buf>, InterpError>,
    out_shape: &[usize],
) -> Result<Buf, InterpError> {
    let mut y = base_forward(base, x[0], param, out_shape)?;
    if epilogue.residual {
        add_into(&mut y, x[1]);
    }
    Ok(match epilogue.activation {
        Some(a) => activation_forward(a, &y),
        None => y,
    })
}
