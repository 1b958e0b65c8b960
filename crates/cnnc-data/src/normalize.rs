//! Per-channel normalisation, `x' = (x * scale - mean[c]) / std[c]`, as torchvision's
//! `ToTensor()` (scale 1/255 for pixel bytes) followed by `Normalize(mean, std)`.
//!
//! It is fitted on the training split only and stored with the trained weights as metadata
//! (`cnnc.normalize.*`, comma-separated decimal floats in Rust's shortest round-trip form,
//! which read back bit for bit), so inference normalises exactly as training did.

use crate::error::DataError;
use crate::{Dataset, Encoding};
use std::collections::HashMap;

/// The metadata key of [`Normalization::scale`].
pub const SCALE_KEY: &str = "cnnc.normalize.scale";
/// The metadata key of [`Normalization::mean`].
pub const MEAN_KEY: &str = "cnnc.normalize.mean";
/// The metadata key of [`Normalization::std`].
pub const STD_KEY: &str = "cnnc.normalize.std";

/// `x' = (x * scale - mean[c]) / std[c]` for every value `x` of channel `c`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub scale: f32,
    /// One entry per channel, or one for all channels.
    pub mean: Vec<f32>,
    /// One entry per channel (as `mean`), every one positive.
    pub std: Vec<f32>,
}

impl Normalization {
    /// Fits the training images: `scale` is 1/255 for pixel bytes and 1 for floats; `mean` and
    /// `std` are each channel's mean and (population) standard deviation of the scaled
    /// values, accumulated in f64. A constant channel (std 0, or below the values' f32
    /// precision) gets std 1, so it is shifted to 0 and never divided by zero.
    pub fn fit(train: &Dataset) -> Normalization {
        let scale = match train.encoding {
            Encoding::Uint8 => 1.0 / 255.0,
            Encoding::Float => 1.0,
        };
        let [channels, h, w] = train.shape;
        let plane = h.saturating_mul(w);
        let samples = train.len();
        let mut mean = Vec::with_capacity(channels);
        let mut std = Vec::with_capacity(channels);
        for c in 0..channels {
            let values = || {
                (0..samples).flat_map(move |i| {
                    let image = train.image(i);
                    image[c * plane..(c + 1) * plane].iter().map(move |&x| f64::from(x * scale))
                })
            };
            let n = (samples as f64) * (plane as f64);
            if n == 0.0 {
                mean.push(0.0);
                std.push(1.0);
                continue;
            }
            // Two passes: the mean, then the squared deviations from it (no cancellation).
            let m = values().sum::<f64>() / n;
            let var = values().map(|v| (v - m) * (v - m)).sum::<f64>() / n;
            let s = var.sqrt();
            mean.push(m as f32);
            // A spread below the values' own f32 precision is rounding in the sums, not data:
            // the channel is constant.
            let constant = s <= f64::from(f32::EPSILON) * m.abs() || !(s as f32).is_normal();
            std.push(if constant { 1.0 } else { s as f32 });
        }
        Normalization { scale, mean, std }
    }

    /// Normalises one image (`shape` = `[C, H, W]`) in place. A normalisation with one entry
    /// applies it to every channel; one fitted on other data (see
    /// [`Normalization::check_channels`]) uses its last entry for the channels it lacks.
    pub fn apply(&self, image: &mut [f32], shape: [usize; 3]) {
        let plane = shape[1].saturating_mul(shape[2]);
        if plane == 0 {
            return;
        }
        for (c, values) in image.chunks_mut(plane).enumerate().take(shape[0]) {
            let mean = self.mean.get(c).or(self.mean.last()).copied().unwrap_or(0.0);
            let std = self.std.get(c).or(self.std.last()).copied().unwrap_or(1.0);
            for x in values {
                *x = (*x * self.scale - mean) / std;
            }
        }
    }

    /// Checks that the normalisation has one entry per channel of `data` (or one for all).
    pub fn check_channels(&self, data: &Dataset) -> Result<(), DataError> {
        let channels = data.shape[0];
        let found = self.mean.len();
        if (found == channels || found == 1) && self.std.len() == found {
            return Ok(());
        }
        Err(DataError::NormalizationChannels { name: data.name.clone(), channels, found })
    }

