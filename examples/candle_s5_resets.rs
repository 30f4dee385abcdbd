//! A small S5 layer trained with candle's autograd through `tilefuse::candle::scan`, over
//! episodes of random lengths packed back to back into one stream with resets at their
//! starts: the in-context-RL use of the scan in miniature.
//!
//!     cargo run --release --features candle --example candle_s5_resets [-- --cuda]
//!
//! The task: from inputs `x [b, t, 2]`, predict for each step two decaying sums of the
//! episode so far, `y_i[t] = Σ_{s = start..t} γ_iᵗ⁻ˢ x_i[s]` with γ = (0.9, 0.6): the state
//! must forget everything at each episode's start (the reset), which a scan without resets
//! cannot do. The layer: `h[t] = reset[t] ? B·x[t] : Λ̄·h[t−1] + B·x[t]` with a complex
//! diagonal `Λ̄ = exp(Λ·Δ)`, `y = Re(C·h) + D·x`; Λ, Δ, B, C and D are trained by AdamW.
//! Training stops with an error unless the mean squared error falls below `TARGET_LOSS`.

use candle_core::{D, Device, IndexOp, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use tilefuse::candle::scan;
use tilefuse::harness::Rng;

const BATCH: usize = 8;
const TIME: usize = 256;
const STATES: usize = 16;
const INPUTS: usize = 2;
const DECAYS: [f64; INPUTS] = [0.9, 0.6];
const STEPS: usize = 300;
/// The held-out loss the trained layer must reach; predicting zero scores about 3 (the
/// targets' mean square), and the trained layer without its resets about 0.3.
const TARGET_LOSS: f32 = 1e-3;

/// The trained parameters (complex ones as real and imaginary parts).
struct S5 {
    log_neg_real: Var,
    imag: Var,
    log_step: Var,
    b: [Var; 2],
    c: [Var; 2],
    d: Var,
}

impl S5 {
    fn new(rng: &mut Rng, device: &Device) -> candle_core::Result<S5> {
        let var = |values: Vec<f32>, dims: &[usize]| Var::from_vec(values, dims, device);
        let normal =
            |rng: &mut Rng, len: usize, scale: f64| rng.fill(len, -scale, scale, |v| v as f32);
        Ok(S5 {
            log_neg_real: var(vec![(0.5f32).ln(); STATES], &[STATES])?,
            imag: var(
                (0..STATES)
                    .map(|n| std::f32::consts::PI * n as f32 / STATES as f32)
                    .collect(),
                &[STATES],
            )?,
            // Steps log-uniform in [0.01, 0.5]: |Λ̄| from about 0.995 down to 0.78.
            log_step: var(
                rng.fill(STATES, 0.01f64.ln(), 0.5f64.ln(), |v| v as f32),
                &[STATES],
            )?,
            b: [
                var(normal(rng, STATES * INPUTS, 0.5), &[STATES, INPUTS])?,
                var(normal(rng, STATES * INPUTS, 0.5), &[STATES, INPUTS])?,
            ],
            c: [
                var(normal(rng, INPUTS * STATES, 0.25), &[INPUTS, STATES])?,
                var(normal(rng, INPUTS * STATES, 0.25), &[INPUTS, STATES])?,
            ],
            d: var(vec![0.0; INPUTS * INPUTS], &[INPUTS, INPUTS])?,
        })
    }

    fn vars(&self) -> Vec<Var> {
        let [b_re, b_im] = self.b.clone();
        let [c_re, c_im] = self.c.clone();
        vec![
            self.log_neg_real.clone(),
            self.imag.clone(),
            self.log_step.clone(),
            b_re,
            b_im,
            c_re,
            c_im,
            self.d.clone(),
        ]
    }

    /// `y [b, t, 2]` from `x [b, t, 2]` and the resets `[b, t]`.
    fn forward(&self, x: &Tensor, reset: &Tensor) -> candle_core::Result<Tensor> {
        // Λ̄ = exp(Λ·Δ) with Re Λ = −exp(log_neg_real) < 0, as [p, 2] (re, im) pairs.
        let step = self.log_step.exp()?;
        let magnitude = (self.log_neg_real.exp()?.neg()? * &step)?.exp()?;
        let angle = (self.imag.as_tensor() * &step)?;
        let a = Tensor::stack(
            &[(&magnitude * angle.cos()?)?, (&magnitude * angle.sin()?)?],
            1,
        )?;
        let project = |m: &Var| x.broadcast_matmul(&m.t()?);
        let u = Tensor::stack(&[project(&self.b[0])?, project(&self.b[1])?], D::Minus1)?;
        let h = scan(&a, &u, reset, None)?; // [b, t, p, 2]
        let (h_re, h_im) = (h.i((.., .., .., 0))?, h.i((.., .., .., 1))?);
        let y =
            (h_re.broadcast_matmul(&self.c[0].t()?)? - h_im.broadcast_matmul(&self.c[1].t()?)?)?;
        y + x.broadcast_matmul(&self.d.t()?)?
    }
}

/// One batch: inputs, resets at the starts of episodes of 8 to 48 steps, and targets.
fn batch(rng: &mut Rng, device: &Device) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let x: Vec<f32> = rng.fill(BATCH * TIME * INPUTS, -1.7, 1.7, |v| v as f32);
    let mut reset = vec![0u8; BATCH * TIME];
    let mut y = vec![0f32; BATCH * TIME * INPUTS];
    for b in 0..BATCH {
        let mut left = 0;
        let mut sums = [0f64; INPUTS];
        for t in 0..TIME {
            if left == 0 {
                left = 8 + rng.below(41) as usize;
                reset[b * TIME + t] = 1;
                sums = [0.0; INPUTS];
            }
            left -= 1;
            for (i, sum) in sums.iter_mut().enumerate() {
                let at = (b * TIME + t) * INPUTS + i;
                *sum = DECAYS[i] * *sum + f64::from(x[at]);
                y[at] = *sum as f32;
            }
        }
    }
    Ok((
        Tensor::from_vec(x, (BATCH, TIME, INPUTS), device)?,
        Tensor::from_vec(reset, (BATCH, TIME), device)?,
        Tensor::from_vec(y, (BATCH, TIME, INPUTS), device)?,
    ))
}

