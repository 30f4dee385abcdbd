//! The attention backward's cases for `tilefuse check` and its case files (`tilefuse run
//! attention-backward`): on the CPU, [`blockwise_backward`] against [`reference_backward`];
//! on CUDA (and its emulator) and WGSL, the kernels against the reference.

use half::{bf16, f16};

use super::check::OnDevice;
use super::check::{random_rows, row_starts};
use super::{
    AttentionShape, BlockMask, Case, MaskKind, Output, blockwise_backward, reference,
    reference_backward,
};
use crate::element::{DeviceFloat16, DeviceOutput, Float16};
use crate::error::Result;
use crate::harness::device::on_device;
use crate::harness::{Backend, Backends, CheckCase, Comparison, OpEntry, Rng, Tolerance, compare};
use crate::spmm::check::nan_bits;

/// The registry entry of the backward pass.
pub const BACKWARD_ENTRY: OpEntry = OpEntry {
    name: "attention-backward",
    about: "block-sparse attention backward: dq, dk, dv from do (CUDA: FlashAttention-2's two passes, no atomics)",
    kernel_modules: &["attention_backward"],
    check_cases,
    bench_cases: super::bench::backward_bench_cases,
    #[cfg(feature = "cli")]
    file: Some(&super::cli::BACKWARD_FILE),
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: Some(&super::cli::BACKWARD_PROFILE),
};

/// What a device run of the backward gets: the forward's inputs and outputs (o in the
/// inputs' type and laid out as `shape.layout().o` says, as is `d_o`; lse packed f32), and
/// the gradients' type.
#[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))] // read on GPUs
pub(crate) struct BackwardArgs<'a, T> {
    pub(crate) shape: &'a AttentionShape,
    pub(crate) qkv: [&'a [T]; 3],
    pub(crate) o: &'a [T],
    pub(crate) d_o: &'a [T],
    pub(crate) lse: &'a [f32],
    pub(crate) mask: &'a BlockMask,
    pub(crate) scale: f32,
    pub(crate) output: Output,
}

/// A device run's gradients, packed and widened to f32 (dq, dk, dv); `None` where the backend
/// has no path.
pub(crate) type BackwardRun = Option<[Vec<f32>; 3]>;

/// Runs `case`'s backward pass on `backend` with inputs and dO from `seed`: on the CPU,
/// [`blockwise_backward`] against [`reference_backward`] (two f64 algorithms, within 1e-12);
/// on CUDA the kernels, given the reference forward's o (rounded to the inputs' type) and
/// lse, against the reference; likewise on WGSL.
pub fn check_backward(
    backends: &Backends,
    backend: Backend,
    case: &Case,
    seed: u64,
) -> Result<Option<Comparison>> {
    match backend {
        Backend::Cpu => check_cpu(case, seed).map(Some),
        _ if case.bf16 => {
            check_backward_with::<bf16>(case, seed, |args| run_backward(backends, backend, args))
        }
        _ => check_backward_with::<f16>(case, seed, |args| run_backward(backends, backend, args)),
    }
}

fn check_cpu(case: &Case, seed: u64) -> Result<Comparison> {
    let shape = case.shape()?;
    let mask = case.block_mask()?;
    let mut rng = Rng::new(seed);
    let [q_len, k_len, v_len, o_len] = shape.min_lens();
    let mut random = |len: usize| -> Vec<f16> {
        (0..len)
            .map(|_| f16::from_f64(rng.uniform(-2.0, 2.0)))
            .collect()
    };
    let (q, k, v, d_o) = (random(q_len), random(k_len), random(v_len), random(o_len));
    let scale = 1.0 / (shape.d as f64).sqrt();
    let want = reference_backward(&shape, [&q, &k, &v], &d_o, &mask, scale)?;
    let got = blockwise_backward(&shape, [&q, &k, &v], &d_o, &mask, scale)?;
    let bound = Tolerance {
        rel_l2: 1e-12,
        element: 1e-12,
    };
    let all = |g: super::Gradients| [g.dq, g.dk, g.dv].concat();
    Ok(compare(&all(got), &all(want), bound))
}

/// The bound of a device backward against the f64 reference, in units of the inputs' unit
/// roundoff u (f16 2^-11, bf16 2^-8): P and dS enter their products rounded to the inputs'
/// type (CUDA) and D comes from o as rounded (every backend), so an element carries a few
/// roundings relative to the sums of its terms' magnitudes, which exceed the gradient itself
/// (the rows of dS sum to zero). Measured on ragged cases of every mask: up to 8 u per
/// element (relative to |reference| + rms), 1 u over the whole; the bound is 12 u and 4 u.
pub(crate) fn backward_tolerance(bf16: bool) -> Tolerance {
    let unit_roundoff = if bf16 { 2f64.powi(-8) } else { 2f64.powi(-11) };
    Tolerance {
        rel_l2: 4.0 * unit_roundoff,
        element: 12.0 * unit_roundoff,
    }
}

