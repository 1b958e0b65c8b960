//! Shared helpers for cnnc's benchmarks: the example sources, loaded at compile time.

/// The example networks benchmarked end to end, by file name.
pub const EXAMPLES: &[(&str, &str)] = &[("resnet50", include_str!("../../examples/resnet50.cnn"))];
