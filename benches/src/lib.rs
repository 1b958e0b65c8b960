//! Shared helpers for cnnc's benchmarks: the example sources, loaded at compile time; the
//! machine's measured limits (`peak`) and the kernel benchmark layers (`layers`).

pub mod layers;
pub mod peak;

/// The example networks benchmarked end to end, by file name.
pub const EXAMPLES: &[(&str, &str)] = &[("resnet50", include_str!("../../examples/resnet50.cnn"))];