    /// The metadata to store with the weights: `cnnc.normalize.scale`, `.mean` and `.std`.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            (SCALE_KEY.to_owned(), self.scale.to_string()),
            (MEAN_KEY.to_owned(), join(&self.mean)),
            (STD_KEY.to_owned(), join(&self.std)),
        ]
    }

    /// The normalisation stored in `metadata`, `None` if it has none of the keys. Some keys
    /// without the others, values that are not finite decimal floats, a scale or a standard
    /// deviation that is not positive, and mean and std of different lengths are errors.
    pub fn from_metadata(metadata: &HashMap<String, String>) -> Result<Option<Normalization>, DataError> {
        let keys = [SCALE_KEY, MEAN_KEY, STD_KEY];
        let values: Vec<Option<&String>> = keys.iter().map(|k| metadata.get(*k)).collect();
        let [Some(scale), Some(mean), Some(std)] = values[..] else {
            if values.iter().all(Option::is_none) {
                return Ok(None);
            }
            let present = keys.iter().zip(&values).find(|(_, v)| v.is_some()).map_or("", |(k, _)| *k);
            let (missing, _) = keys.iter().zip(&values).find(|(_, v)| v.is_none()).unwrap_or((&"", &None));
            return Err(DataError::Metadata {
                key: (*missing).to_owned(),
                value: String::new(),
                reason: format!("is missing, but `{present}` is there (the three keys go together)"),
            });
        };
        let scale_values = parse_list(SCALE_KEY, scale)?;
        let &[scale_value] = scale_values.as_slice() else {
            return Err(metadata_error(SCALE_KEY, scale, "must be one number"));
        };
        if scale_value <= 0.0 {
            return Err(metadata_error(SCALE_KEY, scale, "must be positive"));
        }
        let mean_values = parse_list(MEAN_KEY, mean)?;
        let std_values = parse_list(STD_KEY, std)?;
        if std_values.len() != mean_values.len() {
            return Err(metadata_error(
                STD_KEY,
                std,
                &format!("has {} values but `{MEAN_KEY}` has {}", std_values.len(), mean_values.len()),
            ));
        }
        if std_values.iter().any(|&s| s <= 0.0) {
            return Err(metadata_error(STD_KEY, std, "must be positive (a standard deviation)"));
        }
        Ok(Some(Normalization { scale: scale_value, mean: mean_values, std: std_values }))
    }
}

fn join(values: &[f32]) -> String {
    values.iter().map(f32::to_string).collect::<Vec<_>>().join(",")
}

fn metadata_error(key: &str, value: &str, reason: &str) -> DataError {
    DataError::Metadata { key: key.to_owned(), value: value.to_owned(), reason: reason.to_owned() }
}

