//! [`scan`]: the linear recurrence with resets as a candle op, trainable.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use num_complex::Complex32;

use super::{aligned_contiguous, cpu_slice, host_vec};
use crate::error::Error;
use crate::scan::{Cotangents, Decay, Inputs, Layout as ScanLayout, Scan, ScanElement, ScanShape};

/// Every state of `h[b,t] = reset[b,t] ? u[b,t] : a·h[b,t−1] + u[b,t]` (the
/// [`scan`](crate::scan) module states it), with `h[b,−1] = h0[b]` or 0. Candle's autograd
/// trains `a`, `u` and `h0` through it: their gradients come from tilefuse's scan backward,
/// which stops at every reset.
///
/// Values are f32; a complex value is a trailing dimension of 2 `(re, im)` (candle has no
/// complex type), and a complex scan's gradients are those of the real and imaginary parts
/// (what candle's autograd computes through the same arithmetic written with real tensors).
///
/// | tensor | real | complex |
/// |---|---|---|
/// | `u`, returned `h` | `[b, t, p]` | `[b, t, p, 2]` |
/// | `a`, time-invariant | `[p]` | `[p, 2]` |
/// | `a`, time-varying | as `u` | as `u` |
/// | `reset` | `[b, t]`, u8 (non-zero = reset) | the same |
/// | `h0` | `[b, p]` | `[b, p, 2]` |
///
/// The final state is `h.i((.., t - 1))`. On the CPU it runs the f64 reference and its
/// backward; on CUDA (feature `candle-cuda`) the scan kernels, on the tensors' memory when
/// they are contiguous from an element that is a multiple of 8 (otherwise on a contiguous
/// copy: complex values are read as 8-byte pairs). A `reset` of another type is compared with
/// 0 first.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use tilefuse::candle::scan;
///
/// # fn main() -> candle_core::Result<()> {
/// // Complex: a = i (a quarter turn per step), one channel, three steps, no reset.
/// let a = Var::new(&[[0f32, 1.0]], &Device::Cpu)?;
/// let u = Tensor::new(&[[[[1f32, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]], &Device::Cpu)?;
/// let reset = Tensor::zeros((1, 3), candle_core::DType::U8, &Device::Cpu)?;
/// let h = scan(&a, &u, &reset, None)?;
/// assert_eq!(h.flatten_all()?.to_vec1::<f32>()?, [1.0, 0.0, 0.0, 1.0, -1.0, 0.0]);
/// let grads = h.sum_all()?.backward()?; // d(Σ re + im)/da
/// assert_eq!(grads.get(&a).unwrap().dims(), [1, 2]);
/// # Ok(())
/// # }
/// ```
pub fn scan(
    a: &Tensor,
    u: &Tensor,
    reset: &Tensor,
    h0: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let op = ScanOp::new(a, u, reset, h0)?;
    let h0 = match h0 {
        Some(h0) => aligned_contiguous(h0)?,
        None => Tensor::zeros(op.final_dims(), DType::F32, u.device())?,
    };
    let [a, u] = [a, u].map(aligned_contiguous);
    a?.apply_op3_arc(&u?, &h0, Arc::new(Box::new(op)))
}

/// The op, with the reset flags it does not differentiate.
struct ScanOp {
    shape: ScanShape,
    complex: bool,
    decay: Decay,
    /// u8 `[b, t]`, contiguous, on the inputs' device.
    reset: Tensor,
}

