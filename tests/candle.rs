//! tilefuse's ops through candle, forward and backward, against candle's own dense
//! computation of the same function (matmul, softmax with a dense mask, a sequential loop for
//! the scan) and its autograd. Each test body runs on candle's CPU device and, with the
//! `candle-cuda` feature and a CUDA device, on that device too.

use candle_core::{D, DType, Device, IndexOp, Module, Tensor, Var};
use tilefuse::attention::{BlockMask, MaskShape};
use tilefuse::candle::{
    Prune, SparseLinear, block_sparse_attention, block_sparse_attention_with_lse, scan,
};
use tilefuse::harness::Rng;

/// Defines `$name::cpu` and `$name::cuda` running `$body(&device, seed)`: the CUDA one skips
/// (saying so) where the build or the machine has no CUDA device, unless
/// `TILEFUSE_REQUIRE_CUDA_DEVICE=1` says it must run.
macro_rules! on_devices {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn cpu() {
                super::run_on(&candle_core::Device::Cpu, super::$name);
            }
            #[test]
            fn cuda() {
                match super::cuda_device() {
                    Some(device) => super::run_on(&device, super::$name),
                    None => eprintln!("{}: SKIPPED: no CUDA device", stringify!($name)),
                }
            }
        }
    )*};
}

on_devices!(
    sparse_linear_matches_dense_matmul,
    sparse_linear_saves_and_loads,
    attention_matches_dense_softmax,
    attention_gradients_match_autograd,
    attention_lse_matches_dense_logsumexp,
    real_scan_matches_a_sequential_loop,
    complex_scan_matches_a_sequential_loop,
);

fn cuda_device() -> Option<Device> {
    let required = std::env::var("TILEFUSE_REQUIRE_CUDA_DEVICE").is_ok_and(|v| v == "1");
    let device = if cfg!(feature = "candle-cuda") {
        Device::new_cuda(0).ok()
    } else {
        None
    };
    assert!(
        device.is_some() || !required,
        "TILEFUSE_REQUIRE_CUDA_DEVICE=1 but no CUDA device"
    );
    device
}

fn run_on(device: &Device, body: fn(&Device, u64) -> candle_core::Result<()>) {
    let seed = Rng::fresh_seed();
    if let Err(e) = body(device, seed) {
        panic!("seed {seed} on {:?}: {e}", device.location());
    }
}

/// A seeded random tensor with values uniform in [lo, hi).
fn random(
    rng: &mut Rng,
    dims: &[usize],
    lo: f64,
    hi: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let len = dims.iter().product();
    Tensor::from_vec(rng.fill(len, lo, hi, |v| v as f32), dims, device)
}

/// The largest `|got − want| / (atol + rtol·|want|)`: at most 1 where the two agree.
fn excess(got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> candle_core::Result<f64> {
    let got = got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let want = want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(got.len(), want.len());
    Ok(got
        .iter()
        .zip(&want)
        .map(|(g, w)| {
            if g.is_nan() || w.is_nan() {
                f64::INFINITY
            } else {
                (g - w).abs() / (atol + rtol * w.abs())
            }
        })
        .fold(0.0, f64::max))
}

fn assert_close(
    what: &str,
    got: &Tensor,
    want: &Tensor,
    atol: f64,
    rtol: f64,
) -> candle_core::Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let excess = excess(got, want, atol, rtol)?;
    if excess > 1.0 {
        candle_core::bail!("{what}: off by {excess:.3} x (atol {atol}, rtol {rtol})");
    }
    Ok(())
}

/// The float types a device's attention path takes, with the rounding of one stored value.
fn attention_types(device: &Device) -> Vec<(DType, f64)> {
    let sixteen = [(DType::F16, 2f64.powi(-11)), (DType::BF16, 2f64.powi(-8))];
    match device {
        Device::Cpu => [(DType::F32, 2f64.powi(-24))]
            .into_iter()
            .chain(sixteen)
            .collect(),
        _ => sixteen.to_vec(),
    }
}