/// Comma-separated finite decimal floats (spaces around them allowed), at least one.
fn parse_list(key: &str, value: &str) -> Result<Vec<f32>, DataError> {
    if value.trim().is_empty() {
        return Err(metadata_error(key, value, "is empty"));
    }
    value
        .split(',')
        .map(|item| {
            let item = item.trim();
            match item.parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(v),
                Ok(_) => Err(metadata_error(key, value, &format!("holds `{item}`, which is not finite"))),
                Err(_) => Err(metadata_error(key, value, &format!("holds `{item}`, which is not a decimal number"))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Targets;

    fn dataset(shape: [usize; 3], images: Vec<f32>, encoding: Encoding) -> Dataset {
        let n = images.len() / shape.iter().product::<usize>();
        let mut d = Dataset::new("t", shape, images, Targets::Classes { labels: vec![0; n], classes: 1 }).unwrap();
        d.encoding = encoding;
        d
    }

    #[test]
    fn fits_each_channel_of_the_scaled_training_images() {
        // Two 2x1x2 images of bytes: channel 0 holds 0 and 255 equally often, channel 1 is 51.
        let d = dataset([2, 1, 2], vec![0., 255., 51., 51., 255., 0., 51., 51.], Encoding::Uint8);
        let n = Normalization::fit(&d);
        assert_eq!(n.scale, 1.0 / 255.0);
        // The mean of the values as scaled in f32, which is what `apply` subtracts from.
        assert_eq!(n.mean, [0.5, 51.0 * (1.0f32 / 255.0)]);
        // A constant channel is shifted but not divided by zero.
        assert_eq!(n.std, [0.5, 1.0]);
        let mut image = d.image(0).to_vec();
        n.apply(&mut image, d.shape);
        assert_eq!(image, [-1.0, 1.0, 0.0, 0.0]);
        // Floats are not scaled; the std is the population one: values 1, 2, 3, 6.
        let d = dataset([1, 2, 2], vec![1., 2., 3., 6.], Encoding::Float);
        let n = Normalization::fit(&d);
        assert_eq!((n.scale, n.mean.as_slice()), (1.0, [3.0].as_slice()));
        assert_eq!(n.std, [(3.5f64).sqrt() as f32]);
    }

    #[test]
    fn accumulates_in_f64() {
        // A million values alternating 0.1 and 0.3: an f32 running sum drifts by about 1e-3 in
        // the mean; f64 is exact to f32 precision.
        let values: Vec<f32> = (0..1_000_000).map(|i| if i % 2 == 0 { 0.1 } else { 0.3 }).collect();
        let n = Normalization::fit(&dataset([1, 1000, 1000], values, Encoding::Float));
        assert!((n.mean[0] - 0.2).abs() < 1e-7 && (n.std[0] - 0.1).abs() < 1e-7, "{n:?}");
        // A constant channel whose sum is not exact in f64 is still constant: std 1.
        let n = Normalization::fit(&dataset([1, 1000, 1000], vec![0.2; 1_000_000], Encoding::Float));
        assert_eq!((n.mean[0], n.std[0]), (0.2, 1.0));
    }

    #[test]
    fn one_entry_applies_to_every_channel() {
        let n = Normalization { scale: 2.0, mean: vec![1.0], std: vec![4.0] };
        let mut image = [1.0, 3.0, 5.0];
        n.apply(&mut image, [3, 1, 1]);
        assert_eq!(image, [0.25, 1.25, 2.25]);
        let d = dataset([3, 1, 1], vec![0.; 3], Encoding::Float);
        assert!(n.check_channels(&d).is_ok());
        let two = Normalization { scale: 1.0, mean: vec![0.0, 0.0], std: vec![1.0, 1.0] };
        let e = two.check_channels(&d).unwrap_err();
        assert_eq!(e.to_string(), "the normalisation has 2 channel values, but the images in `t` have 3 channels");
    }

    #[test]
    fn metadata_round_trips_bit_for_bit() {
        let n =
            Normalization { scale: 1.0 / 255.0, mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.247, 0.2435, 0.2616] };
        let m: HashMap<String, String> = n.to_metadata().into_iter().collect();
        assert_eq!(m[SCALE_KEY], "0.003921569");
        assert_eq!(m[MEAN_KEY], "0.4914,0.4822,0.4465");
        assert_eq!(Normalization::from_metadata(&m).unwrap(), Some(n));
        // Awkward floats: subnormal, huge, negative zero, pseudo-random bit patterns.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut mean = vec![1e-45, -0.0, f32::MAX, f32::MIN_POSITIVE, -123.456];
        for _ in 0..200 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = f32::from_bits(state as u32);
            if v.is_finite() {
                mean.push(v);
            }
        }
        let std: Vec<f32> = mean.iter().map(|v| v.abs().max(1e-30)).collect();
        let n = Normalization { scale: 0.1, mean, std };
        let m: HashMap<String, String> = n.to_metadata().into_iter().collect();
        let back = Normalization::from_metadata(&m).unwrap().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.mean), bits(&n.mean));
        assert_eq!(bits(&back.std), bits(&n.std));
        assert_eq!(back.scale.to_bits(), n.scale.to_bits());
    }

    fn from(entries: &[(&str, &str)]) -> Result<Option<Normalization>, DataError> {
        Normalization::from_metadata(&entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn error(entries: &[(&str, &str)]) -> String {
        from(entries).unwrap_err().to_string()
    }

    #[test]
    fn malformed_metadata_is_a_clear_error() {
        assert_eq!(from(&[("other", "1")]).unwrap(), None);
        let ok = [(SCALE_KEY, "1"), (MEAN_KEY, " 0.5 , 0.25"), (STD_KEY, "1,2")];
        assert_eq!(from(&ok).unwrap().unwrap().mean, [0.5, 0.25]);
        assert_eq!(
            error(&[(SCALE_KEY, "1"), (MEAN_KEY, "0")]),
            "the normalisation metadata `cnnc.normalize.std` = \"\" is missing, but `cnnc.normalize.scale` is there \
             (the three keys go together)"
        );
        let e = error(&[(SCALE_KEY, "1"), (MEAN_KEY, "0.5,x"), (STD_KEY, "1,1")]);
        assert_eq!(
            e,
            "the normalisation metadata `cnnc.normalize.mean` = \"0.5,x\" holds `x`, which is not a decimal number"
        );
        let e = error(&[(SCALE_KEY, "1"), (MEAN_KEY, "NaN"), (STD_KEY, "1")]);
        assert!(e.ends_with("holds `NaN`, which is not finite"), "{e}");
        let e = error(&[(SCALE_KEY, "1e40"), (MEAN_KEY, "0"), (STD_KEY, "1")]);
        assert!(e.ends_with("holds `1e40`, which is not finite"), "{e}");
        let e = error(&[(SCALE_KEY, "1"), (MEAN_KEY, ""), (STD_KEY, "1")]);
        assert!(e.ends_with("\"\" is empty"), "{e}");
        let e = error(&[(SCALE_KEY, "1"), (MEAN_KEY, "0,"), (STD_KEY, "1")]);
        assert!(e.ends_with("holds ``, which is not a decimal number"), "{e}");
        let e = error(&[(SCALE_KEY, "1"), (MEAN_KEY, "0,0"), (STD_KEY, "1")]);
        assert!(e.ends_with("has 1 values but `cnnc.normalize.mean` has 2"), "{e}");
        let e = error(&[(SCALE_KEY, "1"), (MEAN_KEY, "0"), (STD_KEY, "0")]);
        assert!(e.ends_with("must be positive (a standard deviation)"), "{e}");
        let e = error(&[(SCALE_KEY, "-1"), (MEAN_KEY, "0"), (STD_KEY, "1")]);
        assert!(e.ends_with("must be positive"), "{e}");
        let e = error(&[(SCALE_KEY, "1,2"), (MEAN_KEY, "0"), (STD_KEY, "1")]);
        assert!(e.ends_with("must be one number"), "{e}");
        assert!(from(&[(STD_KEY, "1")]).unwrap_err().hint().unwrap().contains("comma-separated decimal floats"));
    }
}
