//! Attention cases for `tilefuse check` and the integration tests, and its calls on each
//! backend.

use std::fmt;

use half::{bf16, f16};

use super::{AttentionShape, BlockMask, Layout, MaskShape, Strides, reference};
use crate::element::{DeviceFloat16, DeviceOutput, Float16, OutputElement};
use crate::error::Result;
use crate::harness::device::{Device, on_device};
use crate::harness::{Backend, Backends, CheckCase, Comparison, OpEntry, Rng, Tolerance, compare};

/// The registry entry.
pub const ENTRY: OpEntry = OpEntry {
    name: "attention",
    about: "block-sparse attention forward, FlexAttention-style masks (CUDA: FlashAttention-2 on mma.sync)",
    kernel_modules: &["attention"],
    check_cases,
    bench_cases: super::bench::bench_cases,
    #[cfg(feature = "cli")]
    file: Some(&super::cli::FILE),
    #[cfg(all(feature = "cli", feature = "cuda"))]
    profile: Some(&super::cli::PROFILE),
};

/// Which builder makes a case's mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaskKind {
    /// [`BlockMask::dense`].
    Dense,
    /// [`BlockMask::causal`].
    Causal,
    /// [`BlockMask::sliding_window`] with this window, causal or not.
    Window(usize, bool),
    /// [`BlockMask::streaming`] with sink and local keys.
    Streaming(usize, usize),
    /// [`BlockMask::bigbird`]: window, global and random blocks (seed 7).
    BigBird(usize, usize, usize),
    /// [`BlockMask::vertical_slash`] with key blocks 0 and 2 and diagonals 0 and 1.
    VerticalSlash,
    /// Causal, except that the first query block of every odd head sees nothing.
    EmptyRows,
}

/// One check configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    /// Batch.
    pub batch: usize,
    /// Query length.
    pub lq: usize,
    /// Key length.
    pub lk: usize,
    /// Query heads.
    pub heads_q: usize,
    /// Key/value heads.
    pub heads_kv: usize,
    /// Head dimension.
    pub d: usize,
    /// Queries and keys per block (64 or 128).
    pub block: usize,
    /// The mask.
    pub mask: MaskKind,
    /// bf16 inputs (else f16).
    pub bf16: bool,
    /// Strided tensors ([`Case::padded_layout`]) instead of packed ones.
    pub strided: bool,
    /// The output type of the device run.
    pub output: Output,
    /// NaN and ±inf in a few elements of q, k and v: a NaN in q, +inf and −inf in keys 1 and
    /// lk − 1, a NaN and a +inf in v.
    pub non_finite: bool,
}

/// The type a device run writes `o` in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The inputs' type (f16 or bf16), on every backend.
    Input,
    /// f32 (WGSL only).
    F32,
}

impl Case {
    /// f16, d = 64, 64-blocks, 2 query heads on 1 key/value head, causal.
    pub fn new(lq: usize, lk: usize) -> Case {
        Case {
            batch: 1,
            lq,
            lk,
            heads_q: 2,
            heads_kv: 1,
            d: 64,
            block: 64,
            mask: MaskKind::Causal,
            bf16: false,
            strided: false,
            output: Output::Input,
            non_finite: false,
        }
    }

    /// With [`Case::non_finite`]: (tensor 0 q, 1 k, 2 v; sequence position; element of the
    /// row; value) of each non-finite input, in batch 0 and head 0: a NaN in q, +inf and −inf in
    /// keys 1 and lk − 1 (a score of −inf must make its rows NaN, not look masked), a NaN and
    /// a +inf in v.
    fn non_finite_elements(&self) -> Vec<(usize, usize, usize, f64)> {
        if !self.non_finite {
            return Vec::new();
        }
        let d = self.d;
        let elements = [
            (0, self.lq / 2, 0, f64::NAN),
            (1, 1, 3, f64::INFINITY),
            (1, self.lk - 1, 5, f64::NEG_INFINITY),
            (2, 2, 7 % d, f64::NAN),
            (2, self.lk / 2, d - 1, f64::INFINITY),
        ];
        let len = |tensor: usize| if tensor == 0 { self.lq } else { self.lk };
        elements
            .into_iter()
            .filter(|&(tensor, at, _, _)| at < len(tensor))
            .collect()
    }