fn sparse_linear_matches_dense_matmul(device: &Device, seed: u64) -> candle_core::Result<()> {
    let mut rng = Rng::new(seed);
    let (m, k) = (96, 200);
    let weight = random(&mut rng, &[m, k], -0.1, 0.1, device)?;
    let bias = random(&mut rng, &[m], -1.0, 1.0, device)?;
    for (prune, x_dims) in [
        (Prune::per_row(0.8), vec![3, 7, k]),
        (Prune::global(0.5), vec![70, k]),
        (Prune::per_row(0.9), vec![1, k]),
    ] {
        let layer = SparseLinear::from_weight(&weight, Some(&bias), prune)?;
        let kept = (m * k) as f64 * (1.0 - prune.sparsity);
        assert!(
            (layer.nnz() as f64 - kept).abs() <= m as f64,
            "nnz {} for {kept}",
            layer.nnz()
        );
        let w = layer.dense_weight()?.to_dtype(DType::F32)?;
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let x = random(&mut rng, &x_dims, -1.0, 1.0, device)?.to_dtype(dtype)?;
            let y = layer.forward(&x)?;
            assert_eq!(y.dtype(), dtype);
            let mut out_dims = x_dims.clone();
            *out_dims.last_mut().unwrap() = m;
            assert_eq!(y.dims(), out_dims);
            // candle's dense computation with the same pruned weight, in f32 from the same x.
            let x32 = x.to_dtype(DType::F32)?.reshape(((), k))?;
            let dense = x32
                .matmul(&w.t()?)?
                .broadcast_add(&bias)?
                .reshape(out_dims)?;
            // The sums are exact to f32; the output rounds once to its type, and on CUDA x
            // is first rounded to the weight's f16 (2^-11 of each of ~40 products of 0.1).
            let unit = match dtype {
                DType::F32 if device.is_cpu() => 2f64.powi(-20),
                DType::F32 => 2f64.powi(-10),
                DType::F16 => 2f64.powi(-10),
                _ => 2f64.powi(-7),
            };
            assert_close(&format!("{prune:?} {dtype:?}"), &y, &dense, unit, unit)?;
        }
    }
    // A candle Linear and Module::forward give the same.
    let linear = candle_nn::Linear::new(weight.clone(), Some(bias.clone()));
    let from_linear = SparseLinear::from_linear(&linear, Prune::per_row(0.8))?;
    let x = random(&mut rng, &[4, k], -1.0, 1.0, device)?;
    let direct = SparseLinear::from_weight(&weight, Some(&bias), Prune::per_row(0.8))?;
    assert_close(
        "from_linear",
        &Module::forward(&from_linear, &x)?,
        &direct.forward(&x)?,
        0.0,
        0.0,
    )?;
    // Wrong input width: an error naming x and k.
    let message = layer_error(&direct, &Tensor::zeros((2, k + 1), DType::F32, device)?);
    assert!(
        message.contains("x") && message.contains(&format!("k = {k}")),
        "{message}"
    );
    // No gradient flows through it: an error, not a silent zero.
    let var = Var::from_tensor(&x)?;
    assert!(
        direct
            .forward(var.as_tensor())?
            .sum_all()?
            .backward()
            .is_err()
    );
    Ok(())
}

fn layer_error(layer: &SparseLinear, x: &Tensor) -> String {
    layer.forward(x).expect_err("an error").to_string()
}

