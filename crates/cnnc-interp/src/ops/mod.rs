//! The kernels: plain loops over f64 buffers, one module per family, forward and backward side
//! by side. Shapes are trusted here (the driver validates everything first).

pub(crate) mod act;
pub(crate) mod conv;
pub(crate) mod norm;
pub(crate) mod pool;