    /// The shape, with [`Case::padded_layout`] when the case is strided.
    pub fn shape(&self) -> Result<AttentionShape> {
        let shape = AttentionShape::new(
            self.batch,
            self.lq,
            self.lk,
            self.heads_q,
            self.heads_kv,
            self.d,
        )?;
        if self.strided {
            shape.with_layout(self.padded_layout())
        } else {
            Ok(shape)
        }
    }

    /// Strides with gaps before the first row and between rows, heads and batches, in two
    /// orders: q and k as `[b, l, h, d]`, v and o as `[b, h, l, d]` (PyTorch's SDPA layout).
    pub fn padded_layout(&self) -> Layout {
        let d = self.d;
        let sequence_major = |len: usize, heads: usize, gap: usize| {
            let seq = heads * (d + gap) + 8;
            Strides {
                start: gap,
                batch: len * seq + 16,
                seq,
                head: d + gap,
            }
        };
        let head_major = |len: usize, heads: usize| {
            let head = len * (d + 8) + 8;
            Strides {
                start: 24,
                batch: heads * head + 24,
                seq: d + 8,
                head,
            }
        };
        Layout {
            q: sequence_major(self.lq, self.heads_q, 8),
            k: sequence_major(self.lk, self.heads_kv, 16),
            v: head_major(self.lk, self.heads_kv),
            o: head_major(self.lq, self.heads_q),
        }
    }

    /// The mask.
    pub fn block_mask(&self) -> Result<BlockMask> {
        let shape = MaskShape {
            block_m: self.block,
            block_n: self.block,
            ..MaskShape::new(self.lq, self.lk)
        };
        match self.mask {
            MaskKind::Dense => BlockMask::dense(shape),
            MaskKind::Causal => BlockMask::causal(shape),
            MaskKind::Window(w, causal) => BlockMask::sliding_window(shape, w, causal),
            MaskKind::Streaming(sink, local) => BlockMask::streaming(shape, sink, local),
            MaskKind::BigBird(w, g, r) => BlockMask::bigbird(
                MaskShape {
                    heads: self.heads_q,
                    ..shape
                },
                w,
                g,
                r,
                7,
            ),
            MaskKind::VerticalSlash => BlockMask::vertical_slash(shape, &[0, 2], &[0, 1]),
            MaskKind::EmptyRows => {
                let causal = BlockMask::causal(shape)?;
                let shape = MaskShape {
                    heads: self.heads_q,
                    ..shape
                };
                BlockMask::from_fn(shape, causal.element(), |b, h, q, kv| {
                    if h % 2 == 1 && q == 0 {
                        super::BlockKind::Skip
                    } else {
                        causal.row_kind(b, 0, q, kv)
                    }
                })
            }
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}{} b={} lq={} lk={} hq={} hkv={} d={} block={} {:?}",
            if self.bf16 { "bf16" } else { "f16" },
            if self.output == Output::F32 {
                "->f32"
            } else {
                ""
            },
            if self.strided { " strided" } else { "" },
            if self.non_finite { " non-finite" } else { "" },
            self.batch,
            self.lq,
            self.lk,
            self.heads_q,
            self.heads_kv,
            self.d,
            self.block,
            self.mask
        )
    }
}

/// Runs `case` on `backend` with inputs from `seed` (outputs poisoned with NaN) and compares
/// `o` and `lse` with the f64 reference. `Ok(None)` on the CPU (the reference is the CPU path).
pub fn check(
    backends: &Backends,
    backend: Backend,
    case: &Case,
    seed: u64,
) -> Result<Option<Comparison>> {
    if case.bf16 {
        check_typed::<bf16>(backends, backend, case, seed)
    } else {
        check_typed::<f16>(backends, backend, case, seed)
    }
}

fn check_typed<T: DeviceFloat16 + OutputElement<T>>(
    backends: &Backends,
    backend: Backend,
    case: &Case,
    seed: u64,
) -> Result<Option<Comparison>> {
    check_with::<T>(case, seed, |shape, inputs, mask, scale, output| {
        run(backends, backend, shape, inputs, mask, scale, output)
    })
}