impl ScanOp {
    fn new(
        a: &Tensor,
        u: &Tensor,
        reset: &Tensor,
        h0: Option<&Tensor>,
    ) -> candle_core::Result<Self> {
        let (complex, [b, t, p]) = match u.dims() {
            &[b, t, p] => (false, [b, t, p]),
            &[b, t, p, 2] => (true, [b, t, p]),
            dims => {
                return Err(Error::Shape {
                    what: "u",
                    expected: "[b, t, p] (real) or [b, t, p, 2] (complex)".into(),
                    got: format!("{dims:?}"),
                }
                .into());
            }
        };
        let shape = ScanShape::new(b, t, p)?;
        let lanes: &[usize] = if complex { &[2] } else { &[] };
        let with_lanes = |dims: &[usize]| [dims, lanes].concat();
        let decay = if a.dims() == with_lanes(&[p]) {
            Decay::TimeInvariant
        } else if a.dims() == u.dims() {
            Decay::TimeVarying
        } else {
            return Err(Error::Shape {
                what: "a",
                expected: format!(
                    "{:?} (time-invariant) or u's {:?}",
                    with_lanes(&[p]),
                    u.dims()
                ),
                got: format!("{:?}", a.dims()),
            }
            .into());
        };
        let expected = [
            ("reset", Some(reset), vec![b, t]),
            ("h0", h0, with_lanes(&[b, p])),
        ];
        for (what, tensor, dims) in expected {
            if let Some(tensor) = tensor
                && tensor.dims() != dims
            {
                return Err(Error::Shape {
                    what,
                    expected: format!("{dims:?}"),
                    got: format!("{:?}", tensor.dims()),
                }
                .into());
            }
        }
        for (what, tensor) in [("a", Some(a)), ("u", Some(u)), ("h0", h0)] {
            let Some(tensor) = tensor else { continue };
            if tensor.dtype() != DType::F32 {
                return Err(
                    Error::invalid(what, "an f32 tensor", format!("{:?}", tensor.dtype())).into(),
                );
            }
        }
        for (what, tensor) in [("a", Some(a)), ("reset", Some(reset)), ("h0", h0)] {
            let Some(tensor) = tensor else { continue };
            if !tensor.device().same_device(u.device()) {
                return Err(Error::DeviceMismatch {
                    what,
                    expected: format!("{:?}", u.device().location()),
                    got: format!("{:?}", tensor.device().location()),
                }
                .into());
            }
        }
        let reset = match reset.dtype() {
            DType::U8 => reset.contiguous()?,
            _ => reset.ne(&reset.zeros_like()?)?.contiguous()?,
        };
        Ok(ScanOp {
            shape,
            complex,
            decay,
            reset: reset.detach(),
        })
    }

    fn final_dims(&self) -> Vec<usize> {
        let mut dims = vec![self.shape.batch(), self.shape.channels()];
        if self.complex {
            dims.push(2);
        }
        dims
    }

    fn states_shape(&self) -> Shape {
        let s = self.shape;
        let mut dims = vec![s.batch(), s.time(), s.channels()];
        if self.complex {
            dims.push(2);
        }
        Shape::from(dims)
    }

    fn problem<T: ScanElement>(&self) -> Scan<T> {
        Scan::new(self.shape, ScanLayout::BatchMajor, self.decay)
    }

    fn cpu_forward<T: ScanElement>(
        &self,
        [a, u, h0]: [&[f32]; 3],
    ) -> candle_core::Result<Vec<f32>> {
        let reset = host_vec::<u8>(&self.reset)?;
        let [a, u, h0]: [&[T]; 3] = [a, u, h0].map(bytemuck::cast_slice);
        let states = crate::scan::reference(&self.problem::<T>(), a, u, &reset, Some(h0))?;
        Ok(states.h.into_iter().map(|x| x as f32).collect())
    }

    /// The gradients of a, u and h0 on the CPU (in the transpose convention of the scan's
    /// backward; [`CustomOp3::bwd`] conjugates around it).
    fn cpu_backward<T: ScanElement>(
        &self,
        [a, u, h0, dh]: [&Tensor; 4],
    ) -> candle_core::Result<[Vec<f32>; 3]> {
        let cast = |t: &Tensor| -> candle_core::Result<Vec<T>> {
            Ok(bytemuck::cast_slice(&host_vec::<f32>(t)?).to_vec())
        };
        let inputs = Inputs {
            a: cast(a)?,
            u: cast(u)?,
            reset: host_vec::<u8>(&self.reset)?,
            h0: Some(cast(h0)?),
        };
        let cotangents = Cotangents {
            dh: cast(dh)?,
            dh_last: None,
        };
        let g = crate::scan::reference_backward(&self.problem::<T>(), &inputs, &cotangents)?;
        let narrow = |values: Vec<f64>| values.into_iter().map(|x| x as f32).collect();
        Ok([
            narrow(g.da),
            narrow(g.du),
            narrow(g.dh0.unwrap_or_default()),
        ])
    }
}

