//! Data augmentation: random crops with zero padding and random horizontal flips, as
//! torchvision's `RandomCrop(size, padding=p)` followed by `RandomHorizontalFlip()`.
//!
//! Augmentation runs on the values as stored, before normalisation, so the padding is zeros of
//! the raw image (black pixels), exactly as in PyTorch, where `RandomCrop` pads the image
//! before `Normalize` runs; after normalisation a padded pixel is `(0 - mean[c]) / std[c]`,
//! not 0. Padding with zeros of the normalised values instead would pad with the mean colour,
//! which is another augmentation than the papers' and torchvision's.
//!
//! Each sample's choices come from `(seed, epoch, sample index)` alone ([`Augment::placement`]),
//! so they do not depend on batch size, on which thread makes the batch, or on whether the
//! epoch was resumed; and since the crop offsets and the flip are always drawn, turning one on
//! or off does not change the other's choices.

use crate::error::DataError;
use crate::stream::{below, sample_rng};
use crate::{Dataset, error::shape_text};

/// The augmentations applied to each training sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    /// Random crop: pad each side with `crop_pad` zeros, crop back to `H x W` at a random offset
    /// (each of `0..=2 * crop_pad`). 0 turns it off.
    pub crop_pad: usize,
    /// Mirror left to right with probability 1/2.
    pub hflip: bool,
}

/// One sample's augmentation: where its crop window sits in the padded image and whether it
/// is flipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The padding on each side.
    pub pad: usize,
    /// The window's top row and left column in the padded image, each in `0..=2 * pad`; `pad`
    /// and `pad` is the image itself.
    pub dy: usize,
    pub dx: usize,
    /// Mirrored left to right (after the crop).
    pub flip: bool,
}

impl Augment {
    /// No augmentation at all.
    pub fn is_off(&self) -> bool {
        self.crop_pad == 0 && !self.hflip
    }

    /// Checks that the augmentation makes sense for the data: crops and flips need images
    /// (not flat samples), and a padding of at most the image's size.
    pub fn check(&self, data: &Dataset) -> Result<(), DataError> {
        let [_, h, w] = data.shape;
        let flat = h == 1 && w == 1;
        let reason = if flat && !self.is_off() {
            format!("its samples are {}, not images: crops and flips need images", shape_text(&data.shape))
        } else if self.crop_pad > h.max(w) {
            format!("a crop padding of {} is more than its {h}x{w} images: at most {}", self.crop_pad, h.max(w))
        } else {
            return Ok(());
        };
        Err(DataError::Augment { name: data.name.clone(), reason })
    }

    /// The choices for sample `sample` (its index in the data set) in epoch `epoch`.
    pub fn placement(&self, seed: u64, epoch: u64, sample: usize) -> Placement {
        let mut rng = sample_rng(seed, epoch, sample);
        let span = (self.crop_pad as u64).saturating_mul(2).saturating_add(1);
        let dy = below(&mut rng, span);
        let dx = below(&mut rng, span);
        let flip = rng.next_u64() >> 63 == 1;
        Placement {
            pad: self.crop_pad,
            dy: usize::try_from(dy).unwrap_or(usize::MAX),
            dx: usize::try_from(dx).unwrap_or(usize::MAX),
            flip: self.hflip && flip,
        }
    }
}

impl Placement {
    /// The placement that changes nothing.
    pub const IDENTITY: Placement = Placement { pad: 0, dy: 0, dx: 0, flip: false };

