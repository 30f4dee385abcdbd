//! Attention's case files (`tilefuse run attention`, `tilefuse check --input`): `q [b, lq,
//! hq, d]`, `k`, `v [b, lk, hkv, d]` float16, the block sizes, the block layout and element
//! mask, and the scale; out `o [b, lq, hq, d]` and `lse [b, hq, lq]`.

use half::{bf16, f16};

use super::{AttentionShape, BlockMask, ElementMask, MaskShape};
#[cfg(feature = "cuda")]
use crate::backend::cuda::Cuda;
use crate::element::{DeviceFloat16, Dtype16, Float16};
use crate::harness::file::{
    CaseFile, Dtype, FileEntry, FileOptions, data, float16, float16_entry, mismatch, required,
    wrong_dtype,
};
use crate::harness::npz::{Array, Data, Element, Entry, Npz};
#[cfg(feature = "cuda")]
use crate::harness::profile::{ParamKind, Prepared, ProfileEntry, ProfileParam, ProfileValues};
use crate::harness::{Backend, Backends, Tolerance};

/// Attention's case files.
pub(crate) const FILE: FileEntry = FileEntry {
    marks: &["q", "k", "v"],
    needs: ATTENTION_NEEDS,
    load,
};

const ATTENTION_NEEDS: &str = "attention needs q [b, lq, hq, d], k and v [b, lk, hkv, d] float16, \
block_m, block_n, mask_mod, window (int32 scalars), layout [hq or 1, q_blocks, kv_blocks] uint8, scale (float32 scalar)";

fn load(arrays: &Npz, options: FileOptions) -> Result<Box<dyn CaseFile>, String> {
    options.no_format("attention")?;
    match options.dtype.unwrap_or(Dtype::F16) {
        Dtype::F16 => Ok(Box::new(AttentionFile::<f16>::load(arrays)?)),
        Dtype::Bf16 => Ok(Box::new(AttentionFile::<bf16>::load(arrays)?)),
        Dtype::F32 => Err("--dtype f32: attention computes on f16 or bf16 inputs".into()),
    }
}

struct AttentionFile<T> {
    shape: AttentionShape,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    mask: BlockMask,
    scale: f64,
}

/// A 0-d (or one-element) int32 array, as np.int32(5) saves it.
fn scalar_i32(arrays: &Npz, name: &str) -> Result<i64, String> {
    let array = required(arrays, name, ATTENTION_NEEDS)?;
    if array.element != Element::I32 {
        return Err(wrong_dtype(name, "int32", array));
    }
    if array.shape.iter().product::<usize>() != 1 {
        return Err(mismatch(name, "() (a scalar)".into(), array));
    }
    match data(array, name)? {
        Data::I32(v) => Ok(v[0].into()),
        _ => Err(wrong_dtype(name, "int32", array)),
    }
}

impl<T: Float16> AttentionFile<T> {
    /// Every name, type and shape is checked (reading only the scalars), then the layout,
    /// then q, k and v are read.
    fn load(arrays: &Npz) -> Result<Self, String> {
        let (shape, [q, k, v]) = qkv(arrays)?;
        let block = |name: &str| -> Result<usize, String> {
            match scalar_i32(arrays, name)? {
                size @ (64 | 128) => Ok(size as usize),
                other => Err(format!("`{name}`: expected 64 or 128, got {other}")),
            }
        };
        let mask_shape = MaskShape {
            batch: 1,
            heads: 1,
            lq: shape.lq,
            lk: shape.lk,
            block_m: block("block_m")?,
            block_n: block("block_n")?,
        };
        let element = element_mask(arrays)?;
        let (layout, mask_shape) = layout(arrays, mask_shape, shape.heads_q)?;
        let scale = scale(arrays)?;
        let Data::U8(layout) = data(layout, "layout")? else {
            return Err(wrong_dtype("layout", LAYOUT_TYPE, layout));
        };
        let mask = BlockMask::from_layout(mask_shape, element, layout)
            .map_err(|e| format!("`layout`: {e}"))?;
        Ok(AttentionFile {
            shape,
            q: float16(q, "q")?,
            k: float16(k, "k")?,
            v: float16(v, "v")?,
            mask,
            scale,
        })
    }
}

