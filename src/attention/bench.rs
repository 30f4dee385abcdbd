//! Attention's benchmark cases for `tilefuse bench` and `benches/attention.rs`: b = 1,
//! hq = 32, d = 128 at 8k and 32k keys, for the masks of docs/design.md, and decode-shaped
//! calls (1 and 16 queries against 32k keys, GQA 32/8); the backward pass's on the same
//! masks and lengths.

use half::f16;

use super::check::OnDevice;
use super::{AttentionShape, BlockMask, MaskShape};
use crate::error::Result;
use crate::harness::device::{Device, on_device};
use crate::harness::{Backend, Backends, BenchCase, Rng, Runner};

/// The benchmark masks (docs/design.md), at b = 1, hq = 32, d = 128, 128 x 128 blocks.
const BENCH_MASKS: [&str; 4] = [
    "causal",
    "causal window 4096",
    "streaming 128+4096",
    "random 10%",
];

fn bench_mask(name: &str, l: usize) -> Result<BlockMask> {
    let shape = MaskShape::new(l, l);
    match name {
        "causal" => BlockMask::causal(shape),
        "causal window 4096" => BlockMask::sliding_window(shape, 4096, true),
        "streaming 128+4096" => BlockMask::streaming(shape, 128, 4096),
        _ => {
            let mut rng = Rng::new(10);
            let picks: Vec<bool> = (0..shape.q_blocks() * shape.kv_blocks())
                .map(|_| rng.unit() < 0.1)
                .collect();
            BlockMask::from_fn(shape, super::ElementMask::None, |_, _, q, kv| {
                if picks[q * shape.kv_blocks() + kv] {
                    super::BlockKind::Full
                } else {
                    super::BlockKind::Skip
                }
            })
        }
    }
}

/// b = 1, hq = 32, d = 128 at l = 8192 and 32768 for every mask (WGSL at 8192 only). FLOPs
/// count the visited blocks: 4·d per (query, key) pair.
pub(super) fn bench_cases() -> Vec<BenchCase> {
    let (heads, d) = (32, 128);
    let mut cases = Vec::new();
    for l in [8192, 32768] {
        for &name in &BENCH_MASKS {
            let blocks = bench_mask(name, l)
                .map(|m| m.stats().mean_blocks_per_row)
                .unwrap_or(0.0);
            let pairs = blocks * (l / 128) as f64 * 128.0 * 128.0;
            let flops = (4.0 * d as f64 * pairs * heads as f64) as u64;
            let bytes = (2 * 4 * l * heads * d) as u64; // q, k, v in, o out
            let case = format!("b=1 hq={heads} d={d} l={l} {name}");
            cases.push(BenchCase::new(
                "attention",
                case.clone(),
                bytes,
                flops,
                move |backends, backend| prepare(backends, backend, name, l, heads, d),
            ));
            // On a GPU of compute capability 9.0 the case above runs the Hopper kernel; this
            // one the portable kernel, beside it.
            #[cfg(feature = "cuda")]
            cases.push(
                BenchCase::new("attention", case, bytes, flops, move |backends, backend| {
                    let shape = AttentionShape::new(1, l, l, heads, heads, d)?;
                    run_portable(backends, backend, shape, bench_mask(name, l)?)
                })
                .by("tilefuse portable"),
            );
        }
    }
    for lq in DECODE_QUERIES {
        let (lk, kv_heads) = (DECODE_KEYS, DECODE_KV_HEADS);
        let flops = (4 * d * lq * lk * heads) as u64;
        let bytes = (2 * 2 * (lq * heads + lk * kv_heads) * d) as u64; // q, o; k, v
        let case = format!("b=1 hq={heads} hkv={kv_heads} d={d} lq={lq} lk={lk} dense");
        cases.push(BenchCase::new(
            "attention",
            case,
            bytes,
            flops,
            move |backends, backend| {
                // (lavapipe's loop budget: minutes at 32k keys.)
                if backend == Backend::Wgpu {
                    return Ok(None);
                }
                let shape = AttentionShape::new(1, lq, lk, heads, kv_heads, d)?;
                let mask = BlockMask::dense(MaskShape::new(lq, lk))?;
                run_shape(backends, backend, shape, mask)
            },
        ));
    }
    cases
}

