//! What the forward-convolution tuning examples share: the layers they know by name and one
//! layer's buffers (input and output in one arena on 64-byte lines, weights, bias).

use cnnc_kernels::conv::{self, ConvIo, ConvShape};
use cnnc_kernels::lines::Lines;
use cnnc_kernels::view::{Layout, View};

/// The layer called `name`, at batch 1; ResNet-50's 3x3 64 -> 64 at 56 x 56 otherwise.
pub fn named(name: &str) -> ConvShape {
    match name {
        // ResNet-50's 3x3 layers of layer2 and layer3.
        "128" => ConvShape::simple(1, 128, [28, 28], 128, 3, 1, 1),
        "256" => ConvShape::simple(1, 256, [14, 14], 256, 3, 1, 1),
        "1x1" => ConvShape::simple(1, 256, [56, 56], 64, 1, 1, 0),
        // GoogLeNet's inception 4a 3x3 (208 channels, 13 blocks) and 4b 1x1 (112, 7 blocks).
        "g208" => ConvShape::simple(1, 96, [14, 14], 208, 3, 1, 1),
        "g112" => ConvShape::simple(1, 512, [14, 14], 112, 1, 1, 0),
        // ResNet-50's layer2.0.conv2 (3x3/2) and a bottleneck's first 1x1 at layer3.
        "s2" => ConvShape::simple(1, 128, [56, 56], 128, 3, 2, 1),
        "r1024" => ConvShape::simple(1, 1024, [14, 14], 256, 1, 1, 0),
        // ResNet-50's layer2.0.downsample (1x1/2).
        "d2" => ConvShape::simple(1, 256, [56, 56], 512, 1, 2, 0),
        // ResNet-50's layer4 3x3 at 7 x 7.
        "512" => ConvShape::simple(1, 512, [7, 7], 512, 3, 1, 1),
        // GoogLeNet's inception 3a and 3b 3x3.
        "g96" => ConvShape::simple(1, 96, [28, 28], 128, 3, 1, 1),
        "g128" => ConvShape::simple(1, 128, [28, 28], 192, 3, 1, 1),
        // VGG-16's 3x3 layers at 56, 28 and 14 pixels.
        "v256" => ConvShape::simple(1, 256, [56, 56], 256, 3, 1, 1),
        "v512b" => ConvShape::simple(1, 512, [28, 28], 512, 3, 1, 1),
        "v512" => ConvShape::simple(1, 512, [14, 14], 512, 3, 1, 1),
        _ => ConvShape::simple(1, 64, [56, 56], 64, 3, 1, 1),
    }
}

/// A layer's buffers: `x` and `y` are views of `arena` (filled with 0.5), weights 0.01 and
/// bias 0.1 everywhere.
pub struct Buffers {
    pub arena: Lines,
    pub weights: Lines,
    pub bias: Lines,
    pub x: View,
    pub y: View,
}

impl Buffers {
    pub fn new(shape: &ConvShape) -> Buffers {
        let [oh, ow] = shape.out_hw().unwrap();
        let x = View::dense(0, shape.n, shape.ic, shape.ih, shape.iw, Layout::NChw16c);
        let y = View::dense(x.end().unwrap(), shape.n, shape.oc, oh, ow, Layout::NChw16c);
        Buffers {
            arena: Lines::filled(y.end().unwrap(), 0.5),
            weights: Lines::filled(conv::packed_weight_len(shape).unwrap(), 0.01),
            bias: Lines::filled(shape.oc, 0.1),
            x,
            y,
        }
    }
}

/// The forward pass's operands on `x`, `y`, `weights` and `bias`, without a residual.
pub fn io<'a>(x: View, y: View, weights: &'a Lines, bias: &'a Lines) -> ConvIo<'a> {
    ConvIo { x, y, residual: None, weights, bias: Some(bias), scale: None, shift: None }
}