/// [`check`] on CUDA with the forward's `kernel` forced (the portable kernel, or the Hopper
/// kernel, an error on other GPUs); `Ok(None)` for f32 outputs, which CUDA does not write.
#[cfg(feature = "cuda")]
pub fn check_cuda_kernel(
    cuda: &crate::backend::cuda::Cuda,
    case: &Case,
    seed: u64,
    kernel: super::cuda::ForwardKernel,
) -> Result<Option<Comparison>> {
    fn typed<T: DeviceFloat16 + OutputElement<T>>(
        cuda: &crate::backend::cuda::Cuda,
        case: &Case,
        seed: u64,
        kernel: super::cuda::ForwardKernel,
    ) -> Result<Option<Comparison>> {
        check_with::<T>(case, seed, |shape, [q, k, v], mask, scale, output| {
            if output == Output::F32 {
                return Ok(None);
            }
            let [q, k, v] = [q, k, v].map(|x| cuda.upload(x));
            let (q, k, v) = (q?, k?, v?);
            let mask = super::cuda::DeviceBlockMask::upload(cuda, mask)?;
            let lse_len = shape.batch * shape.lq * shape.heads_q;
            let mut lse = cuda.upload(&vec![f32::NAN; lse_len])?;
            let mut o = cuda.upload(&vec![T::from_f64(f64::NAN); shape.min_lens()[3]])?;
            let mut workspace = super::cuda::AttentionWorkspace::new().with_forward_kernel(kernel);
            let inputs = super::cuda::Inputs {
                q: &q,
                k: &k,
                v: &v,
            };
            let outputs = super::cuda::Outputs {
                o: &mut o,
                lse: Some(&mut lse),
            };
            super::cuda::attention_with_workspace(
                cuda,
                shape,
                inputs,
                &mask,
                outputs,
                scale,
                &mut workspace,
            )?;
            let o = cuda
                .download(&o)?
                .into_iter()
                .map(|x| x.to_f64() as f32)
                .collect();
            Ok(Some((o, cuda.download(&lse)?)))
        })
    }
    if case.bf16 {
        typed::<bf16>(cuda, case, seed, kernel)
    } else {
        typed::<f16>(cuda, case, seed, kernel)
    }
}

/// The result of one device run of [`run`]: the whole buffer of `o`, widened to f32, and
/// `lse`; `None` where there is no such path.
pub(crate) type RunOutput = Option<(Vec<f32>, Vec<f32>)>;

