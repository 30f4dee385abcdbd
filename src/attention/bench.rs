//! Attention's benchmark cases for `tilefuse bench` and `benches/attention.rs`: b = 1,
//! hq = 32, d = 128 at 8k and 32k keys, for the masks of docs/design.md.

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
                case,
                bytes,
                flops,
                move |backends, backend| prepare(backends, backend, name, l, heads, d),
            ));
        }
    }
    cases
}

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
    let mask = bench_mask(mask, l)?;
    let values = vec![f16::from_f32(0.01); l * heads * d];
    let scale = 1.0 / (d as f32).sqrt();
    on_device!(backends, backend, |device| {
        let [q, k, v] = [0; 3].map(|_| device.upload(&values));
        let (q, k, v) = (q?, k?, v?);
        let mask = device.upload_mask(&mask)?;
        let mut o = device.upload(&values)?;
        let mut lse = device.zeros::<f32>(l * heads)?;
        Ok(Runner::new(device.clock(), move || {
            device.attention(&shape, [&q, &k, &v], &mask, &mut o, Some(&mut lse), scale)
        }))
    })
}
