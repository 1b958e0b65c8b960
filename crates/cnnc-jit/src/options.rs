//! What a compilation is for: the batch, the kernel mode, the threads, guard pages, and the
//! token that may cancel its runs.

/// How the hot loops are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every loop, the register tiles included, in Cranelift IR with 128-bit vectors: runs on
    /// any Cranelift target.
    Portable,
    /// Cranelift loop nests around calls to `cnnc-kernels`' microkernels where a kernel fits
    /// the node (AVX-512 or AVX2 on x86-64); the rest as in portable mode.
    Native,
}

impl Mode {
    /// Native where the CPU has a SIMD kernel set (AVX2 + FMA or AVX-512), else portable.
    pub fn host_default() -> Mode {
        use cnnc_kernels::simd::Isa;
        if cnnc_kernels::cpu::best().isa() == Isa::Portable { Mode::Portable } else { Mode::Native }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Portable => "portable",
            Mode::Native => "native",
        }
    }

    pub fn from_name(name: &str) -> Option<Mode> {
        [Mode::Portable, Mode::Native].into_iter().find(|m| m.name() == name)
    }
}

/// Options of [`crate::CompiledModel::compile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The batch size the code is specialised to (every address and trip count is a
    /// constant); runs must bring exactly this many samples.
    pub batch: usize,
    pub mode: Mode,
    /// Threads: `None` for the process-wide pool (`CNNC_THREADS` or every CPU), or a pool of
    /// this many threads of the model's own.
    pub threads: Option<usize>,
    /// Allocate every buffer the code touches so that it ends at an inaccessible page: an
    /// out-of-bounds access faults (for tests).
    pub guard_pages: bool,
    /// When given, compiling checks it between its phases and every run between kernel steps
    /// (and between timing rounds), ending in [`crate::JitError::Cancelled`] once it is set.
    /// A run so stopped leaves its outputs unwritten and, for a training plan, the parameters
    /// partly updated: give training steps that must stay whole no token.
    pub cancel: Option<cnnc_runtime::Cancel>,
    /// Depth first at batch > 1 (inference plans only): the leading nodes of the schedule up
    /// to the last whose values (its inputs and output, every image) take more than this many
    /// bytes run image by image, each image through all of them before the next, so that one
    /// image's maps stay in the caches between layers where the whole batch's would not.
    /// [`DEPTH_FIRST_BYTES`] by default; `u64::MAX` runs every node on the whole batch, 0 runs
    /// as many nodes depth first as can be.
    pub depth_first_bytes: u64,
    /// Run 3x3 stride-1 convolutions whose weights no step updates as Winograd F(2x2, 3x3) or
    /// F(4x4, 3x3) where `cnnc_kernels::winograd::preferred` says it pays (native mode). Its
    /// sums are grouped differently from the direct convolution's (F(4x4, 3x3) loses about a
    /// decimal digit). On by default.
    pub winograd: bool,
}

/// The default [`Options::depth_first_bytes`] ([`cnnc_ir::depth::DEPTH_FIRST_BYTES`]).
pub const DEPTH_FIRST_BYTES: u64 = cnnc_ir::depth::DEPTH_FIRST_BYTES;

impl Options {
    /// Batch `batch`, the host's default mode, the global pool, no guard pages, no cancelling.
    pub fn new(batch: usize) -> Options {
        Options {
            batch,
            mode: Mode::host_default(),
            threads: None,
            guard_pages: false,
            cancel: None,
            depth_first_bytes: DEPTH_FIRST_BYTES,
            winograd: true,
        }
    }

    pub fn with_mode(self, mode: Mode) -> Options {
        Options { mode, ..self }
    }

    pub fn with_threads(self, threads: usize) -> Options {
        Options { threads: Some(threads), ..self }
    }

    pub fn with_guard_pages(self, guard_pages: bool) -> Options {
        Options { guard_pages, ..self }
    }

    pub fn with_cancel(self, cancel: cnnc_runtime::Cancel) -> Options {
        Options { cancel: Some(cancel), ..self }
    }

    pub fn with_depth_first_bytes(self, depth_first_bytes: u64) -> Options {
        Options { depth_first_bytes, ..self }
    }

    /// The same options with [`Options::winograd`] set.
    pub fn with_winograd(self, winograd: bool) -> Options {
        Options { winograd, ..self }
    }
}