/// The shape that q, k and v agree on, and their entries.
fn qkv(arrays: &Npz) -> Result<(AttentionShape, [&Entry; 3]), String> {
    let half = |name: &str| {
        let dims: &[&str] = if name == "q" {
            &["b", "lq", "hq", "d"]
        } else {
            &["b", "lk", "hkv", "d"]
        };
        float16_entry(arrays, name, dims, ATTENTION_NEEDS)
    };
    let (q, k, v) = (half("q")?, half("k")?, half("v")?);
    let [b, lq, hq, d] = <[usize; 4]>::try_from(q.shape.as_slice()).expect("rank checked");
    let [kb, lk, hkv, kd] = <[usize; 4]>::try_from(k.shape.as_slice()).expect("rank checked");
    if kb != b || kd != d {
        let want = format!("({b}, lk, hkv, {d}) (b and d of q)");
        return Err(mismatch("k", want, k));
    }
    if v.shape != k.shape {
        return Err(mismatch("v", k.shape_text() + " (as k)", v));
    }
    let shape = AttentionShape::new(b, lq, lk, hq, hkv, d).map_err(|e| format!("`q`, `k`: {e}"))?;
    Ok((shape, [q, k, v]))
}

/// The element mask that `mask_mod` (and `window`) name.
fn element_mask(arrays: &Npz) -> Result<ElementMask, String> {
    let window = || -> Result<usize, String> {
        let window = scalar_i32(arrays, "window")?;
        usize::try_from(window)
            .ok()
            .filter(|&w| w > 0)
            .ok_or_else(|| format!("`window`: expected a window of at least 1 key, got {window}"))
    };
    match scalar_i32(arrays, "mask_mod")? {
        0 => Ok(ElementMask::None),
        1 => Ok(ElementMask::Causal),
        2 => Ok(ElementMask::SlidingWindow(window()?)),
        3 => Ok(ElementMask::CausalWindow(window()?)),
        other => Err(format!(
            "`mask_mod`: expected 0 (none), 1 (causal), 2 (sliding window) or 3 (causal + window), got {other}"
        )),
    }
}

const LAYOUT_TYPE: &str = "uint8 (0 skip, 1 partial, 2 full)";

/// The `layout` entry, checked against `shape` (whose heads it sets: 1, or every query
/// head's own) without reading it.
fn layout(arrays: &Npz, shape: MaskShape, heads_q: usize) -> Result<(&Entry, MaskShape), String> {
    let layout = required(arrays, "layout", ATTENTION_NEEDS)?;
    if !layout.element.is_bytes() {
        return Err(wrong_dtype("layout", LAYOUT_TYPE, layout));
    }
    let heads = layout.shape.first().copied().unwrap_or(0);
    let expected = [heads, shape.q_blocks(), shape.kv_blocks()];
    if layout.shape != expected || (heads != 1 && heads != heads_q) {
        let want = format!("({heads_q} or 1, {}, {})", expected[1], expected[2]);
        return Err(mismatch("layout", want, layout));
    }
    Ok((layout, MaskShape { heads, ..shape }))
}

/// The finite float32 scalar `scale`.
fn scale(arrays: &Npz) -> Result<f64, String> {
    let scale = required(arrays, "scale", ATTENTION_NEEDS)?;
    if scale.element != Element::F32 {
        return Err(wrong_dtype("scale", "float32", scale));
    }
    if scale.shape.iter().product::<usize>() != 1 {
        return Err(mismatch("scale", "() (a scalar)".into(), scale));
    }
    match data(scale, "scale")? {
        Data::F32(v) if v[0].is_finite() => Ok(v[0].into()),
        Data::F32(v) => Err(format!("`scale`: expected a finite number, got {}", v[0])),
        _ => Err(wrong_dtype("scale", "float32", scale)),
    }
}

