//! Pictures of a network for `cnnc viz` and the REPL's `:viz`: a convolution's kernels as a grid
//! of tiles (as AlexNet's paper shows its first layer's filters) and a layer's feature maps,
//! encoded as PNG through the `png` crate and written atomically.
//!
//! Each tile is scaled on its own to the full grey (or colour) range, min to black and max to
//! white, as such pictures usually are: what matters is a kernel's pattern, not its norm. Tiles
//! are enlarged to at least [`MIN_TILE`] pixels (nearest neighbour) so a 3x3 kernel is visible,
//! and sit on a mid-grey background with a [`GAP`]-pixel border.

use crate::execute::{Tensor, TensorMap};
use cnnc_diag::did_you_mean;
use cnnc_ir::{Graph, Op};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The smallest side of a tile on screen, in pixels.
pub const MIN_TILE: usize = 24;
/// The border around and between tiles, in pixels.
pub const GAP: usize = 2;
/// The most kernels (or maps) a picture shows; the rest are left out and said so.
pub const MAX_TILES: usize = 1024;
/// The largest picture side, in pixels; tiles shrink their scale to stay within it.
pub const MAX_SIDE: usize = 8192;
const BACKGROUND: u8 = 128;

/// A picture: 8-bit grey or RGB pixels, row by row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    pub pixels: Vec<u8>,
    /// How many tiles it shows, and how many there were (more than [`MAX_TILES`] are cut).
    pub tiles: usize,
    pub of: usize,
}

/// Why a picture could not be made.
#[derive(Debug, Error)]
pub enum VizError {
    #[error("model `{model}` has no layer `{layer}`{}", match .suggestion { Some(s) => format!(" (did you mean `{s}`?)"), None => String::new() })]
    NoLayer { model: String, layer: String, suggestion: Option<String> },
    #[error("layer `{layer}` is a `{op}` layer, not a convolution: only convolutions have kernels to draw")]
    NotConv { layer: String, op: String },
    #[error("the weights have no tensor `{name}`")]
    MissingWeight { name: String },
    #[error("layer `{layer}` outputs {shape:?}, not feature maps [C, H, W]")]
    NotMaps { layer: String, shape: Vec<usize> },
    #[error("the run kept no output of layer `{layer}` (the optimised graph computes it inside another node)")]
    NoOutput { layer: String },
    #[error("tensor of shape {shape:?} holds {len} values")]
    BadTensor { shape: Vec<usize>, len: usize },
    #[error("cannot encode the PNG: {0}")]
    Encode(String),
    #[error("cannot write `{}`: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

impl VizError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            VizError::NotConv { .. } => Some("`:summary` lists the layers; pick one whose op is `conv`".into()),
            VizError::NotMaps { .. } => Some("pick a convolution, pooling or activation layer before `flatten`".into()),
            VizError::NoLayer { suggestion: None, .. } => {
                Some("`:summary` (or `cnnc summary`) lists the layers".into())
            }
            VizError::NoLayer { .. }
            | VizError::MissingWeight { .. }
            | VizError::NoOutput { .. }
            | VizError::BadTensor { .. }
            | VizError::Encode(_)
            | VizError::Write { .. } => None,
        }
    }
}

/// The weight tensor `[O, I, kh, kw]` of convolution `layer`, from `params`.
pub fn conv_weight<'p>(graph: &Graph, params: &'p TensorMap, layer: &str) -> Result<&'p Tensor, VizError> {
    let node = find_layer(graph, layer)?;
    let op = &graph[node].op;
    if !matches!(op, Op::Conv(_)) {
        return Err(VizError::NotConv { layer: layer.into(), op: op.keyword().into() });
    }
    let name = format!("{layer}.weight");
    params.get(&name).ok_or(VizError::MissingWeight { name })
}

/// The node named `layer`, or an error suggesting a close name.
pub fn find_layer(graph: &Graph, layer: &str) -> Result<cnnc_ir::NodeId, VizError> {
    graph.iter().find(|(_, n)| n.name == layer).map(|(id, _)| id).ok_or_else(|| VizError::NoLayer {
        model: graph.name.clone(),
        layer: layer.into(),
        suggestion: did_you_mean(layer, graph.iter().map(|(_, n)| n.name.as_str())).map(str::to_string),
    })
}