/// The decode-shaped cases: queries, keys and key-value heads (GQA 32/8).
const DECODE_QUERIES: [usize; 2] = [1, 16];
const DECODE_KEYS: usize = 32768;
const DECODE_KV_HEADS: usize = 8;

fn prepare<'a>(
    backends: &'a Backends,
    backend: Backend,
    mask: &str,
    l: usize,
    heads: usize,
    d: usize,
) -> Result<Option<Runner<'a>>> {
    // lavapipe's loop budget makes WGSL at 32k keys a matter of minutes.
    if backend == Backend::Wgpu && l > 8192 {
        return Ok(None);
    }
    let shape = AttentionShape::new(1, l, l, heads, heads, d)?;
    run_shape(backends, backend, shape, bench_mask(mask, l)?)
}

/// A runner of attention of `shape` (batch 1) with `mask` on `backend`.
fn run_shape(
    backends: &Backends,
    backend: Backend,
    shape: AttentionShape,
    mask: BlockMask,
) -> Result<Option<Runner<'_>>> {
    let AttentionShape {
        lq,
        lk,
        heads_q,
        heads_kv,
        d,
        ..
    } = shape;
    let queries = vec![f16::from_f32(0.01); lq * heads_q * d];
    let keys = vec![f16::from_f32(0.01); lk * heads_kv * d];
    let scale = 1.0 / (d as f32).sqrt();
    on_device!(backends, backend, |device| {
        let (q, k, v) = (
            device.upload(&queries)?,
            device.upload(&keys)?,
            device.upload(&keys)?,
        );
        let mask = device.upload_mask(&mask)?;
        let mut o = device.upload(&queries)?;
        let mut lse = device.zeros::<f32>(lq * heads_q)?;
        let mut workspace = Default::default();
        Ok(Runner::new(device.clock(), move || {
            let outputs = (&mut o, Some(&mut lse));
            device.attention(&shape, [&q, &k, &v], &mask, outputs, scale, &mut workspace)
        }))
    })
}

/// [`run_shape`] on CUDA with the portable kernel forced; none on other backends.
#[cfg(feature = "cuda")]
fn run_portable(
    backends: &Backends,
    backend: Backend,
    shape: AttentionShape,
    mask: BlockMask,
) -> Result<Option<Runner<'_>>> {
    use super::cuda::{
        AttentionWorkspace, DeviceBlockMask, ForwardKernel, Inputs, Outputs,
        attention_with_workspace,
    };
    if backend != Backend::Cuda {
        return Ok(None);
    }
    let cuda = backends.cuda()?;
    let [q_len, k_len, ..] = shape.min_lens();
    let queries = vec![f16::from_f32(0.01); q_len];
    let keys = vec![f16::from_f32(0.01); k_len];
    let [q, k, v] = [&queries, &keys, &keys].map(|x| cuda.upload(x));
    let (q, k, v) = (q?, k?, v?);
    let mask = DeviceBlockMask::upload(cuda, &mask)?;
    let mut o = cuda.upload(&queries)?;
    let mut lse = cuda.upload(&vec![0.0f32; shape.lq * shape.heads_q])?;
    let mut workspace = AttentionWorkspace::new().with_forward_kernel(ForwardKernel::Portable);
    let scale = 1.0 / (shape.d as f32).sqrt();
    Ok(Some(Runner::new(cuda.clock(), move || {
        let inputs = Inputs {
            q: &q,
            k: &k,
            v: &v,
        };
        let outputs = Outputs {
            o: &mut o,
            lse: Some(&mut lse),
        };
        attention_with_workspace(cuda, &shape, inputs, &mask, outputs, scale, &mut workspace)
    })))
}