impl<T: DeviceFloat16> CaseFile for AttentionFile<T>
where
    f64: From<T>,
{
    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String> {
        let s = self.shape;
        let arrays = |o: Data, lse: Data| {
            vec![
                (
                    "o".to_string(),
                    Array {
                        shape: vec![s.batch, s.lq, s.heads_q, s.d],
                        data: o,
                    },
                ),
                (
                    "lse".to_string(),
                    Array {
                        shape: vec![s.batch, s.heads_q, s.lq],
                        data: lse,
                    },
                ),
            ]
        };
        if backend == Backend::Cpu {
            let [(_, o), (_, lse)] = <[_; 2]>::try_from(self.reference()?).expect("two outputs");
            let narrow = |v: Vec<f64>| Data::F32(v.into_iter().map(|x| x as f32).collect());
            return Ok(arrays(narrow(o), narrow(lse)));
        }
        let inputs = [self.q.as_slice(), &self.k, &self.v];
        // CUDA writes o in the inputs' type; WGSL can write f32, the better to compare with.
        let output = match backend {
            Backend::Wgpu => super::Output::F32,
            _ => super::Output::Input,
        };
        let scale = self.scale as f32;
        let ran = super::run(backends, backend, &s, inputs, &self.mask, scale, output);
        match ran.map_err(|e| e.to_string())? {
            Some((o, lse)) => Ok(arrays(Data::F32(o), Data::F32(lse))),
            None => Err(format!("attention has no {backend} path in this build")),
        }
    }

    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String> {
        let out = super::reference(
            &self.shape,
            &self.q,
            &self.k,
            &self.v,
            &self.mask,
            self.scale,
        )
        .map_err(|e| e.to_string())?;
        Ok(vec![("o".into(), out.o), ("lse".into(), out.lse)])
    }

    fn tolerance(&self) -> Tolerance {
        if T::DTYPE == Dtype16::Bf16 {
            Tolerance::BF16
        } else {
            Tolerance::F16
        }
    }
}

/// The backward pass's case files: the forward's arrays and `do`; out `dq`, `dk`, `dv`.
pub(crate) const BACKWARD_FILE: FileEntry = FileEntry {
    marks: &["q", "k", "v", "do"],
    needs: BACKWARD_NEEDS,
    load: load_backward,
};

const BACKWARD_NEEDS: &str = "attention-backward needs attention's arrays (q, k, v, block_m, block_n, \
mask_mod, window, layout, scale) and do [b, lq, hq, d] float16 (as q)";

fn load_backward(arrays: &Npz, options: FileOptions) -> Result<Box<dyn CaseFile>, String> {
    options.no_format("attention-backward")?;
    match options.dtype.unwrap_or(Dtype::F16) {
        Dtype::F16 => Ok(Box::new(BackwardFile::<f16>::load(arrays)?)),
        Dtype::Bf16 => Ok(Box::new(BackwardFile::<bf16>::load(arrays)?)),
        Dtype::F32 => Err("--dtype f32: attention computes on f16 or bf16 inputs".into()),
    }
}

/// A backward case: the forward's and dO, the cotangent of o.
struct BackwardFile<T> {
    forward: AttentionFile<T>,
    d_o: Vec<T>,
}

impl<T: Float16> BackwardFile<T> {
    /// `do`'s header is checked against q's before anything is read.
    fn load(arrays: &Npz) -> Result<Self, String> {
        let d_o = float16_entry(arrays, "do", &["b", "lq", "hq", "d"], BACKWARD_NEEDS)?;
        let q = required(arrays, "q", BACKWARD_NEEDS)?;
        if d_o.shape != q.shape {
            return Err(mismatch("do", q.shape_text() + " (as q)", d_o));
        }
        let forward = AttentionFile::<T>::load(arrays)?;
        Ok(BackwardFile {
            forward,
            d_o: float16(d_o, "do")?,
        })
    }
}