    /// Writes `image` (`shape` = `[C, H, W]`) cropped and flipped into `out` (the same size):
    /// `out[c][y][x] = image[c][y + dy - pad][x' + dx - pad]` with `x' = W - 1 - x` when
    /// flipped, else `x`; 0 where that falls in the padding.
    pub fn apply(&self, image: &[f32], shape: [usize; 3], out: &mut [f32]) {
        let [channels, h, w] = shape;
        let plane = h.saturating_mul(w);
        if *self == Placement::IDENTITY {
            let n = out.len().min(image.len());
            out[..n].copy_from_slice(&image[..n]);
            return;
        }
        // i128: the offsets of a hostile padding cannot overflow.
        let (pad, dy, dx) = (self.pad as i128, self.dy as i128, self.dx as i128);
        let (hi, wi) = (h as i128, w as i128);
        for c in 0..channels {
            for y in 0..h {
                let sy = y as i128 + dy - pad;
                for x in 0..w {
                    let fx = if self.flip { w - 1 - x } else { x };
                    let sx = fx as i128 + dx - pad;
                    let value = if (0..hi).contains(&sy) && (0..wi).contains(&sx) {
                        // In range of the image, so these fit in usize.
                        image.get(c * plane + sy as usize * w + sx as usize).copied().unwrap_or(0.0)
                    } else {
                        0.0
                    };
                    if let Some(o) = out.get_mut(c * plane + y * w + x) {
                        *o = value;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x3x3 image holding 1 to 9, row by row.
    const NINE: [f32; 9] = [1., 2., 3., 4., 5., 6., 7., 8., 9.];

    fn apply(p: Placement, image: &[f32], shape: [usize; 3]) -> Vec<f32> {
        let mut out = vec![f32::NAN; image.len()];
        p.apply(image, shape, &mut out);
        out
    }

    #[test]
    fn crops_and_flips_by_hand() {
        let at = |pad, dy, dx, flip| Placement { pad, dy, dx, flip };
        // The centre of the padded image is the image itself.
        assert_eq!(apply(at(1, 1, 1, false), &NINE, [1, 3, 3]), NINE);
        assert_eq!(apply(Placement::IDENTITY, &NINE, [1, 3, 3]), NINE);
        // Top-left window: one row and one column of padding come in.
        assert_eq!(apply(at(1, 0, 0, false), &NINE, [1, 3, 3]), [0., 0., 0., 0., 1., 2., 0., 4., 5.]);
        // Two rows down, one column right: the window slides off the bottom.
        assert_eq!(apply(at(1, 2, 1, false), &NINE, [1, 3, 3]), [4., 5., 6., 7., 8., 9., 0., 0., 0.]);
        // A flip alone mirrors each row.
        assert_eq!(apply(at(0, 0, 0, true), &NINE, [1, 3, 3]), [3., 2., 1., 6., 5., 4., 9., 8., 7.]);
        // Crop first (one column right: 2 3 0 / 5 6 0 / 8 9 0), then flip, as torchvision's
        // RandomCrop then RandomHorizontalFlip.
        assert_eq!(apply(at(1, 1, 2, true), &NINE, [1, 3, 3]), [0., 3., 2., 0., 6., 5., 0., 9., 8.]);
        // A padding as large as the image can move it all out of the window.
        assert_eq!(apply(at(3, 0, 0, false), &NINE, [1, 3, 3]), [0.; 9]);
        assert_eq!(apply(at(3, 6, 6, false), &NINE, [1, 3, 3]), [0.; 9]);
        // A hostile padding neither overflows nor panics.
        assert_eq!(apply(at(usize::MAX, usize::MAX, 0, true), &NINE, [1, 3, 3]), [0.; 9]);
    }

    #[test]
    fn channels_are_cropped_alike_and_separately() {
        // 2x2x2: channel 0 is 1 2 / 3 4, channel 1 is 10 20 / 30 40.
        let image = [1., 2., 3., 4., 10., 20., 30., 40.];
        let p = Placement { pad: 1, dy: 0, dx: 2, flip: false };
        assert_eq!(apply(p, &image, [2, 2, 2]), [0., 0., 2., 0., 0., 0., 20., 0.]);
        let p = Placement { pad: 1, dy: 1, dx: 1, flip: true };
        assert_eq!(apply(p, &image, [2, 2, 2]), [2., 1., 4., 3., 20., 10., 40., 30.]);
        // Non-square: 1x2x3 (1 2 3 / 4 5 6), one row up and flipped.
        let p = Placement { pad: 1, dy: 2, dx: 1, flip: true };
        assert_eq!(apply(p, &[1., 2., 3., 4., 5., 6.], [1, 2, 3]), [6., 5., 4., 0., 0., 0.]);
    }

    #[test]
    fn placements_are_keyed_uniform_and_independent() {
        let both = Augment { crop_pad: 2, hflip: true };
        let flips_only = Augment { crop_pad: 0, hflip: true };
        let crops_only = Augment { crop_pad: 2, hflip: false };
        let mut dy_counts = [0usize; 5];
        let mut flips = 0;
        for sample in 0..5000 {
            let p = both.placement(7, 1, sample);
            assert_eq!(p, both.placement(7, 1, sample), "the same keys give the same choices");
            assert!(p.dy <= 4 && p.dx <= 4 && p.pad == 2, "{p:?}");
            dy_counts[p.dy] += 1;
            flips += usize::from(p.flip);
            // Turning the crop off or on does not change the flip, nor the flip the crop.
            assert_eq!(flips_only.placement(7, 1, sample).flip, p.flip);
            let c = crops_only.placement(7, 1, sample);
            assert_eq!((c.dy, c.dx, c.flip), (p.dy, p.dx, false));
        }
        assert!(dy_counts.iter().all(|&c| (c as f64 - 1000.0).abs() < 150.0), "{dy_counts:?}");
        assert!((flips as f64 - 2500.0).abs() < 200.0, "{flips}");
        let other_epoch = (0..100).filter(|&s| both.placement(7, 2, s) != both.placement(7, 1, s)).count();
        assert!(other_epoch > 80, "another epoch draws again: {other_epoch}");
        assert_eq!(Augment::default().placement(7, 1, 3), Placement::IDENTITY);
    }
}