/// A convolution's kernels: one RGB tile per output channel when the layer sees three input
/// channels (a first layer on colour images), one grey tile per output channel when it sees
/// one, and otherwise one row per output channel with a grey tile for each input channel.
pub fn filters(weight: &Tensor) -> Result<Picture, VizError> {
    let &[outs, ins, kh, kw] = weight.shape.as_slice() else {
        return Err(VizError::BadTensor { shape: weight.shape.clone(), len: weight.data.len() });
    };
    check_len(weight)?;
    let kernel = ins * kh * kw;
    if ins == 3 {
        let tiles: Vec<Tile> = (0..outs)
            .map(|o| {
                let w = &weight.data[o * kernel..(o + 1) * kernel];
                // Planes to interleaved RGB, scaled together so the colours keep their balance.
                let rgb: Vec<f32> = (0..kh * kw).flat_map(|p| (0..3).map(move |c| w[c * kh * kw + p])).collect();
                Tile { h: kh, w: kw, values: rgb }
            })
            .collect();
        return Ok(grid(&tiles, 3, None));
    }
    let per_row = if ins == 1 { None } else { Some(ins) };
    let tiles: Vec<Tile> = (0..outs * ins)
        .map(|t| Tile { h: kh, w: kw, values: weight.data[t * kh * kw..(t + 1) * kh * kw].to_vec() })
        .collect();
    Ok(grid(&tiles, 1, per_row))
}

/// Feature maps `[C, H, W]` (one image's), one grey tile per channel.
pub fn maps(layer: &str, maps: &Tensor) -> Result<Picture, VizError> {
    let &[channels, h, w] = maps.shape.as_slice() else {
        return Err(VizError::NotMaps { layer: layer.into(), shape: maps.shape.clone() });
    };
    check_len(maps)?;
    let tiles: Vec<Tile> =
        (0..channels).map(|c| Tile { h, w, values: maps.data[c * h * w..(c + 1) * h * w].to_vec() }).collect();
    Ok(grid(&tiles, 1, None))
}

/// Image `image` of a batch's dumped output of `layer` (`[N, ...]`), without the batch axis.
pub fn image_of(layer: &str, batch: &Tensor, image: usize) -> Result<Tensor, VizError> {
    check_len(batch)?;
    let Some((&n, shape)) = batch.shape.split_first().filter(|(n, _)| image < **n) else {
        return Err(VizError::NoOutput { layer: layer.into() });
    };
    let per = batch.data.len() / n;
    Ok(Tensor { shape: shape.to_vec(), data: batch.data[image * per..(image + 1) * per].to_vec() })
}

/// The picture as PNG bytes.
pub fn encode_png(picture: &Picture) -> Result<Vec<u8>, VizError> {
    let mut bytes = Vec::new();
    let width = u32::try_from(picture.width).map_err(|e| VizError::Encode(e.to_string()))?;
    let height = u32::try_from(picture.height).map_err(|e| VizError::Encode(e.to_string()))?;
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(if picture.channels == 3 { png::ColorType::Rgb } else { png::ColorType::Grayscale });
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| VizError::Encode(e.to_string()))?;
    writer.write_image_data(&picture.pixels).map_err(|e| VizError::Encode(e.to_string()))?;
    writer.finish().map_err(|e| VizError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// Writes the picture as a PNG file, atomically.
pub fn write_png(path: &Path, picture: &Picture) -> Result<(), VizError> {
    let bytes = encode_png(picture)?;
    cnnc_runtime::write_atomic(path, |w| w.write_all(&bytes))
        .map_err(|source| VizError::Write { path: path.to_path_buf(), source })
}

fn check_len(t: &Tensor) -> Result<(), VizError> {
    // An empty axis would leave a tile with nothing to sample from.
    let want = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d).filter(|_| d > 0));
    if want == Some(t.data.len()) {
        Ok(())
    } else {
        Err(VizError::BadTensor { shape: t.shape.clone(), len: t.data.len() })
    }
}

/// One tile's values, row-major, `channels` interleaved values a pixel.
struct Tile {
    h: usize,
    w: usize,
    values: Vec<f32>,
}

