//! [`block_sparse_attention`]: attention with a [`BlockMask`] as a candle op, trainable.

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, WithDType};
use half::{bf16, f16};

use super::{aligned_contiguous, cpu_slice};
use crate::attention::{AttentionShape, BlockMask, reference, reference_backward};
use crate::error::Error;

/// `o = softmax(q·kᵀ·scale + mask)·v` per batch and query head, with q `[b, lq, hq, d]` and
/// k, v `[b, lk, hkv, d]` in candle's layout (query head `h` reads key/value head
/// `h / (hq / hkv)`), `o [b, lq, hq, d]` in q's type. Candle's autograd trains through it:
/// the gradients of q, k and v come from tilefuse's attention backward. A query that sees no
/// key gets `o = 0` (and no gradient).
///
/// - **CPU**: f32, f16 or bf16; the f64 reference and its backward, rounded to the type.
/// - **CUDA** (feature `candle-cuda`): f16 or bf16, `d` 64 or 128; the forward and backward
///   kernels on the tensors' own memory when their strides allow (last dimension contiguous,
///   the start and the other strides multiples of 8 elements, as any contiguous tensor has),
///   otherwise on a contiguous copy.
///
/// `mask` must have been built for `lq` and `lk` (and `b` and `hq`, unless it broadcasts);
/// its lists are uploaded for each call.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use tilefuse::attention::{BlockMask, MaskShape};
/// use tilefuse::candle::block_sparse_attention;
///
/// # fn main() -> candle_core::Result<()> {
/// let q = Var::randn(0f32, 1.0, (2, 128, 4, 64), &Device::Cpu)?;
/// let kv = Tensor::randn(0f32, 1.0, (2, 128, 2, 64), &Device::Cpu)?; // 2 key/value heads
/// let mask = BlockMask::sliding_window(MaskShape::new(128, 128), 32, true)?;
/// let o = block_sparse_attention(&q, &kv, &kv, &mask, 0.125)?;
/// let grads = o.sqr()?.sum_all()?.backward()?;
/// assert_eq!(grads.get(&q).unwrap().dims(), [2, 128, 4, 64]);
/// # Ok(())
/// # }
/// ```
pub fn block_sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> candle_core::Result<Tensor> {
    Ok(block_sparse_attention_with_lse(q, k, v, mask, scale)?.0)
}

/// [`block_sparse_attention`], and the log-sum-exp of each query's scaled scores, `lse [b,
/// hq, lq]` in f32 (natural log; −inf for a query that sees no key), as FlashAttention
/// returns it for merging partial results. `lse` carries no gradient.
pub fn block_sparse_attention_with_lse(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let shape = attention_shape(q, k, v)?;
    shape.check_mask(mask)?;
    if !scale.is_finite() {
        return Err(Error::invalid("scale", "a finite number", scale).into());
    }
    let op = Attention {
        shape,
        mask: Arc::new(mask.clone()),
        scale,
        lse: Arc::new(OnceLock::new()),
    };
    let lse = op.lse.clone();
    let [q, k, v] = [q, k, v].map(usable_layout);
    let o = q?.apply_op3_arc(&k?, &v?, Arc::new(Box::new(op)))?;
    let lse = lse
        .get()
        .cloned()
        .ok_or_else(|| candle_core::Error::msg("tilefuse attention: the forward left no lse"))?;
    Ok((o, lse))
}