/// [`check`] with the device run done by `runner`, which takes the arguments of [`run`]
/// after the backend.
pub(crate) fn check_with<T: Float16 + OutputElement<T>>(
    case: &Case,
    seed: u64,
    runner: impl FnOnce(&AttentionShape, [&[T]; 3], &BlockMask, f32, Output) -> Result<RunOutput>,
) -> Result<Option<Comparison>> {
    let shape = case.shape()?;
    let mask = case.block_mask()?;
    let [q_len, k_len, v_len, _] = shape.min_lens();
    let mut rng = Rng::new(seed);
    let mut random = |len, strides, sizes| random_rows::<T>(&mut rng, len, strides, sizes, shape.d);
    let (l, (b, lq, lk)) = (shape.layout(), (shape.batch, shape.lq, shape.lk));
    let mut q = random(q_len, l.q, [b, lq, shape.heads_q]);
    let mut k = random(k_len, l.k, [b, lk, shape.heads_kv]);
    let mut v = random(v_len, l.v, [b, lk, shape.heads_kv]);
    for (tensor, at, element, value) in case.non_finite_elements() {
        let (values, strides) = match tensor {
            0 => (&mut q, l.q),
            1 => (&mut k, l.k),
            _ => (&mut v, l.v),
        };
        values[strides.offset(0, at, 0) + element] = T::from_f64(value);
    }
    let scale = 1.0 / (shape.d as f32).sqrt();
    let ran = runner(&shape, [&q, &k, &v], &mask, scale, case.output)?;
    let Some((o, lse)) = ran else {
        return Ok(None);
    };
    let wide = |x: &[T]| x.iter().map(|&v| v.to_f64()).collect::<Vec<f64>>();
    let (qw, kw, vw) = (wide(&q), wide(&k), wide(&v));
    let want = reference(&shape, &qw, &kw, &vw, &mask, scale.into())?;
    // o's rows in packed order, lse, then one 0 per element of o's buffer outside its rows
    // (1 where the kernel wrote there: the comparison fails on it).
    let mut written_outside = vec![true; o.len()];
    let mut got = Vec::with_capacity(o.len() + lse.len());
    for at in row_starts(l.o, [b, lq, shape.heads_q]) {
        got.extend(o[at..at + shape.d].iter().map(|&x| f64::from(x)));
        written_outside[at..at + shape.d].fill(false);
    }
    got.extend(lse.iter().map(|&x| f64::from(x)));
    let outside = o
        .iter()
        .zip(&written_outside)
        .filter(|&(_, &outside)| outside);
    let outside_flags: Vec<f64> = outside
        .map(|(x, _)| f64::from(u8::from(!x.is_nan())))
        .collect();
    let zeros = vec![0.0; outside_flags.len()];
    got.extend(outside_flags);
    let tolerance = match (case.output, case.bf16) {
        (Output::F32, _) => Tolerance::F32,
        (Output::Input, false) => Tolerance::F16,
        (Output::Input, true) => Tolerance::BF16,
    };
    Ok(Some(compare(
        &got,
        &[want.o, want.lse, zeros].concat(),
        tolerance,
    )))
}

/// The first element of each `d`-row of a tensor of (batch, length, heads) `sizes`, in
/// packed order.
/// A buffer of `len` values whose rows (`d` values at each of `strides`' row starts for
/// `sizes`) are random in [-2, 2); the gaps between them NaN, so that reading one shows.
pub(super) fn random_rows<T: Float16>(
    rng: &mut Rng,
    len: usize,
    strides: Strides,
    sizes: [usize; 3],
    d: usize,
) -> Vec<T> {
    let mut values = vec![T::from_f64(f64::NAN); len];
    for at in row_starts(strides, sizes) {
        for value in &mut values[at..at + d] {
            *value = T::from_f64(rng.uniform(-2.0, 2.0));
        }
    }
    values
}

pub(super) fn row_starts(
    strides: Strides,
    [batch, len, heads]: [usize; 3],
) -> impl Iterator<Item = usize> {
    (0..batch).flat_map(move |b| {
        (0..len).flat_map(move |l| (0..heads).map(move |h| strides.offset(b, l, h)))
    })
}

/// Runs attention once on a GPU backend: q, k, v laid out as `shape.layout()` says, `o`'s
/// buffer (`shape.min_lens()[3]` elements) and `lse` poisoned with NaN. Returns the whole
/// buffer of `o`, widened to f32 (NaN where nothing was written), and `lse`; `Ok(None)` where
/// the backend has no path (the CPU; CUDA with [`Output::F32`]).
pub fn run<T: DeviceFloat16>(
    backends: &Backends,
    backend: Backend,
    shape: &AttentionShape,
    [q, k, v]: [&[T]; 3],
    mask: &BlockMask,
    scale: f32,
    output: Output,
) -> Result<RunOutput> {
    if backend == Backend::Cuda && output == Output::F32 {
        return Ok(None);
    }
    let o_len = shape.min_lens()[3];
    let lse_len = shape.batch * shape.lq * shape.heads_q;
    on_device!(backends, backend, |device| {
        let [q, k, v] = [q, k, v].map(|x| device.upload(x));
        let qkv = [&q?, &k?, &v?];
        let mask = device.upload_mask(mask)?;
        let mut lse = device.upload(&vec![f32::NAN; lse_len])?;
        let mut workspace = Default::default();
        let o = if output == Output::F32 {
            let mut o = device.upload(&vec![f32::NAN; o_len])?;
            let outputs = (&mut o, Some(&mut lse));
            device.attention_f32(shape, qkv, &mask, outputs, scale)?;
            device.download(&o)?
        } else {
            let mut o = device.upload(&vec![T::from_f64(f64::NAN); o_len])?;
            let outputs = (&mut o, Some(&mut lse));
            device.attention(shape, qkv, &mask, outputs, scale, &mut workspace)?;
            let o = device.download(&o)?;
            o.into_iter().map(|x| x.to_f64() as f32).collect()
        };
        Ok((o, device.download(&lse)?))
    })
}

