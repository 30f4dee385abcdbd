//! `tilefuse profile`: one configuration, N launches after warm-up, each inside an NVTX range
//! named after the case, so that `nsys profile` and `ncu --nvtx` show named ranges around the
//! stable kernel names.

use half::f16;
use num_complex::Complex32;
use tilefuse::backend::cuda::Cuda;
use tilefuse::scan::{self, ScanElement};
use tilefuse::spmm::{self, Pattern, cuda::DeviceTiledCsl};

/// The configuration to profile.
#[derive(clap::Args, Debug, Clone)]
pub struct ProfileArgs {
    /// The op.
    #[arg(value_enum)]
    pub op: crate::input::Op,
    /// Timed launches, each in its own NVTX range.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// The backend: cuda (Nsight profiles CUDA kernels).
    #[arg(long, default_value = "cuda")]
    pub backend: String,
    /// spmm: rows of w.
    #[arg(long, default_value_t = 8192)]
    pub m: usize,
    /// spmm: columns of w.
    #[arg(long, default_value_t = 8192)]
    pub k: usize,
    /// spmm: tokens.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// spmm: fraction of zero weights (uniform).
    #[arg(long, default_value_t = 0.8)]
    pub sparsity: f64,
    /// scan: batch rows.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// scan: time steps.
    #[arg(long, default_value_t = 8192)]
    pub time: usize,
    /// scan: channels.
    #[arg(long, default_value_t = 256)]
    pub channels: usize,
    /// scan: f32 instead of complex64.
    #[arg(long)]
    pub real: bool,
    /// attention: query and key length (causal mask, 128-blocks, b = 1).
    #[arg(long, default_value_t = 8192)]
    pub len: usize,
    /// attention: query heads (as many key/value heads).
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    /// attention: head dimension (64 or 128).
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
}

/// Runs the configuration; returns a line describing what ran.
pub fn profile(args: &ProfileArgs) -> Result<String, String> {
    if args.backend != "cuda" {
        return Err(format!(
            "--backend {}: profile runs CUDA kernels for Nsight (--backend cuda)",
            args.backend
        ));
    }
    let cuda = Cuda::new(0).map_err(|e| e.to_string())?;
    let ranges = Ranges::new();
    let err = |e: tilefuse::Error| e.to_string();
    let name = match args.op {
        crate::input::Op::Spmm => {
            let case = spmm::Case {
                pattern: Pattern::Uniform,
                ..spmm::Case::new(args.m, args.k, args.n, args.sparsity)
            };
            let w = DeviceTiledCsl::upload(&cuda, &spmm::weight::<f16>(&case, 1).map_err(err)?)
                .map_err(err)?;
            let x = cuda
                .upload(&vec![f16::from_f32(0.5); args.n * args.k])
                .map_err(err)?;
            let mut y = cuda
                .upload(&vec![f16::ZERO; args.n * args.m])
                .map_err(err)?;
            let label = format!("spmm {case}");
            let mut workspace = spmm::cuda::SpmmWorkspace::new();
            launches(&cuda, &ranges, &label, args.iters, || {
                spmm::cuda::spmm_with_workspace(&cuda, &w, &x, &mut y, &mut workspace)
            })?;
            label
        }
        crate::input::Op::Scan if args.real => profile_scan::<f32>(&cuda, &ranges, args)?,
        crate::input::Op::Scan => profile_scan::<Complex32>(&cuda, &ranges, args)?,
        crate::input::Op::Attention => profile_attention(&cuda, &ranges, args)?,
    };
    Ok(format!(
        "{name}: {} launches on {} ({})",
        args.iters,
        cuda.info().name,
        if ranges.enabled {
            "each in an NVTX range"
        } else {
            "no NVTX library (libnvToolsExt) found: no ranges"
        }
    ))
}

fn profile_scan<T: ScanElement>(
    cuda: &Cuda,
    ranges: &Ranges,
    args: &ProfileArgs,
) -> Result<String, String> {
    let err = |e: tilefuse::Error| e.to_string();
    let case = scan::Case {
        complex: T::LANES == 2,
        h0: false,
        ..scan::Case::new(args.batch, args.time, args.channels)
    };
    let problem = case.scan::<T>().map_err(err)?;
    let inputs = scan::Inputs::random(&case, &problem, 1);
    let upload = |v: &[T]| cuda.upload(bytemuck::cast_slice::<T, f32>(v));
    let (a, u) = (
        upload(&inputs.a).map_err(err)?,
        upload(&inputs.u).map_err(err)?,
    );
    let reset = cuda.upload(&inputs.reset).map_err(err)?;
    let mut h = cuda
        .upload(&vec![0.0f32; problem.states_len() * T::LANES])
        .map_err(err)?;
    let mut h_last = cuda
        .upload(&vec![0.0f32; problem.final_len() * T::LANES])
        .map_err(err)?;
    let label = format!("scan {case}");
    launches(cuda, ranges, &label, args.iters, || {
        let inputs = scan::cuda::ScanInputs {
            a: &a,
            u: &u,
            reset: &reset,
            h0: None,
        };
        scan::cuda::scan(cuda, &problem, inputs, &mut h, &mut h_last)
    })?;
    Ok(label)
}

fn profile_attention(cuda: &Cuda, ranges: &Ranges, args: &ProfileArgs) -> Result<String, String> {
    use tilefuse::attention::{AttentionShape, BlockMask, MaskShape, cuda as attention};
    let err = |e: tilefuse::Error| e.to_string();
    let (l, heads, d) = (args.len, args.heads, args.head_dim);
    let shape = AttentionShape::new(1, l, l, heads, heads, d).map_err(err)?;
    let mask = BlockMask::causal(MaskShape::new(l, l)).map_err(err)?;
    let mask = attention::DeviceBlockMask::upload(cuda, &mask).map_err(err)?;
    let values = vec![f16::from_f32(0.01); l * heads * d];
    let (q, k, v) = (
        cuda.upload(&values).map_err(err)?,
        cuda.upload(&values).map_err(err)?,
        cuda.upload(&values).map_err(err)?,
    );
    let mut o = cuda.upload(&values).map_err(err)?;
    let label = format!("attention causal b=1 l={l} hq={heads} d={d}");
    let scale = 1.0 / (d as f32).sqrt();
    launches(cuda, ranges, &label, args.iters, || {
        let inputs = attention::Inputs {
            q: &q,
            k: &k,
            v: &v,
        };
        attention::attention(cuda, &shape, inputs, &mask, &mut o, None, scale)
    })?;
    Ok(label)
}

/// Three untimed launches, then `iters` launches each in a range `label #i`, then a wait.
fn launches(
    cuda: &Cuda,
    ranges: &Ranges,
    label: &str,
    iters: usize,
    mut launch: impl FnMut() -> tilefuse::Result<()>,
) -> Result<(), String> {
    for _ in 0..3 {
        launch().map_err(|e| e.to_string())?;
    }
    cuda.synchronize().map_err(|e| e.to_string())?;
    for i in 0..iters {
        let _range = ranges
            .enabled
            .then(|| cudarc::nvtx::safe::scoped_range(format!("{label} #{i}")));
        launch().map_err(|e| e.to_string())?;
    }
    cuda.synchronize().map_err(|e| e.to_string())
}

/// Whether NVTX ranges can be emitted (cudarc loads libnvToolsExt and panics without it).
struct Ranges {
    enabled: bool,
}

impl Ranges {
    fn new() -> Self {
        Ranges {
            enabled: tilefuse::backend::cuda::library_present("nvToolsExt"),
        }
    }
}