/// The backward pass on the forward's masks and shapes (b = 1, hq = 32, d = 128 at 8k and
/// 32k; CUDA), gradients in f16. FLOPs count the visited blocks at 2.5 times the
/// forward's, as FlashAttention counts them; bytes are q, k, v, o, dO in and dq, dk, dv out.
pub(super) fn backward_bench_cases() -> Vec<BenchCase> {
    let (heads, d) = (32, 128);
    let mut cases = Vec::new();
    for l in [8192, 32768] {
        for &name in &BENCH_MASKS {
            let blocks = bench_mask(name, l)
                .map(|m| m.stats().mean_blocks_per_row)
                .unwrap_or(0.0);
            let pairs = blocks * (l / 128) as f64 * 128.0 * 128.0;
            let flops = (2.5 * 4.0 * d as f64 * pairs * heads as f64) as u64;
            let bytes = (2 * 8 * l * heads * d) as u64;
            let case = format!("b=1 hq={heads} d={d} l={l} {name}");
            cases.push(BenchCase::new(
                "attention-backward",
                case,
                bytes,
                flops,
                move |backends, backend| {
                    let shape = AttentionShape::new(1, l, l, heads, heads, d)?;
                    run_backward(backends, backend, shape, bench_mask(name, l)?)
                },
            ));
        }
    }
    cases
}

/// A runner of the backward pass of `shape` with `mask` on `backend` (not WGSL, whose
/// invocation-per-row backward would take minutes of the GPU bundle's bench time): the
/// forward runs once first, for its o and lse.
fn run_backward(
    backends: &Backends,
    backend: Backend,
    shape: AttentionShape,
    mask: BlockMask,
) -> Result<Option<Runner<'_>>> {
    if backend == Backend::Wgpu {
        return Ok(None);
    }
    let [q_len, k_len, ..] = shape.min_lens();
    let (queries, keys) = (
        vec![f16::from_f32(0.01); q_len],
        vec![f16::from_f32(0.01); k_len],
    );
    let scale = 1.0 / (shape.d as f32).sqrt();
    on_device!(backends, backend, |device| {
        let [q, k, v] = [&queries, &keys, &keys].map(|x| device.upload(x));
        let (q, k, v) = (q?, k?, v?);
        let (d_o, mut o) = (device.upload(&queries)?, device.upload(&queries)?);
        let mut lse = device.zeros::<f32>(shape.lq * shape.heads_q)?;
        let [dq, dk, dv] = [&queries, &keys, &keys].map(|x| device.upload(x));
        let (mut dq, mut dk, mut dv) = (dq?, dk?, dv?);
        let mask = device.upload_mask(&mask)?;
        let mut workspace = Default::default();
        let outputs = (&mut o, Some(&mut lse));
        device.attention(&shape, [&q, &k, &v], &mask, outputs, scale, &mut workspace)?;
        Ok(Runner::new(device.clock(), move || {
            let forward = ([&q, &k, &v, &o, &d_o], &lse);
            let gradients = [&mut dq, &mut dk, &mut dv];
            device.attention_backward::<f16, f16>(
                &shape,
                forward,
                &mask,
                gradients,
                scale,
                &mut workspace,
            )
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mask at both lengths, and the decode shapes under the names peers.py gives its
    /// SDPA rows; with CUDA, each mask's case also run by the portable kernel.
    #[test]
    fn every_case_is_named_as_the_peers_name_it() {
        let cases = bench_cases();
        let portable = cases
            .iter()
            .filter(|c| c.implementation == "tilefuse portable")
            .count();
        let expected = if cfg!(feature = "cuda") {
            2 * BENCH_MASKS.len()
        } else {
            0
        };
        assert_eq!(portable, expected);
        let names: Vec<String> = cases
            .into_iter()
            .filter(|c| c.implementation == "tilefuse")
            .map(|c| c.name)
            .collect();
        assert_eq!(names.len(), 2 * BENCH_MASKS.len() + DECODE_QUERIES.len());
        let backward: Vec<String> = backward_bench_cases().into_iter().map(|c| c.name).collect();
        assert_eq!(backward, names[..2 * BENCH_MASKS.len()]);
        for expected in [
            "b=1 hq=32 d=128 l=32768 random 10%",
            "b=1 hq=32 hkv=8 d=128 lq=1 lk=32768 dense",
            "b=1 hq=32 hkv=8 d=128 lq=16 lk=32768 dense",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
    }
}