/// Attention's outputs: `o` and, when given, `lse`.
pub(super) type Outputs<'a, O, L> = (&'a mut O, Option<&'a mut L>);

/// Attention's calls on each backend.
pub(super) trait OnDevice: Device {
    /// A block mask in this device's memory.
    type Mask;
    /// Scratch memory kept from call to call.
    type Workspace: Default;
    /// Uploads `mask`.
    fn upload_mask(&self, mask: &BlockMask) -> Result<Self::Mask>;
    /// Enqueues attention with `o` in the inputs' type.
    fn attention<T: DeviceFloat16>(
        &self,
        shape: &AttentionShape,
        qkv: [&Self::Buffer<T>; 3],
        mask: &Self::Mask,
        outputs: Outputs<'_, Self::Buffer<T>, Self::Buffer<f32>>,
        scale: f32,
        workspace: &mut Self::Workspace,
    ) -> Result<()>;
    /// Enqueues attention with `o` in f32 (WGSL only).
    fn attention_f32<T: DeviceFloat16>(
        &self,
        shape: &AttentionShape,
        qkv: [&Self::Buffer<T>; 3],
        mask: &Self::Mask,
        outputs: Outputs<'_, Self::Buffer<f32>, Self::Buffer<f32>>,
        scale: f32,
    ) -> Result<()>;
    /// Enqueues the backward pass from the forward's `o` and `lse`, gradients in `G`.
    fn attention_backward<T: DeviceFloat16, G: DeviceOutput<T>>(
        &self,
        shape: &AttentionShape,
        forward: BackwardTensors<'_, Self::Buffer<T>, Self::Buffer<f32>>,
        mask: &Self::Mask,
        gradients: [&mut Self::Buffer<G>; 3],
        scale: f32,
        workspace: &mut Self::Workspace,
    ) -> Result<()>;
}

/// What the backward reads: q, k, v, o and do, and lse.
pub(super) type BackwardTensors<'a, B, L> = ([&'a B; 5], &'a L);