impl CustomOp3 for ScanOp {
    fn name(&self) -> &'static str {
        "tilefuse-scan"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        u: &CpuStorage,
        lu: &Layout,
        h0: &CpuStorage,
        lh0: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let inputs = [
            cpu_slice::<f32>(a, la)?,
            cpu_slice::<f32>(u, lu)?,
            cpu_slice::<f32>(h0, lh0)?,
        ];
        let h = if self.complex {
            self.cpu_forward::<Complex32>(inputs)?
        } else {
            self.cpu_forward::<f32>(inputs)?
        };
        Ok((CpuStorage::F32(h), self.states_shape()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        la: &Layout,
        u: &candle_core::CudaStorage,
        lu: &Layout,
        h0: &candle_core::CudaStorage,
        lh0: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let h = if self.complex {
            cuda::forward::<Complex32>(self, [(a, la), (u, lu), (h0, lh0)])?
        } else {
            cuda::forward::<f32>(self, [(a, la), (u, lu), (h0, lh0)])?
        };
        Ok((h, self.states_shape()))
    }

    // The CPU path recomputes the states in f64; only CUDA reads `h`.
    #[cfg_attr(not(feature = "candle-cuda"), allow(unused_variables))]
    fn bwd(
        &self,
        a: &Tensor,
        u: &Tensor,
        h0: &Tensor,
        h: &Tensor,
        dh: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The scan's backward takes and gives cotangents in JAX's transpose convention; the
        // gradient of a real loss with respect to (re, im) pairs is its complex conjugate.
        let conjugate = |t: Tensor| -> candle_core::Result<Tensor> {
            if self.complex {
                t.broadcast_mul(&Tensor::new(&[1f32, -1.0], t.device())?)
            } else {
                Ok(t)
            }
        };
        let dh = aligned_contiguous(&conjugate(dh.to_dtype(DType::F32)?)?)?;
        let [da, du, dh0] = match a.device() {
            Device::Cpu => {
                let tensors = [a, u, h0, &dh];
                let [da, du, dh0] = if self.complex {
                    self.cpu_backward::<Complex32>(tensors)?
                } else {
                    self.cpu_backward::<f32>(tensors)?
                };
                [(da, a), (du, u), (dh0, h0)]
                    .map(|(values, like)| Tensor::from_vec(values, like.shape(), &Device::Cpu))
            }
            #[cfg(feature = "candle-cuda")]
            Device::Cuda(_) => {
                let grads = if self.complex {
                    cuda::backward::<Complex32>(self, [a, u, h0, h, &dh])?
                } else {
                    cuda::backward::<f32>(self, [a, u, h0, h, &dh])?
                };
                grads.map(Ok)
            }
            other => {
                return Err(candle_core::Error::msg(format!(
                    "tilefuse scan: no path on {:?}",
                    other.location()
                )));
            }
        };
        Ok((
            Some(conjugate(da?)?),
            Some(conjugate(du?)?),
            Some(conjugate(dh0?)?),
        ))
    }
}

#[cfg(feature = "candle-cuda")]
mod cuda {
    //! The forward and backward kernels on candle's CUDA storage and stream.

    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, Layout, Storage, Tensor};

    use super::ScanOp;
    use crate::scan::ScanElement;
    use crate::scan::cuda::{ScanCotangents, ScanGradients, ScanInputs, scan, scan_backward};

