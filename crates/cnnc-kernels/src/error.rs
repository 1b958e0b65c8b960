//! `KernelError`: what a safe kernel entry point reports instead of running on bad input.
//!
//! Core-only (no allocation): every variant carries static names and numbers, so a
//! generated `no_std` module can use the same checks.

use core::fmt;

/// Why a kernel refused to run. Every safe function checks all lengths, shapes and views
/// before any `unsafe` code runs and returns one of these rather than panicking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// A shape or attribute that the kernel cannot run (zero sizes, a kernel larger than the
    /// padded input, channels that do not divide into groups, ...).
    Shape { what: &'static str },
    /// A slice whose length is not what the shape needs.
    Length { what: &'static str, expected: usize, found: usize },
    /// A tensor view reaching past the end of its buffer.
    OutOfBounds { what: &'static str, end: usize, len: usize },
    /// Two operands sharing memory where the kernel needs them apart.
    Overlap { first: &'static str, second: &'static str },
    /// A view whose dimensions or layout differ from the plan's.
    View { what: &'static str },
    /// Sizes whose products overflow `usize`.
    Overflow { what: &'static str },
    /// The plan asks for an instruction set this CPU lacks, or a layout the kernel lacks.
    Unsupported { what: &'static str },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Shape { what } => write!(f, "unsupported shape: {what}"),
            KernelError::Length { what, expected, found } => {
                write!(f, "{what} has {found} elements, expected {expected}")
            }
            KernelError::OutOfBounds { what, end, len } => {
                write!(f, "{what} ends at element {end}, past the end of its buffer ({len} elements)")
            }
            KernelError::Overlap { first, second } => write!(f, "{first} and {second} overlap in memory"),
            KernelError::View { what } => write!(f, "{what} does not match the plan"),
            KernelError::Overflow { what } => write!(f, "{what}: size overflows"),
            KernelError::Unsupported { what } => write!(f, "not supported: {what}"),
        }
    }
}

impl core::error::Error for KernelError {}

/// `Err(Length)` unless `found == expected`.
pub fn check_len(what: &'static str, found: usize, expected: usize) -> Result<(), KernelError> {
    if found == expected { Ok(()) } else { Err(KernelError::Length { what, expected, found }) }
}

/// `Err(Length)` unless `found >= expected`.
pub fn check_min_len(what: &'static str, found: usize, expected: usize) -> Result<(), KernelError> {
    if found >= expected { Ok(()) } else { Err(KernelError::Length { what, expected, found }) }
}

/// The product of `dims`, or `Overflow`.
pub fn product(what: &'static str, dims: &[usize]) -> Result<usize, KernelError> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or(KernelError::Overflow { what })
}