/// `OnDevice` for a backend's handle: its module's mask type, workspace and `attention`, and
/// the backend's own `attention_f32`.
macro_rules! forward_to {
    ($feature:literal, $handle:ty, $module:ident, $mask:ident, $workspace:ty,
     $attention:item, $attention_f32:item, $backward:item) => {
        #[cfg(feature = $feature)]
        impl OnDevice for $handle {
            type Mask = super::$module::$mask;
            type Workspace = $workspace;
            fn upload_mask(&self, mask: &BlockMask) -> Result<Self::Mask> {
                super::$module::$mask::upload(self, mask)
            }
            $attention
            $attention_f32
            $backward
        }
    };
}
// The CUDA kernel writes o in the inputs' type only.
forward_to!(
    "cuda",
    crate::backend::cuda::Cuda,
    cuda,
    DeviceBlockMask,
    super::cuda::AttentionWorkspace,
    fn attention<T: DeviceFloat16>(
        &self,
        shape: &AttentionShape,
        [q, k, v]: [&Self::Buffer<T>; 3],
        mask: &Self::Mask,
        (o, lse): Outputs<'_, Self::Buffer<T>, Self::Buffer<f32>>,
        scale: f32,
        workspace: &mut Self::Workspace,
    ) -> Result<()> {
        let inputs = super::cuda::Inputs { q, k, v };
        let outputs = super::cuda::Outputs { o, lse };
        super::cuda::attention_with_workspace(self, shape, inputs, mask, outputs, scale, workspace)
    },
    fn attention_f32<T: DeviceFloat16>(
        &self,
        _: &AttentionShape,
        _: [&Self::Buffer<T>; 3],
        _: &Self::Mask,
        _: Outputs<'_, Self::Buffer<f32>, Self::Buffer<f32>>,
        _: f32,
    ) -> Result<()> {
        Err(crate::Error::invalid(
            "attention output (CUDA)",
            "the inputs' type",
            "f32",
        ))
    },
    fn attention_backward<T: DeviceFloat16, G: DeviceOutput<T>>(
        &self,
        shape: &AttentionShape,
        ([q, k, v, o, d_o], lse): BackwardTensors<'_, Self::Buffer<T>, Self::Buffer<f32>>,
        mask: &Self::Mask,
        [dq, dk, dv]: [&mut Self::Buffer<G>; 3],
        scale: f32,
        workspace: &mut Self::Workspace,
    ) -> Result<()> {
        let inputs = super::cuda::BackwardInputs {
            q,
            k,
            v,
            o,
            d_o,
            lse,
        };
        let outputs = super::cuda::BackwardOutputs { dq, dk, dv };
        super::cuda::attention_backward_with_workspace::<T, G, _, _, _, _, _, _>(
            self, shape, inputs, mask, outputs, scale, workspace,
        )
    }
);
forward_to!(
    "wgpu",
    crate::backend::wgpu::Wgpu,
    wgpu,
    GpuBlockMask,
    super::wgpu::BackwardWorkspace,
    fn attention<T: DeviceFloat16>(
        &self,
        shape: &AttentionShape,
        [q, k, v]: [&Self::Buffer<T>; 3],
        mask: &Self::Mask,
        (o, lse): Outputs<'_, Self::Buffer<T>, Self::Buffer<f32>>,
        scale: f32,
        _: &mut Self::Workspace,
    ) -> Result<()> {
        let inputs = super::wgpu::Inputs { q, k, v };
        super::wgpu::attention(self, shape, inputs, mask, o, lse, scale)
    },
    fn attention_f32<T: DeviceFloat16>(
        &self,
        shape: &AttentionShape,
        [q, k, v]: [&Self::Buffer<T>; 3],
        mask: &Self::Mask,
        (o, lse): Outputs<'_, Self::Buffer<f32>, Self::Buffer<f32>>,
        scale: f32,
    ) -> Result<()> {
        let inputs = super::wgpu::Inputs { q, k, v };
        super::wgpu::attention(self, shape, inputs, mask, o, lse, scale)
    },
    fn attention_backward<T: DeviceFloat16, G: DeviceOutput<T>>(
        &self,
        shape: &AttentionShape,
        ([q, k, v, o, d_o], lse): BackwardTensors<'_, Self::Buffer<T>, Self::Buffer<f32>>,
        mask: &Self::Mask,
        [dq, dk, dv]: [&mut Self::Buffer<G>; 3],
        scale: f32,
        workspace: &mut Self::Workspace,
    ) -> Result<()> {
        let inputs = super::wgpu::BackwardInputs {
            q,
            k,
            v,
            o,
            d_o,
            lse,
        };
        let outputs = super::wgpu::BackwardOutputs { dq, dk, dv };
        super::wgpu::attention_backward_with_workspace(
            self, shape, inputs, mask, outputs, scale, workspace,
        )
    }
);

fn check_cases() -> Vec<CheckCase> {
    let cases = [
        Case::new(300, 300),
        Case {
            mask: MaskKind::Window(100, true),
            heads_q: 4,
            ..Case::new(200, 333)
        },
        Case {
            mask: MaskKind::EmptyRows,
            bf16: true,
            d: 128,
            block: 128,
            ..Case::new(257, 130)
        },
        Case {
            mask: MaskKind::Dense,
            heads_q: 8,
            heads_kv: 8,
            ..Case::new(65, 1)
        },
        Case {
            strided: true,
            batch: 2,
            heads_q: 4,
            ..Case::new(150, 260)
        },
    ];
    cases
        .into_iter()
        .map(|case| {
            CheckCase::new("attention", case.to_string(), move |backends, backend| {
                check(backends, backend, &case, 0x5eed)
            })
        })
        .collect()
}