impl<T: DeviceFloat16> CaseFile for BackwardFile<T>
where
    f64: From<T>,
{
    /// On a GPU: the forward (its o and lse), then the backward with f32 gradients.
    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String> {
        let s = self.forward.shape;
        let q_dims = vec![s.batch, s.lq, s.heads_q, s.d];
        let kv_dims = vec![s.batch, s.lk, s.heads_kv, s.d];
        let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let gradients: Vec<(String, Vec<f32>)> = match backend {
            Backend::Cpu => (self.reference()?.into_iter())
                .map(|(name, values)| (name, narrow(values)))
                .collect(),
            _ => self
                .on_device(backends, backend)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("attention-backward has no {backend} path in this build"))?,
        };
        Ok(gradients
            .into_iter()
            .zip([q_dims, kv_dims.clone(), kv_dims])
            .map(|((name, values), shape)| {
                let data = Data::F32(values);
                (name, Array { shape, data })
            })
            .collect())
    }

    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String> {
        let f = &self.forward;
        let inputs = [f.q.as_slice(), &f.k, &f.v];
        let g = super::reference_backward(&f.shape, inputs, &self.d_o, &f.mask, f.scale)
            .map_err(|e| e.to_string())?;
        Ok(vec![
            ("dq".into(), g.dq),
            ("dk".into(), g.dk),
            ("dv".into(), g.dv),
        ])
    }

    fn tolerance(&self) -> Tolerance {
        super::check_backward::backward_tolerance(T::DTYPE == Dtype16::Bf16)
    }
}

/// Output arrays by name, in f32.
type Named = Vec<(String, Vec<f32>)>;

impl<T: DeviceFloat16> BackwardFile<T> {
    /// The forward on `backend` (o in the inputs' type, and lse), then the backward with f32
    /// gradients, named; `None` where this build has no such backend.
    fn on_device(&self, backends: &Backends, backend: Backend) -> crate::Result<Option<Named>> {
        let f = &self.forward;
        let (scale, output) = (f.scale as f32, super::Output::Input);
        let inputs = [f.q.as_slice(), &f.k, &f.v];
        let Some((o, lse)) =
            super::run(backends, backend, &f.shape, inputs, &f.mask, scale, output)?
        else {
            return Ok(None);
        };
        // o came back widened from the inputs' type: narrowing it again is exact.
        let o: Vec<T> = o.into_iter().map(|x| T::from_f64(x.into())).collect();
        let args = super::check_backward::BackwardArgs {
            shape: &f.shape,
            qkv: inputs,
            o: &o,
            d_o: &self.d_o,
            lse: &lse,
            mask: &f.mask,
            scale,
            output: super::Output::F32,
        };
        let gradients = super::check_backward::run_backward(backends, backend, &args)?;
        Ok(gradients.map(|g| {
            ["dq", "dk", "dv"]
                .into_iter()
                .map(String::from)
                .zip(g)
                .collect()
        }))
    }
}

/// `tilefuse profile attention`: b = 1, causal, 128-blocks, f16, as many key/value heads as
/// query heads; the kernel the launcher picks (on Hopper the sm_90a one) or, with
/// `--portable`, the portable one.
#[cfg(feature = "cuda")]
pub(crate) const PROFILE: ProfileEntry = ProfileEntry {
    params: &[LEN, HEADS, HEAD_DIM, PORTABLE],
    prepare: prepare_profile,
};

/// `tilefuse profile attention-backward`: the forward's configuration, the forward run once
/// for o and lse, then the backward (both kernels each launch) with f16 gradients.
#[cfg(feature = "cuda")]
pub(crate) const BACKWARD_PROFILE: ProfileEntry = ProfileEntry {
    params: &[LEN, HEADS, HEAD_DIM],
    prepare: prepare_backward_profile,
};

#[cfg(feature = "cuda")]
const LEN: ProfileParam = ProfileParam {
    name: "len",
    help: "attention: query and key length",
    kind: ParamKind::Count(8192),
};
#[cfg(feature = "cuda")]
const HEADS: ProfileParam = ProfileParam {
    name: "heads",
    help: "attention: query heads (as many key/value heads)",
    kind: ParamKind::Count(32),
};
#[cfg(feature = "cuda")]
const HEAD_DIM: ProfileParam = ProfileParam {
    name: "head-dim",
    help: "attention: head dimension (64 or 128)",
    kind: ParamKind::Count(128),
};
#[cfg(feature = "cuda")]
const PORTABLE: ProfileParam = ProfileParam {
    name: "portable",
    help: "attention: the portable kernel (on Hopper the default is the sm_90a one)",
    kind: ParamKind::Switch,
};

