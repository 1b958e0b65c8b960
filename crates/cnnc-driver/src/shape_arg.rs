//! Parsing the `--shape` argument: `3x64x64` for a `[C, H, W]` input, `784` for a flat one.

use thiserror::Error;

/// Why a `--shape` argument was rejected. Each message says what was wrong and shows the form
/// that works, because the argument is typed by hand.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ShapeArgError {
    #[error("the shape is empty; write CxHxW such as `3x224x224`, or F such as `784` for a flat input")]
    Empty,
    #[error("`{part}` in `{arg}` is not a whole number; write CxHxW such as `3x224x224`")]
    NotANumber { arg: String, part: String },
    #[error("dimension {index} of `{arg}` is 0; every dimension must be at least 1")]
    Zero { arg: String, index: usize },
    #[error("`{arg}` has {rank} dimensions; write CxHxW (3 dimensions, such as `3x224x224`) or F (1, such as `784`)")]
    Rank { arg: String, rank: usize },
    #[error("`{arg}` is too large: its number of elements does not fit in memory addresses")]
    Overflow { arg: String },
}

/// Parses `CxHxW` or `F` into dimensions, all at least 1, whose product fits in `usize`.
///
/// Only ranks 1 and 3 are accepted because those are the only input ranks the IR has; saying so
/// here gives a better message than a shape error from deep inside lowering.
pub fn parse_shape(arg: &str) -> Result<Vec<usize>, ShapeArgError> {
    let trimmed = arg.trim();
    if trimmed.is_empty() {
        return Err(ShapeArgError::Empty);
    }
    let mut dims = Vec::new();
    for part in trimmed.split(['x', 'X']) {
        let part = part.trim();
        // `parse::<usize>` accepts a leading `+`; a shape has no signs, so only digits pass.
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ShapeArgError::NotANumber { arg: arg.to_string(), part: part.to_string() });
        }
        let dim = part.parse::<usize>().map_err(|_| ShapeArgError::Overflow { arg: arg.to_string() })?;
        if dim == 0 {
            return Err(ShapeArgError::Zero { arg: arg.to_string(), index: dims.len() + 1 });
        }
        dims.push(dim);
    }
    if dims.len() != 1 && dims.len() != 3 {
        return Err(ShapeArgError::Rank { arg: arg.to_string(), rank: dims.len() });
    }
    if dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).is_none() {
        return Err(ShapeArgError::Overflow { arg: arg.to_string() });
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_maps_and_flat_vectors() {
        assert_eq!(parse_shape("3x64x64"), Ok(vec![3, 64, 64]));
        assert_eq!(parse_shape(" 1X32x32 "), Ok(vec![1, 32, 32]));
        assert_eq!(parse_shape("784"), Ok(vec![784]));
    }

    #[test]
    fn rejects_zero_dimensions_with_their_position() {
        assert_eq!(parse_shape("3x0x64"), Err(ShapeArgError::Zero { arg: "3x0x64".into(), index: 2 }));
        assert_eq!(parse_shape("0"), Err(ShapeArgError::Zero { arg: "0".into(), index: 1 }));
    }

    #[test]
    fn rejects_other_ranks() {
        assert_eq!(parse_shape("3x64"), Err(ShapeArgError::Rank { arg: "3x64".into(), rank: 2 }));
        assert_eq!(parse_shape("1x3x64x64"), Err(ShapeArgError::Rank { arg: "1x3x64x64".into(), rank: 4 }));
    }

    #[test]
    fn rejects_non_numbers() {
        assert_eq!(parse_shape(""), Err(ShapeArgError::Empty));
        assert_eq!(parse_shape("  "), Err(ShapeArgError::Empty));
        for bad in ["abc", "3x64x", "x64x64", "3xx64", "3x-1x64", "+3x64x64", "3.0x64x64", "3,64,64"] {
            assert!(matches!(parse_shape(bad), Err(ShapeArgError::NotANumber { .. })), "{bad}");
        }
        let err = parse_shape("3xabcx64").unwrap_err().to_string();
        assert!(err.contains("`abc`"), "{err}");
    }

    #[test]
    fn rejects_overflow_of_a_dimension_and_of_the_product() {
        let huge = "99999999999999999999999999";
        assert!(matches!(parse_shape(huge), Err(ShapeArgError::Overflow { .. })));
        let product = format!("{m}x{m}x{m}", m = u32::MAX);
        assert!(matches!(parse_shape(&product), Err(ShapeArgError::Overflow { .. })));
    }
}