/// The sizes of a call, checked: q `[b, lq, hq, d]`, k and v `[b, lk, hkv, d]`, one dtype and
/// one device.
fn attention_shape(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<AttentionShape> {
    let (b, lq, hq, d) = q.dims4()?;
    let (_, lk, hkv, _) = k.dims4()?;
    for (what, t) in [("k", k), ("v", v)] {
        if t.dims() != [b, lk, hkv, d] {
            return Err(Error::Shape {
                what,
                expected: format!("[b, lk, hkv, d] = [{b}, {lk}, {hkv}, {d}]"),
                got: format!("{:?}", t.dims()),
            }
            .into());
        }
    }
    for (what, t) in [("k", k), ("v", v)] {
        if t.dtype() != q.dtype() {
            return Err(Error::invalid(
                what,
                format!("q's dtype {:?}", q.dtype()),
                format!("{:?}", t.dtype()),
            )
            .into());
        }
        if !t.device().same_device(q.device()) {
            return Err(Error::DeviceMismatch {
                what,
                expected: format!("{:?}", q.device().location()),
                got: format!("{:?}", t.device().location()),
            }
            .into());
        }
    }
    Ok(AttentionShape::new(b, lq, lk, hq, hkv, d)?)
}

/// The tensor itself where the device's path reads its layout (CUDA: last dimension
/// contiguous, start and strides multiples of 8), else a contiguous copy; on the CPU always
/// contiguous.
fn usable_layout(t: &Tensor) -> candle_core::Result<Tensor> {
    let layout = t.layout();
    let strided_ok = t.device().is_cuda()
        && layout.stride()[3] == 1
        && layout.start_offset().is_multiple_of(8)
        && layout.dims()[..3]
            .iter()
            .zip(layout.stride())
            .all(|(&size, &stride)| size == 1 || stride.is_multiple_of(8));
    if strided_ok {
        Ok(t.clone())
    } else {
        aligned_contiguous(t)
    }
}

/// The op: its forward keeps `lse` for the caller and for the backward.
struct Attention {
    shape: AttentionShape,
    mask: Arc<BlockMask>,
    scale: f64,
    lse: Arc<OnceLock<Tensor>>,
}

impl Attention {
    fn keep_lse(&self, lse: Tensor) {
        // The op runs its forward once; a second value would be the same one.
        let _ = self.lse.set(lse);
    }

    fn lse_shape(&self) -> (usize, usize, usize) {
        (self.shape.batch, self.shape.heads_q, self.shape.lq)
    }

    fn o_shape(&self) -> Shape {
        let s = &self.shape;
        Shape::from((s.batch, s.lq, s.heads_q, s.d))
    }

    /// The forward on the CPU in `T`.
    fn cpu_forward<T: WithDType>(
        &self,
        [q, k, v]: [(&CpuStorage, &Layout); 3],
    ) -> candle_core::Result<Vec<T>>
    where
        f64: From<T>,
    {
        let [q, k, v] = [
            cpu_slice::<T>(q.0, q.1)?,
            cpu_slice::<T>(k.0, k.1)?,
            cpu_slice::<T>(v.0, v.1)?,
        ];
        let out = reference(&self.shape, q, k, v, &self.mask, self.scale)?;
        let lse: Vec<f32> = out.lse.iter().map(|&x| x as f32).collect();
        self.keep_lse(Tensor::from_vec(lse, self.lse_shape(), &Device::Cpu)?);
        Ok(out.o.into_iter().map(T::from_f64).collect())
    }

    /// The backward on the CPU: the gradients of q, k and v in `T`.
    fn cpu_backward<T: WithDType>(
        &self,
        [q, k, v, d_o]: [&Tensor; 4],
    ) -> candle_core::Result<[Tensor; 3]>
    where
        f64: From<T>,
    {
        let [q, k, v, d_o] = [q, k, v, d_o].map(|t| t.flatten_all().and_then(|t| t.to_vec1::<T>()));
        let g = reference_backward(&self.shape, [&q?, &k?, &v?], &d_o?, &self.mask, self.scale)?;
        let s = &self.shape;
        let wrap = |values: Vec<f64>, lens: (usize, usize, usize, usize)| {
            Tensor::from_vec(
                values.into_iter().map(T::from_f64).collect::<Vec<T>>(),
                lens,
                &Device::Cpu,
            )
        };
        Ok([
            wrap(g.dq, (s.batch, s.lq, s.heads_q, s.d))?,
            wrap(g.dk, (s.batch, s.lk, s.heads_kv, s.d))?,
            wrap(g.dv, (s.batch, s.lk, s.heads_kv, s.d))?,
        ])
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "tilefuse-block-sparse-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let inputs = [(q, lq), (k, lk), (v, lv)];
        let o = match q.dtype() {
            DType::F32 => CpuStorage::F32(self.cpu_forward::<f32>(inputs)?),
            DType::F16 => CpuStorage::F16(self.cpu_forward::<f16>(inputs)?),
            DType::BF16 => CpuStorage::BF16(self.cpu_forward::<bf16>(inputs)?),
            other => {
                return Err(Error::invalid(
                    "q",
                    "f32, f16 or bf16 on the CPU",
                    format!("{other:?}"),
                )
                .into());
            }
        };
        Ok((o, self.o_shape()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (o, lse) = match q.dtype() {
            DType::F16 => cuda::forward::<f16>(self, [(q, lq), (k, lk), (v, lv)])?,
            DType::BF16 => cuda::forward::<bf16>(self, [(q, lq), (k, lk), (v, lv)])?,
            other => {
                return Err(
                    Error::invalid("q", "f16 or bf16 on CUDA", format!("{other:?}")).into(),
                );
            }
        };
        self.keep_lse(lse);
        Ok((o, self.o_shape()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        d_o: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d_o = d_o.to_dtype(o.dtype())?.contiguous()?;
        let [dq, dk, dv] = match (q.device(), q.dtype()) {
            (Device::Cpu, DType::F32) => self.cpu_backward::<f32>([q, k, v, &d_o])?,
            (Device::Cpu, DType::F16) => self.cpu_backward::<f16>([q, k, v, &d_o])?,
            (Device::Cpu, DType::BF16) => self.cpu_backward::<bf16>([q, k, v, &d_o])?,
            #[cfg(feature = "candle-cuda")]
            (Device::Cuda(_), _) => {
                let lse = self.lse.get().ok_or_else(|| {
                    candle_core::Error::msg("tilefuse attention: backward before forward")
                })?;
                cuda::backward(self, [q, k, v, o, &d_o], lse)?
            }
            (device, dtype) => {
                return Err(Error::invalid(
                    "q",
                    "f32, f16 or bf16 on the CPU, f16 or bf16 on CUDA",
                    format!("{dtype:?} on {:?}", device.location()),
                )
                .into());
            }
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(feature = "candle-cuda")]
mod cuda {
    //! The forward and backward kernels on candle's CUDA storage and stream.

    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, Layout, Storage, Tensor};
    use cudarc::driver::{CudaView, DeviceRepr, ValidAsZeroBits};

    use super::Attention;
    use crate::attention::cuda::{
        BackwardInputs, BackwardOutputs, DeviceBlockMask, Inputs, attention, attention_backward,
    };
    use crate::attention::{AttentionShape, Layout as Strided, Strides};
    use crate::element::Float16;

    /// A candle element type the attention kernels take.
    pub(super) trait Element:
        Float16 + DeviceRepr + ValidAsZeroBits + candle_core::cuda_backend::CudaDType
    {
    }
    impl<T: Float16 + DeviceRepr + ValidAsZeroBits + candle_core::cuda_backend::CudaDType> Element
        for T
    {
    }

    /// The strides of a `[b, l, h, d]` layout from its own start (views begin there).
    fn strides(layout: &Layout) -> Strides {
        let s = layout.stride();
        Strides {
            start: 0,
            batch: s[0],
            seq: s[1],
            head: s[2],
        }
    }

    /// The call's shape with q, k and v laid out as given and o packed, and the three views.
    fn views<'a, T: Element>(
        shape: &AttentionShape,
        inputs: [(&'a CudaStorage, &Layout); 3],
    ) -> candle_core::Result<(AttentionShape, [CudaView<'a, T>; 3])> {
        let [(_, lq), (_, lk), (_, lv)] = inputs;
        let packed = shape.layout().o;
        let shape = shape.with_layout(Strided {
            q: strides(lq),
            k: strides(lk),
            v: strides(lv),
            o: packed,
        })?;
        let [q_len, k_len, v_len, _] = shape.min_lens();
        let [(q, lq), (k, lk), (v, lv)] = inputs;
        Ok((
            shape,
            [
                super::super::cuda::view::<T>(q, lq, q_len)?,
                super::super::cuda::view::<T>(k, lk, k_len)?,
                super::super::cuda::view::<T>(v, lv, v_len)?,
            ],
        ))
    }

    pub(super) fn forward<T: Element>(
        op: &Attention,
        inputs: [(&CudaStorage, &Layout); 3],
    ) -> candle_core::Result<(CudaStorage, Tensor)> {
        let device = inputs[0].0.device.clone();
        let cuda = super::super::cuda::handle(&device)?;
        let (shape, [q, k, v]) = views::<T>(&op.shape, inputs)?;
        let mask = DeviceBlockMask::upload(&cuda, &op.mask)?;
        let [o_len, lse_len] = [shape.min_lens()[3], shape.batch * shape.heads_q * shape.lq];
        let mut o = device.alloc_zeros::<T>(o_len)?;
        let mut lse = device.alloc_zeros::<f32>(lse_len)?;
        attention(
            &cuda,
            &shape,
            Inputs {
                q: &q,
                k: &k,
                v: &v,
            },
            &mask,
            &mut o,
            Some(&mut lse),
            op.scale as f32,
        )?;
        let lse = Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(lse, device.clone())),
            op.lse_shape(),
            BackpropOp::none(),
            false,
        );
        Ok((CudaStorage::wrap_cuda_slice(o, device), lse))
    }

    pub(super) fn backward(
        op: &Attention,
        tensors: [&Tensor; 5],
        lse: &Tensor,
    ) -> candle_core::Result<[Tensor; 3]> {
        match tensors[0].dtype() {
            candle_core::DType::F16 => backward_as::<half::f16>(op, tensors, lse),
            _ => backward_as::<half::bf16>(op, tensors, lse),
        }
    }

    fn backward_as<T: Element>(
        op: &Attention,
        [q, k, v, o, d_o]: [&Tensor; 5],
        lse: &Tensor,
    ) -> candle_core::Result<[Tensor; 3]> {
        let [q, k, v, o, d_o] = [q, k, v, o, d_o].map(super::usable_layout);
        let [q, k, v, o, d_o] = [q?, k?, v?, o?, d_o?];
        let guards = [&q, &k, &v, &o, &d_o, lse].map(|t| t.storage_and_layout());
        let storage = |i: usize| match &*guards[i].0 {
            Storage::Cuda(s) => Ok((s, guards[i].1)),
            _ => Err(candle_core::Error::msg(
                "tilefuse attention: expected CUDA tensors",
            )),
        };
        let [sq, sk, sv, so, sd, sl] = [
            storage(0)?,
            storage(1)?,
            storage(2)?,
            storage(3)?,
            storage(4)?,
            storage(5)?,
        ];
        let device = sq.0.device.clone();
        let cuda = super::super::cuda::handle(&device)?;
        let (mut shape, [qv, kv, vv]) = views::<T>(&op.shape, [sq, sk, sv])?;
        // o and dO: the forward wrote o packed; dO is given o's strides.
        let o_strides = strides(so.1);
        if strides(sd.1) != o_strides {
            return Err(candle_core::Error::msg(
                "tilefuse attention: dO must be laid out as o",
            ));
        }
        shape = shape.with_layout(Strided {
            o: o_strides,
            ..shape.layout()
        })?;
        let o_len = shape.min_lens()[3];
        let ov = super::super::cuda::view::<T>(so.0, so.1, o_len)?;
        let dv_o = super::super::cuda::view::<T>(sd.0, sd.1, o_len)?;
        let lse_slice = sl.0.as_cuda_slice::<f32>()?;
        let mask = DeviceBlockMask::upload(&cuda, &op.mask)?;
        let s = &op.shape;
        let q_len = s.batch * s.lq * s.heads_q * s.d;
        let kv_len = s.batch * s.lk * s.heads_kv * s.d;
        let (mut dq, mut dk, mut dv) = (
            device.alloc_zeros::<T>(q_len)?,
            device.alloc_zeros::<T>(kv_len)?,
            device.alloc_zeros::<T>(kv_len)?,
        );
        let inputs = BackwardInputs {
            q: &qv,
            k: &kv,
            v: &vv,
            o: &ov,
            d_o: &dv_o,
            lse: lse_slice,
        };
        let outputs = BackwardOutputs {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
        };
        attention_backward::<T, T, _, _, _, _, _, _>(
            &cuda,
            &shape,
            inputs,
            &mask,
            outputs,
            op.scale as f32,
        )?;
        let wrap = |slice, dims: (usize, usize, usize, usize)| {
            Tensor::from_storage(
                Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone())),
                dims,
                BackpropOp::none(),
                false,
            )
        };
        Ok([
            wrap(dq, (s.batch, s.lq, s.heads_q, s.d)),
            wrap(dk, (s.batch, s.lk, s.heads_kv, s.d)),
            wrap(dv, (s.batch, s.lk, s.heads_kv, s.d)),
        ])
    }
}