/// [`check_backward`] on a device, the run done by `runner` (twice: the second call must give
/// the same bits): q, k, v and dO random (NaN in the gaps of strided layouts), o and lse from
/// the f64 reference forward, gradients compared with [`reference_backward`] within
/// [`backward_tolerance`].
pub(crate) fn check_backward_with<T: Float16>(
    case: &Case,
    seed: u64,
    mut runner: impl FnMut(&BackwardArgs<'_, T>) -> Result<BackwardRun>,
) -> Result<Option<Comparison>> {
    let shape = case.shape()?;
    let mask = case.block_mask()?;
    let [q_len, k_len, v_len, o_len] = shape.min_lens();
    let (l, (b, lq, lk)) = (shape.layout(), (shape.batch, shape.lq, shape.lk));
    let mut rng = Rng::new(seed);
    let mut random = |len, strides, sizes| random_rows::<T>(&mut rng, len, strides, sizes, shape.d);
    let q = random(q_len, l.q, [b, lq, shape.heads_q]);
    let k = random(k_len, l.k, [b, lk, shape.heads_kv]);
    let v = random(v_len, l.v, [b, lk, shape.heads_kv]);
    let d_o = random(o_len, l.o, [b, lq, shape.heads_q]);
    let wide = |x: &[T]| x.iter().map(|&v| v.to_f64()).collect::<Vec<f64>>();
    let scale = 1.0 / (shape.d as f32).sqrt();
    let forward = reference(&shape, &wide(&q), &wide(&k), &wide(&v), &mask, scale.into())?;
    let mut o = vec![T::from_f64(f64::NAN); o_len];
    let rows = row_starts(l.o, [b, lq, shape.heads_q]);
    for (at, row) in rows.zip(forward.o.chunks(shape.d)) {
        for (o, &x) in o[at..at + shape.d].iter_mut().zip(row) {
            *o = T::from_f64(x);
        }
    }
    let lse: Vec<f32> = forward.lse.iter().map(|&x| x as f32).collect();
    let args = BackwardArgs {
        shape: &shape,
        qkv: [&q, &k, &v],
        o: &o,
        d_o: &d_o,
        lse: &lse,
        mask: &mask,
        scale,
        output: case.output,
    };
    let Some(got) = runner(&args)? else {
        return Ok(None);
    };
    // A second call must give the same bits (f16 and bf16 widen to f32 exactly).
    let again = runner(&args)?.unwrap_or_default();
    let bits = |g: &[Vec<f32>]| {
        g.iter()
            .flatten()
            .map(|x| x.to_bits())
            .collect::<Vec<u32>>()
    };
    let repeated = bits(&got) == bits(&again);
    let [qw, kw, vw, dow] = [&q, &k, &v, &d_o].map(|x| wide(x));
    let want = reference_backward(&shape, [&qw, &kw, &vw], &dow, &mask, scale.into())?;
    // The gradients, then a 0 that is 1 where the second call differed.
    let mut got: Vec<f64> = got.concat().into_iter().map(f64::from).collect();
    got.push(f64::from(u8::from(!repeated)));
    let want = [want.dq, want.dk, want.dv, vec![0.0]].concat();
    Ok(Some(compare(&got, &want, backward_tolerance(case.bf16))))
}

/// One backward run on a GPU backend, gradients poisoned with NaN before it; `None` where the
/// backend has no path (the CPU).
pub(crate) fn run_backward<T: DeviceFloat16>(
    backends: &Backends,
    backend: Backend,
    args: &BackwardArgs<'_, T>,
) -> Result<BackwardRun> {
    match args.output {
        Output::Input => run_typed::<T, T>(backends, backend, args),
        Output::F32 => run_typed::<T, f32>(backends, backend, args),
    }
}

// (G names the gradients' type in the GPU backends' bodies, which a CPU-only build leaves out.)
#[cfg_attr(
    not(any(feature = "cuda", feature = "wgpu")),
    allow(clippy::extra_unused_type_parameters)
)]
fn run_typed<T: DeviceFloat16, G: DeviceOutput<T>>(
    backends: &Backends,
    backend: Backend,
    args: &BackwardArgs<'_, T>,
) -> Result<BackwardRun> {
    on_device!(backends, backend, |device| {
        let [q, k, v, o, d_o] =
            [args.qkv[0], args.qkv[1], args.qkv[2], args.o, args.d_o].map(|x| device.upload(x));
        let tensors = [&q?, &k?, &v?, &o?, &d_o?];
        let lse = device.upload(args.lse)?;
        let mask = device.upload_mask(args.mask)?;
        let lens = super::backward::gradient_lens(args.shape);
        let [dq, dk, dv] = lens.map(|len| device.upload(&vec![nan_bits::<G>(); len]));
        let (mut dq, mut dk, mut dv) = (dq?, dk?, dv?);
        let gradients = [&mut dq, &mut dk, &mut dv];
        let mut workspace = Default::default();
        let (shape, scale) = (args.shape, args.scale);
        device.attention_backward(
            shape,
            (tensors, &lse),
            &mask,
            gradients,
            scale,
            &mut workspace,
        )?;
        let widened = |g: Vec<G>| g.into_iter().map(|x| x.to_f64() as f32).collect();
        let [dq, dk, dv] = [&dq, &dk, &dv].map(|g| device.download(g));
        Ok([widened(dq?), widened(dk?), widened(dv?)])
    })
}

fn check_cases() -> Vec<CheckCase> {
    let cases = [
        Case::new(200, 200),
        Case {
            mask: MaskKind::Window(90, true),
            heads_q: 4,
            heads_kv: 2,
            ..Case::new(150, 300)
        },
        Case {
            mask: MaskKind::EmptyRows,
            d: 128,
            block: 128,
            ..Case::new(300, 260)
        },
    ];
    cases
        .into_iter()
        .map(|case| {
            CheckCase::new(
                "attention-backward",
                case.to_string(),
                move |backends, backend| check_backward(backends, backend, &case, 0x5eed),
            )
        })
        .collect()
}