fn mse(prediction: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    (prediction - target)?.sqr()?.mean_all()
}

fn main() -> candle_core::Result<()> {
    let device = if std::env::args().any(|a| a == "--cuda") {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };
    let mut rng = Rng::new(5);
    let layer = S5::new(&mut rng, &device)?;
    let params = ParamsAdamW {
        lr: 0.02,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut optimizer = AdamW::new(layer.vars(), params)?;
    let (x_test, reset_test, y_test) = batch(&mut rng, &device)?;
    let baseline = y_test.sqr()?.mean_all()?.to_scalar::<f32>()?;
    println!("S5 layer, {STATES} complex states, {BATCH} x {TIME} steps of packed episodes");
    println!("predicting zero: loss {baseline:.4}; target: below {TARGET_LOSS}");
    let mut loss = f32::INFINITY;
    for step in 1..=STEPS {
        let (x, reset, y) = batch(&mut rng, &device)?;
        let train = mse(&layer.forward(&x, &reset)?, &y)?;
        optimizer.backward_step(&train)?;
        if step % 50 == 0 || step == 1 {
            loss = mse(&layer.forward(&x_test, &reset_test)?, &y_test)?.to_scalar::<f32>()?;
            println!("step {step:>4}: held-out loss {loss:.5}");
        }
    }
    // The same trained layer, told of no episode boundaries: the state leaks across them.
    let no_resets = reset_test.zeros_like()?;
    let leaking = mse(&layer.forward(&x_test, &no_resets)?, &y_test)?.to_scalar::<f32>()?;
    println!("without the resets, the trained layer's loss is {leaking:.5}");
    if loss >= TARGET_LOSS {
        candle_core::bail!("training ended at loss {loss}, not below {TARGET_LOSS}");
    }
    println!("loss {loss:.5} < {TARGET_LOSS}: trained");
    Ok(())
}