    pub(super) fn forward<T: ScanElement>(
        op: &ScanOp,
        [(a, la), (u, lu), (h0, lh0)]: [(&CudaStorage, &Layout); 3],
    ) -> candle_core::Result<CudaStorage> {
        let device = u.device.clone();
        let cuda = super::super::cuda::handle(&device)?;
        let problem = op.problem::<T>();
        let (states, finals) = (
            problem.states_len() * T::LANES,
            problem.final_len() * T::LANES,
        );
        let a = super::super::cuda::view::<f32>(a, la, problem.a_len() * T::LANES)?;
        let u = super::super::cuda::view::<f32>(u, lu, states)?;
        let h0 = super::super::cuda::view::<f32>(h0, lh0, finals)?;
        let (reset_storage, reset_layout) = op.reset.storage_and_layout();
        let Storage::Cuda(reset_storage) = &*reset_storage else {
            candle_core::bail!("tilefuse scan: reset is not on the CUDA device");
        };
        let reset =
            super::super::cuda::view::<u8>(reset_storage, reset_layout, problem.reset_len())?;
        let mut h = device.alloc_zeros::<f32>(states)?;
        let mut h_last = device.alloc_zeros::<f32>(finals)?;
        let inputs = ScanInputs {
            a: &a,
            u: &u,
            reset: &reset,
            h0: Some(&h0),
        };
        scan(&cuda, &problem, inputs, &mut h, &mut h_last)?;
        Ok(CudaStorage::wrap_cuda_slice(h, device))
    }

    /// The gradients of a, u and h0 (in the scan backward's convention).
    pub(super) fn backward<T: ScanElement>(
        op: &ScanOp,
        tensors: [&Tensor; 5],
    ) -> candle_core::Result<[Tensor; 3]> {
        let guards = tensors.map(|t| t.storage_and_layout());
        let reset_guard = op.reset.storage_and_layout();
        let [ga, gu, gh0, gh, gdh] = &guards;
        let (
            Storage::Cuda(sa),
            Storage::Cuda(su),
            Storage::Cuda(sh0),
            Storage::Cuda(sh),
            Storage::Cuda(sdh),
            Storage::Cuda(sr),
        ) = (&*ga.0, &*gu.0, &*gh0.0, &*gh.0, &*gdh.0, &*reset_guard.0)
        else {
            candle_core::bail!("tilefuse scan: expected CUDA tensors");
        };
        let device = su.device.clone();
        let cuda = super::super::cuda::handle(&device)?;
        let problem = op.problem::<T>();
        let (states, finals, a_len) = (
            problem.states_len() * T::LANES,
            problem.final_len() * T::LANES,
            problem.a_len() * T::LANES,
        );
        let view = super::super::cuda::view::<f32>;
        let (a, u, h0) = (
            view(sa, ga.1, a_len)?,
            view(su, gu.1, states)?,
            view(sh0, gh0.1, finals)?,
        );
        let (h, dh) = (view(sh, gh.1, states)?, view(sdh, gdh.1, states)?);
        let reset = super::super::cuda::view::<u8>(sr, reset_guard.1, problem.reset_len())?;
        let (mut du, mut da, mut dh0) = (
            device.alloc_zeros::<f32>(states)?,
            device.alloc_zeros::<f32>(a_len)?,
            device.alloc_zeros::<f32>(finals)?,
        );
        let inputs = ScanInputs {
            a: &a,
            u: &u,
            reset: &reset,
            h0: Some(&h0),
        };
        let cotangents = ScanCotangents {
            dh: &dh,
            dh_last: None,
        };
        let gradients = ScanGradients {
            du: &mut du,
            da: &mut da,
            dh0: Some(&mut dh0),
        };
        scan_backward(&cuda, &problem, inputs, Some(&h), cotangents, gradients)?;
        let wrap = |slice, like: &Tensor| {
            Tensor::from_storage(
                Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone())),
                like.shape(),
                BackpropOp::none(),
                false,
            )
        };
        Ok([
            wrap(da, tensors[0]),
            wrap(du, tensors[1]),
            wrap(dh0, tensors[2]),
        ])
    }
}