/// The profiled shape (b = 1, hq = hkv) and its causal mask on `cuda`.
#[cfg(feature = "cuda")]
fn profile_shape(
    cuda: &Cuda,
    values: &ProfileValues,
) -> crate::Result<(AttentionShape, super::cuda::DeviceBlockMask)> {
    let (l, heads, d) = (
        values.count("len")?,
        values.count("heads")?,
        values.count("head-dim")?,
    );
    let shape = AttentionShape::new(1, l, l, heads, heads, d)?;
    let mask = BlockMask::causal(MaskShape::new(l, l))?;
    Ok((shape, super::cuda::DeviceBlockMask::upload(cuda, &mask)?))
}

#[cfg(feature = "cuda")]
fn prepare_backward_profile<'a>(
    cuda: &'a Cuda,
    values: &ProfileValues,
) -> crate::Result<Prepared<'a>> {
    use super::cuda::{
        AttentionWorkspace, BackwardInputs, BackwardOutputs, Inputs, Outputs,
        attention_backward_with_workspace, attention_with_workspace,
    };
    let (shape, mask) = profile_shape(cuda, values)?;
    let (l, heads, d) = (shape.lq, shape.heads_q, shape.d);
    let values = vec![f16::from_f32(0.01); l * heads * d];
    let [q, k, v, d_o, o, dq, dk, dv] = [0; 8].map(|_| cuda.upload(&values));
    let (q, k, v, d_o, mut o) = (q?, k?, v?, d_o?, o?);
    let (mut dq, mut dk, mut dv) = (dq?, dk?, dv?);
    let mut lse = cuda.upload(&vec![0.0f32; l * heads])?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut workspace = AttentionWorkspace::new();
    let inputs = Inputs {
        q: &q,
        k: &k,
        v: &v,
    };
    let outputs = Outputs {
        o: &mut o,
        lse: Some(&mut lse),
    };
    attention_with_workspace(cuda, &shape, inputs, &mask, outputs, scale, &mut workspace)?;
    Ok(Prepared {
        label: format!("attention-backward causal b=1 l={l} hq={heads} d={d}"),
        launch: Box::new(move || {
            let inputs = BackwardInputs {
                q: &q,
                k: &k,
                v: &v,
                o: &o,
                d_o: &d_o,
                lse: &lse,
            };
            let outputs = BackwardOutputs {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
            };
            attention_backward_with_workspace::<f16, f16, _, _, _, _, _, _>(
                cuda,
                &shape,
                inputs,
                &mask,
                outputs,
                scale,
                &mut workspace,
            )
        }),
    })
}

#[cfg(feature = "cuda")]
fn prepare_profile<'a>(cuda: &'a Cuda, values: &ProfileValues) -> crate::Result<Prepared<'a>> {
    use super::cuda::{
        AttentionWorkspace, ForwardKernel, Inputs, Outputs, attention_with_workspace,
    };
    let kernel = if values.switch("portable")? {
        ForwardKernel::Portable
    } else {
        ForwardKernel::Auto
    };
    let mut workspace = AttentionWorkspace::new().with_forward_kernel(kernel);
    let (shape, mask) = profile_shape(cuda, values)?;
    let (l, heads, d) = (shape.lq, shape.heads_q, shape.d);
    let values = vec![f16::from_f32(0.01); l * heads * d];
    let (q, k, v) = (
        cuda.upload(&values)?,
        cuda.upload(&values)?,
        cuda.upload(&values)?,
    );
    let mut o = cuda.upload(&values)?;
    let scale = 1.0 / (d as f32).sqrt();
    Ok(Prepared {
        label: format!("attention causal b=1 l={l} hq={heads} d={d}"),
        launch: Box::new(move || {
            let inputs = Inputs {
                q: &q,
                k: &k,
                v: &v,
            };
            let outputs = Outputs {
                o: &mut o,
                lse: None,
            };
            attention_with_workspace(cuda, &shape, inputs, &mask, outputs, scale, &mut workspace)
        }),
    })
}