/// Lays the tiles out on a grid: `per_row` tiles a row when given, else a near-square grid.
fn grid(all: &[Tile], channels: usize, per_row: Option<usize>) -> Picture {
    let (th, tw) = (all.first().map_or(1, |t| t.h).max(1), all.first().map_or(1, |t| t.w).max(1));
    let per_row = per_row.unwrap_or_else(|| (all.len() as f64).sqrt().ceil() as usize).clamp(1, MAX_TILES);
    let shown = all.len().min(MAX_TILES - MAX_TILES % per_row);
    let tiles = &all[..shown];
    let cols = per_row.min(tiles.len().max(1));
    let rows = tiles.len().div_ceil(cols).max(1);
    // Enlarged to MIN_TILE pixels, but never past MAX_SIDE as a whole.
    let fit = |n: usize, t: usize| (MAX_SIDE.saturating_sub(GAP * (n + 1)) / (n * t)).max(1);
    let scale = MIN_TILE.div_ceil(th.min(tw)).max(1).min(fit(cols, tw)).min(fit(rows, th));
    let (cell_h, cell_w) = (th * scale, tw * scale);
    let width = cols * cell_w + (cols + 1) * GAP;
    let height = rows * cell_h + (rows + 1) * GAP;
    let mut pixels = vec![BACKGROUND; width * height * channels];
    for (i, tile) in tiles.iter().enumerate() {
        let (lo, hi) = tile
            .values
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let range = if hi > lo { hi - lo } else { 1.0 };
        let (top, left) = (GAP + (i / cols) * (cell_h + GAP), GAP + (i % cols) * (cell_w + GAP));
        for y in 0..cell_h {
            for x in 0..cell_w {
                let src = ((y / scale) * tile.w + x / scale) * channels;
                let dst = ((top + y) * width + left + x) * channels;
                for c in 0..channels {
                    let v = tile.values[src + c];
                    let level = if v.is_finite() && hi > lo { (v - lo) / range * 255.0 } else { 0.0 };
                    pixels[dst + c] = level.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    Picture { width, height, channels, pixels, tiles: shown, of: all.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor { shape: shape.to_vec(), data: (0..n).map(|i| (i % 7) as f32 - 3.0).collect() }
    }

    #[test]
    fn rgb_filters_make_a_square_colour_grid() {
        let p = filters(&tensor(&[16, 3, 3, 3])).expect("picture");
        assert_eq!((p.channels, p.tiles), (3, 16));
        // 4x4 tiles of 3x3 kernels enlarged 8 times, 2-pixel gaps.
        assert_eq!((p.width, p.height), (4 * 24 + 5 * GAP, 4 * 24 + 5 * GAP));
        assert_eq!(p.pixels.len(), p.width * p.height * 3);
        assert!(p.pixels.contains(&0) && p.pixels.contains(&255));
    }

    #[test]
    fn other_filters_have_a_row_per_output_channel() {
        let p = filters(&tensor(&[4, 2, 5, 5])).expect("picture");
        assert_eq!(p.channels, 1);
        // Two columns (the input channels), four rows; 5x5 enlarged 5 times.
        assert_eq!((p.width, p.height), (2 * 25 + 3 * GAP, 4 * 25 + 5 * GAP));
    }

    #[test]
    fn maps_need_three_dims_and_a_right_length() {
        let p = maps("c1", &tensor(&[6, 28, 28])).expect("picture");
        assert_eq!((p.width, p.height, p.tiles), (3 * 28 + 4 * GAP, 2 * 28 + 3 * GAP, 6));
        assert!(matches!(maps("fc", &tensor(&[10])), Err(VizError::NotMaps { .. })));
        let short = Tensor { shape: vec![2, 4, 4], data: vec![0.0; 5] };
        assert!(matches!(maps("c", &short), Err(VizError::BadTensor { .. })));
    }

    #[test]
    fn constant_tiles_and_nans_do_not_panic() {
        let mut t = Tensor { shape: vec![2, 1, 3, 3], data: vec![1.0; 18] };
        t.data[4] = f32::NAN;
        let p = filters(&t).expect("picture");
        assert_eq!(p.tiles, 2);
        assert!(encode_png(&p).expect("encodes").starts_with(b"\x89PNG"));
    }

    #[test]
    fn many_tiles_are_capped() {
        let p = maps("big", &Tensor { shape: vec![2000, 1, 1], data: vec![0.5; 2000] }).expect("picture");
        assert!(p.tiles <= MAX_TILES && p.of == 2000, "{} of {}", p.tiles, p.of);
        assert!(p.width <= MAX_SIDE && p.height <= MAX_SIDE);
    }
}