fn sparse_linear_saves_and_loads(device: &Device, seed: u64) -> candle_core::Result<()> {
    let mut rng = Rng::new(seed);
    let weight = random(&mut rng, &[40, 72], -1.0, 1.0, device)?.to_dtype(DType::BF16)?;
    let layer = SparseLinear::from_weight(&weight, None, Prune::global(0.7))?;
    assert_eq!(layer.dtype(), DType::BF16);
    let dir = std::env::temp_dir().join(format!("tilefuse-candle-{seed}"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("layer.safetensors");
    layer.save(&path)?;
    let loaded = SparseLinear::load(&path, None, device)?;
    let x = random(&mut rng, &[5, 72], -1.0, 1.0, device)?.to_dtype(DType::BF16)?;
    assert_close(
        "loaded",
        &loaded.forward(&x)?,
        &layer.forward(&x)?,
        0.0,
        0.0,
    )?;
    // A Tiled-CSL file of the same weight loads too.
    let dense: Vec<half::bf16> = layer.dense_weight()?.flatten_all()?.to_vec1()?;
    let tiled = tilefuse::spmm::TiledCsl::encode(&dense, 40, 72)?;
    tiled.save(dir.join("tiled.safetensors"))?;
    let from_tiled = SparseLinear::load(dir.join("tiled.safetensors"), None, device)?;
    assert_close(
        "tiled-csl",
        &from_tiled.forward(&x)?,
        &layer.forward(&x)?,
        0.0,
        0.0,
    )?;
    // Not a weight file: tilefuse's message, whole.
    std::fs::write(dir.join("bad.safetensors"), b"not safetensors")?;
    let message = SparseLinear::load(dir.join("bad.safetensors"), None, device)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("safetensors: expected a safetensors file"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The mask as candle's additive bias `[b | 1, h | 1, lq, lk]`: 0 where allowed, −inf not.
fn dense_mask(
    mask: &BlockMask,
    b: usize,
    h: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let shape = mask.shape();
    let mut bias = Vec::with_capacity(b * h * shape.lq * shape.lk);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..shape.lq {
                for j in 0..shape.lk {
                    bias.push(if mask.allows(bi, hi, i, j) {
                        0f32
                    } else {
                        f32::NEG_INFINITY
                    });
                }
            }
        }
    }
    Tensor::from_vec(bias, (b, h, shape.lq, shape.lk), device)
}

/// candle's attention in f32: `[b, l, h, d]` in, heads repeated for GQA, softmax with the
/// dense mask.
fn dense_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let hq = q.dim(2)?;
    let heads = |t: &Tensor| -> candle_core::Result<Tensor> {
        let t = t.to_dtype(DType::F32)?.transpose(1, 2)?; // [b, h, l, d]
        let (b, h, l, d) = t.dims4()?;
        // Query head i reads key/value head i / (hq / hkv).
        t.unsqueeze(2)?
            .broadcast_as((b, h, hq / h, l, d))?
            .reshape((b, hq, l, d))?
            .contiguous()
    };
    let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
    let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
    p.matmul(&v)?.transpose(1, 2)?.contiguous()
}

/// Shapes: causal, GQA, ragged lengths, a sliding window; d = 64 and 128 (what CUDA takes).
fn attention_cases() -> candle_core::Result<Vec<([usize; 5], BlockMask)>> {
    // [b, lq, lk, hq, hkv] and d from the case index.
    Ok(vec![
        (
            [2, 100, 100, 2, 2],
            BlockMask::causal(MaskShape::new(100, 100))?,
        ),
        (
            [1, 70, 150, 4, 2],
            BlockMask::dense(MaskShape::new(70, 150))?,
        ),
        (
            [1, 200, 200, 2, 1],
            BlockMask::sliding_window(MaskShape::new(200, 200), 40, true)?,
        ),
    ])
}

/// Random q `[b, lq, hq, d]`, k and v `[b, lk, hkv, d]` in `dtype`, values in [−1, 1).
fn random_qkv(
    rng: &mut Rng,
    [b, lq, lk, hq, hkv, d]: [usize; 6],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<[Tensor; 3]> {
    let mut one = |dims: [usize; 4]| random(rng, &dims, -1.0, 1.0, device)?.to_dtype(dtype);
    Ok([
        one([b, lq, hq, d])?,
        one([b, lk, hkv, d])?,
        one([b, lk, hkv, d])?,
    ])
}

fn attention_matches_dense_softmax(device: &Device, seed: u64) -> candle_core::Result<()> {
    let mut rng = Rng::new(seed);
    for (index, ([b, lq, lk, hq, hkv], mask)) in attention_cases()?.into_iter().enumerate() {
        let d = if index % 2 == 0 { 64 } else { 128 };
        for (dtype, unit) in attention_types(device) {
            let [q, k, v] = random_qkv(&mut rng, [b, lq, lk, hq, hkv, d], dtype, device)?;
            let scale = 1.0 / (d as f64).sqrt();
            let o = block_sparse_attention(&q, &k, &v, &mask, scale)?;
            assert_eq!((o.dims(), o.dtype()), (&[b, lq, hq, d][..], dtype));
            let want = dense_attention(&q, &k, &v, &dense_mask(&mask, 1, 1, device)?, scale)?;
            // o is a convex combination of v's rows (|v| ≤ 1): the kernels round P to the
            // type before P·V, and the output once.
            assert_close(
                &format!("case {index} {dtype:?}"),
                &o,
                &want,
                4.0 * unit + 1e-5,
                0.0,
            )?;
        }
    }
    // A strided view (q, k, v from one packed [b, l, 3, h, d] projection) and a transposed
    // one (needing a copy) give the same.
    let qkv = random(&mut rng, &[1, 64, 3, 2, 64], -1.0, 1.0, device)?;
    let dtype = attention_types(device)[0].0;
    let qkv = qkv.to_dtype(dtype)?;
    let [q, k, v] = [0, 1, 2].map(|i| qkv.i((.., .., i)).unwrap());
    let mask = BlockMask::causal(MaskShape::new(64, 64))?;
    let strided = block_sparse_attention(&q, &k, &v, &mask, 0.125)?;
    let packed = block_sparse_attention(
        &q.contiguous()?,
        &k.contiguous()?,
        &v.contiguous()?,
        &mask,
        0.125,
    )?;
    assert_close("strided", &strided, &packed, 0.0, 0.0)?;
    // Errors carry tilefuse's message.
    let wrong = BlockMask::causal(MaskShape::new(32, 32))?;
    let message = block_sparse_attention(&q, &k, &v, &wrong, 0.125)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("mask: expected lq = 64, lk = 64"),
        "{message}"
    );
    Ok(())
}

fn attention_gradients_match_autograd(device: &Device, seed: u64) -> candle_core::Result<()> {
    let mut rng = Rng::new(seed);
    for (index, ([b, lq, lk, hq, hkv], mask)) in attention_cases()?.into_iter().enumerate() {
        let d = if index % 2 == 0 { 64 } else { 128 };
        for (dtype, unit) in attention_types(device) {
            let [q, k, v] = random_qkv(&mut rng, [b, lq, lk, hq, hkv, d], dtype, device)?;
            let weights = random(&mut rng, &[b, lq, hq, d], -1.0, 1.0, device)?;
            let scale = 1.0 / (d as f64).sqrt();
            // Ours: the loss Σ o ∘ weights through the op.
            let [qv, kv, vv] = [&q, &k, &v].map(|t| Var::from_tensor(t).unwrap());
            let o = block_sparse_attention(&qv, &kv, &vv, &mask, scale)?;
            let grads = (o.to_dtype(DType::F32)? * &weights)?
                .sum_all()?
                .backward()?;
            // candle's: the same loss through its dense ops in f32 from the same values.
            let [q32, k32, v32] =
                [&q, &k, &v].map(|t| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap());
            let bias = dense_mask(&mask, 1, 1, device)?;
            let dense = dense_attention(&q32, &k32, &v32, &bias, scale)?;
            let dense_grads = (dense * &weights)?.sum_all()?.backward()?;
            for (what, ours, theirs) in [("dq", &qv, &q32), ("dk", &kv, &k32), ("dv", &vv, &v32)] {
                let ours = grads.get(ours).expect("a gradient");
                let theirs = dense_grads.get(theirs).expect("a gradient");
                assert_eq!(ours.dtype(), dtype);
                // Each gradient sums up to lk (or hq/hkv · lq) terms of P (≤ 1) times values
                // ≤ 1 in magnitude; the kernels round P and dS to the type.
                let terms = (lk.max(lq) * hq / hkv) as f64;
                let atol = 8.0 * unit * terms.sqrt() + 1e-4;
                assert_close(
                    &format!("case {index} {dtype:?} {what}"),
                    ours,
                    theirs,
                    atol,
                    8.0 * unit,
                )?;
            }
        }
    }
    Ok(())
}

fn attention_lse_matches_dense_logsumexp(device: &Device, seed: u64) -> candle_core::Result<()> {
    let mut rng = Rng::new(seed);
    let (b, l, h, d) = (2, 96, 2, 64);
    let mask = BlockMask::causal(MaskShape::new(l, l))?;
    let dtype = attention_types(device)[0].0;
    let q = random(&mut rng, &[b, l, h, d], -1.0, 1.0, device)?.to_dtype(dtype)?;
    let k = random(&mut rng, &[b, l, h, d], -1.0, 1.0, device)?.to_dtype(dtype)?;
    let (_, lse) = block_sparse_attention_with_lse(&q, &k, &k, &mask, 0.125)?;
    assert_eq!((lse.dims(), lse.dtype()), (&[b, h, l][..], DType::F32));
    let q32 = q.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?;
    let k32 = k.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?;
    let scores =
        ((q32.matmul(&k32.t()?)? * 0.125)?).broadcast_add(&dense_mask(&mask, 1, 1, device)?)?;
    let max = scores.max_keepdim(D::Minus1)?;
    let want = (scores
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?
        .squeeze(D::Minus1)?;
    assert_close("lse", &lse, &want, 1e-4, 1e-5)
}

/// candle's own sequential loop: `h[t] = keep[t]·(a[t]·h[t−1]) + u[t]`, complex products
/// written with real tensors (`[..., 2]` pairs).
fn sequential_scan(
    a: &Tensor,
    u: &Tensor,
    reset: &Tensor,
    h0: &Tensor,
    complex: bool,
) -> candle_core::Result<Tensor> {
    let (b, t) = (u.dim(0)?, u.dim(1)?);
    let time_varying = a.dims() == u.dims();
    let keep = (1.0 - reset.to_dtype(DType::F32)?)?; // [b, t]
    let times = |a: &Tensor, h: &Tensor| -> candle_core::Result<Tensor> {
        if !complex {
            return a.broadcast_mul(h);
        }
        let (ar, ai) = (a.narrow(D::Minus1, 0, 1)?, a.narrow(D::Minus1, 1, 1)?);
        let (hr, hi) = (h.narrow(D::Minus1, 0, 1)?, h.narrow(D::Minus1, 1, 1)?);
        let re = (ar.broadcast_mul(&hr)? - ai.broadcast_mul(&hi)?)?;
        let im = (ar.broadcast_mul(&hi)? + ai.broadcast_mul(&hr)?)?;
        Tensor::cat(&[re, im], D::Minus1)
    };
    let mut h = h0.clone();
    let mut states = Vec::with_capacity(t);
    for step in 0..t {
        let a_t = if time_varying {
            a.i((.., step))?
        } else {
            a.clone()
        };
        let keep_t =
            keep.i((.., step))?
                .reshape(if complex { vec![b, 1, 1] } else { vec![b, 1] })?;
        h = (times(&a_t, &h)?.broadcast_mul(&keep_t)? + u.i((.., step))?)?;
        states.push(h.clone());
    }
    Tensor::stack(&states, 1)
}

/// Forward and gradients of a, u and h0 against the loop and candle's autograd, for both
/// kinds of `a`, with resets (including one at t = 0).
fn check_scan(device: &Device, seed: u64, complex: bool) -> candle_core::Result<()> {
    let mut rng = Rng::new(seed);
    let (b, t, p) = (3, 37, 5);
    let lanes: &[usize] = if complex { &[2] } else { &[] };
    let dims = |d: &[usize]| [d, lanes].concat();
    let mut flags = vec![0u8; b * t];
    for (i, flag) in flags.iter_mut().enumerate() {
        *flag = u8::from(i % t == 0 && i / t == 1 || rng.below(8) == 0);
    }
    let reset = Tensor::from_vec(flags, (b, t), device)?;
    for a_dims in [dims(&[p]), dims(&[b, t, p])] {
        // |a| < 1 keeps the states bounded.
        let a = Var::from_tensor(&random(&mut rng, &a_dims, -0.7, 0.7, device)?)?;
        let u = Var::from_tensor(&random(&mut rng, &dims(&[b, t, p]), -1.0, 1.0, device)?)?;
        let h0 = Var::from_tensor(&random(&mut rng, &dims(&[b, p]), -1.0, 1.0, device)?)?;
        let weights = random(&mut rng, &dims(&[b, t, p]), -1.0, 1.0, device)?;
        let h = scan(&a, &u, &reset, Some(&h0))?;
        let want = sequential_scan(&a, &u, &reset, &h0, complex)?;
        let what = format!("a {a_dims:?}");
        assert_close(&format!("{what}: h"), &h, &want, 1e-5, 1e-5)?;
        let ours = (h * &weights)?.sum_all()?.backward()?;
        let theirs = (want * &weights)?.sum_all()?.backward()?;
        for (name, var) in [("da", &a), ("du", &u), ("dh0", &h0)] {
            let (ours, theirs) = (
                ours.get(var).expect("a gradient"),
                theirs.get(var).expect("a gradient"),
            );
            // A time-invariant da sums b·t terms.
            assert_close(&format!("{what}: {name}"), ours, theirs, 1e-4, 1e-4)?;
        }
    }
    // Without h0 the state starts from zero; the final state is the last row.
    let a = random(&mut rng, &dims(&[p]), -0.7, 0.7, device)?;
    let u = random(&mut rng, &dims(&[b, t, p]), -1.0, 1.0, device)?;
    let zeros = Tensor::zeros(dims(&[b, p]), DType::F32, device)?;
    let h = scan(&a, &u, &reset, None)?;
    assert_close(
        "no h0",
        &h,
        &sequential_scan(&a, &u, &reset, &zeros, complex)?,
        1e-5,
        1e-5,
    )?;
    // Errors carry tilefuse's message.
    let message = scan(&a, &u, &reset.i((.., 1..))?, None)
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("reset: expected shape"), "{message}");
    Ok(())
}

fn real_scan_matches_a_sequential_loop(device: &Device, seed: u64) -> candle_core::Result<()> {
    check_scan(device, seed, false)
}

fn complex_scan_matches_a_sequential_loop(device: &Device, seed: u64) -> candle_core::Result<()> {
    check_scan(device, seed, true)
}

/// A layer can be shared between threads, as candle models are.
#[test]
fn sparse_linear_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<SparseLinear>();
}
