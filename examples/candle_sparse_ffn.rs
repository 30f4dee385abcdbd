//! A transformer feed-forward block (MiniLM-sized: 384 → 1536 → 384, GELU) with its two
//! weights pruned to 50, 80 and 90% and run through `tilefuse::candle::SparseLinear`, beside
//! candle's dense layers: the sparse output against a dense computation with the same pruned
//! weights (the kernels' error), against the unpruned block (what pruning costs), and the
//! times of both.
//!
//!     cargo run --release --features candle --example candle_sparse_ffn [-- --cuda]
//!
//! Weights are random (seeded) unless `--weights FILE` names a safetensors file with
//! `intermediate.dense.weight`/`.bias` and `output.dense.weight`/`.bias` (one BERT layer's
//! feed-forward, as MiniLM's `encoder.layer.N.` tensors are named once the prefix is cut).
//! Both blocks compute GELU in f32; the times are the whole block's.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;
use tilefuse::candle::{Prune, SparseLinear};

const HIDDEN: usize = 384;
const INTERMEDIATE: usize = 1536;
const TOKENS: usize = 256;
const DTYPE: DType = DType::F16;

/// A feed-forward block: `down(gelu(up(x)))`.
struct FeedForward<L> {
    up: L,
    down: L,
}

impl<L: Module> FeedForward<L> {
    /// GELU in f32 whatever the layers' type.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let up = self.up.forward(x)?;
        let activated = up.to_dtype(DType::F32)?.gelu()?.to_dtype(up.dtype())?;
        self.down.forward(&activated)
    }
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let device = if args.iter().any(|a| a == "--cuda") {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };
    let weights = args
        .iter()
        .position(|a| a == "--weights")
        .and_then(|i| args.get(i + 1));
    let dense = match weights {
        Some(path) => load_block(path, &device)?,
        None => random_block(&device)?,
    };
    let x = Tensor::randn(0f32, 1.0, (TOKENS, HIDDEN), &device)?.to_dtype(DTYPE)?;
    let reference = dense.forward(&x.to_dtype(DType::F32)?)?;
    let in_dtype = |linear: &Linear| -> candle_core::Result<Linear> {
        let bias = linear.bias().map(|b| b.to_dtype(DTYPE)).transpose()?;
        Ok(Linear::new(linear.weight().to_dtype(DTYPE)?, bias))
    };
    let dense16 = FeedForward {
        up: in_dtype(&dense.up)?,
        down: in_dtype(&dense.down)?,
    };
    let dense_time = time(|| dense16.forward(&x), &device)?;
    println!(
        "feed-forward {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN}, {TOKENS} tokens, {DTYPE:?}, {:?}",
        device.location()
    );
    if cfg!(debug_assertions) {
        println!("(a debug build: tilefuse's CPU kernel is not optimised; time with --release)");
    }
    println!("candle dense: {:.3} ms", dense_time.as_secs_f64() * 1e3);
    println!(
        "sparsity | kept | vs same pruned weights, dense | vs unpruned | sparse ms | dense / sparse"
    );
    for sparsity in [0.5, 0.8, 0.9] {
        let prune = Prune::per_row(sparsity);
        let sparse = FeedForward {
            up: SparseLinear::from_linear(&dense.up, prune)?,
            down: SparseLinear::from_linear(&dense.down, prune)?,
        };
        // candle's dense layers with exactly the weights the sparse ones keep, in f32.
        let pruned = FeedForward {
            up: Linear::new(
                sparse.up.dense_weight()?.to_dtype(DType::F32)?,
                dense.up.bias().cloned(),
            ),
            down: Linear::new(
                sparse.down.dense_weight()?.to_dtype(DType::F32)?,
                dense.down.bias().cloned(),
            ),
        };
        let y = sparse.forward(&x)?.to_dtype(DType::F32)?;
        let same = relative_error(&y, &pruned.forward(&x.to_dtype(DType::F32)?)?)?;
        let unpruned = relative_error(&y, &reference)?;
        // The kernels sum in f32 and round the intermediate and the output to f16 once each.
        if same > 2e-3 {
            candle_core::bail!("sparse and dense outputs differ by {same:e} at {sparsity}");
        }
        let sparse_time = time(|| sparse.forward(&x), &device)?;
        println!(
            "{:>7.0}% | {:>4.0}% | {same:>29.2e} | {unpruned:>11.3} | {:>9.3} | {:>14.2}",
            sparsity * 100.0,
            (1.0 - sparsity) * 100.0,
            sparse_time.as_secs_f64() * 1e3,
            dense_time.as_secs_f64() / sparse_time.as_secs_f64()
        );
    }
    Ok(())
}

/// `‖got − want‖ / ‖want‖`.
fn relative_error(got: &Tensor, want: &Tensor) -> candle_core::Result<f64> {
    let diff = (got - want)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let norm = want.sqr()?.sum_all()?.to_scalar::<f32>()?;
    Ok((f64::from(diff) / f64::from(norm)).sqrt())
}

/// The median of several timed runs after a warm-up, each waited for.
fn time(
    mut run: impl FnMut() -> candle_core::Result<Tensor>,
    device: &Device,
) -> candle_core::Result<Duration> {
    let mut times = Vec::new();
    for i in 0..12 {
        let start = Instant::now();
        let y = run()?;
        device.synchronize()?;
        drop(y);
        if i >= 2 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn random_block(device: &Device) -> candle_core::Result<FeedForward<Linear>> {
    let linear = |m: usize, k: usize| -> candle_core::Result<Linear> {
        let scale = 1.0 / (k as f32).sqrt();
        Ok(Linear::new(
            Tensor::randn(0f32, scale, (m, k), device)?,
            Some(Tensor::randn(0f32, 0.02, m, device)?),
        ))
    };
    Ok(FeedForward {
        up: linear(INTERMEDIATE, HIDDEN)?,
        down: linear(HIDDEN, INTERMEDIATE)?,
    })
}

fn load_block(path: &str, device: &Device) -> candle_core::Result<FeedForward<Linear>> {
    let tensors = candle_core::safetensors::load(path, device)?;
    let get = |name: &str| -> candle_core::Result<Tensor> {
        tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::msg(format!("{path}: no tensor {name}")))?
            .to_dtype(DType::F32)
    };
    let linear = |prefix: &str| -> candle_core::Result<Linear> {
        Ok(Linear::new(
            get(&format!("{prefix}.weight"))?,
            Some(get(&format!("{prefix}.bias"))?),
        ))
    };
    Ok(FeedForward {
        up: linear("intermediate.dense")?,
        down: linear("output.dense")?,
    })
}
