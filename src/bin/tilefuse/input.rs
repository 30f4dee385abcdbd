//! Case files: an op's inputs from a NumPy `.npz`, validated array by array, run on a backend
//! or on the reference, and its outputs as arrays.

use std::collections::BTreeMap;

use half::{bf16, f16};
use num_complex::Complex32;
use tilefuse::attention::{self, AttentionShape, BlockMask, ElementMask, MaskShape};
use tilefuse::element::{DeviceFloat16, DeviceOutput, Float16, OutputElement};
use tilefuse::harness::{Backend, Backends, Tolerance};
use tilefuse::scan::{self, Decay, Layout, Scan, ScanElement, ScanShape};
use tilefuse::spmm::{self, TiledCsl};

use crate::npz::{Array, Data};

/// The ops a case file can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    Spmm,
    Scan,
    Attention,
}

impl Op {
    /// The op whose input arrays the file holds.
    pub fn infer(arrays: &BTreeMap<String, Array>) -> Result<Op, String> {
        let has = |name: &str| arrays.contains_key(name);
        if has("w") && has("x") {
            Ok(Op::Spmm)
        } else if has("u") && has("reset") {
            Ok(Op::Scan)
        } else if has("q") && has("k") && has("v") {
            Ok(Op::Attention)
        } else {
            let names: Vec<&str> = arrays.keys().map(String::as_str).collect();
            Err(format!(
                "cannot tell the op from the arrays [{}]: spmm needs w and x, scan u and reset, attention q, k and v (or pass --op)",
                names.join(", ")
            ))
        }
    }
}

/// The element type a run computes in (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F16,
    Bf16,
    F32,
}

/// How `tilefuse run spmm` encodes the dense weight of the file (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SparseFormat {
    /// Flash-LLM's Tiled-CSL ([`TiledCsl`]).
    Tiledcsl,
}

/// A loaded case: it runs on any backend and knows its reference and bound.
pub trait CaseFile {
    /// The backends the op has a path on (the CPU runs the reference).
    fn backends(&self) -> &'static [Backend] {
        &[Backend::Cpu, Backend::Cuda, Backend::Wgpu]
    }
    /// Runs on `backend`; the CPU runs the f64 reference. Output arrays by name.
    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String>;
    /// The f64 reference of each output, by name.
    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String>;
    /// The error bound against the reference.
    fn tolerance(&self) -> Tolerance;
}

/// Validates the arrays of `op` and builds its case.
pub fn load(
    op: Op,
    arrays: &BTreeMap<String, Array>,
    dtype: Option<Dtype>,
    format: Option<SparseFormat>,
) -> Result<Box<dyn CaseFile>, String> {
    if format.is_some() && op != Op::Spmm {
        let op = format!("{op:?}").to_lowercase();
        return Err(format!("--format: only spmm has a sparse weight, not {op}"));
    }
    match op {
        Op::Spmm => match dtype.unwrap_or(Dtype::F16) {
            Dtype::F16 => Ok(Box::new(SpmmFile::<f16>::load(arrays)?)),
            Dtype::Bf16 => Ok(Box::new(SpmmFile::<bf16>::load(arrays)?)),
            Dtype::F32 => {
                Err("--dtype f32: spmm computes in f16 or bf16 (f32 accumulation)".into())
            }
        },
        Op::Scan => {
            if dtype.is_some_and(|d| d != Dtype::F32) {
                return Err("--dtype: scan computes in f32 (float32 or complex64 arrays)".into());
            }
            match &required(arrays, "u", SCAN_NEEDS)?.data {
                Data::C64(_) => Ok(Box::new(ScanFile::<Complex32>::load(arrays)?)),
                _ => Ok(Box::new(ScanFile::<f32>::load(arrays)?)),
            }
        }
        Op::Attention => match dtype.unwrap_or(Dtype::F16) {
            Dtype::F16 => Ok(Box::new(AttentionFile::<f16>::load(arrays)?)),
            Dtype::Bf16 => Ok(Box::new(AttentionFile::<bf16>::load(arrays)?)),
            Dtype::F32 => Err("--dtype f32: attention computes on f16 or bf16 inputs".into()),
        },
    }
}

const ATTENTION_NEEDS: &str = "attention needs q [b, lq, hq, d], k and v [b, lk, hkv, d] float16, \
block_m, block_n, mask_mod, window (int32 scalars), layout [hq or 1, q_blocks, kv_blocks] uint8, scale (float32 scalar)";
const SPMM_NEEDS: &str = "spmm needs w [m, k] and x [n, k], float16";
const SCAN_NEEDS: &str = "scan needs a [p] or [b, t, p], u [b, t, p] (float32 or complex64), reset [b, t] uint8, optional h0 [b, p]";

fn required<'a>(
    arrays: &'a BTreeMap<String, Array>,
    name: &str,
    needs: &str,
) -> Result<&'a Array, String> {
    arrays
        .get(name)
        .ok_or_else(|| format!("`{name}`: missing ({needs})"))
}

fn rank(array: &Array, name: &str, dims: &[&str]) -> Result<(), String> {
    if array.shape.len() == dims.len() {
        return Ok(());
    }
    Err(format!(
        "`{name}`: expected {} dimensions [{}], got shape {}",
        dims.len(),
        dims.join(", "),
        array.shape_text()
    ))
}

fn wrong_dtype(name: &str, expected: &str, array: &Array) -> String {
    format!("`{name}`: expected {expected}, got {}", array.data.dtype())
}

fn mismatch(name: &str, expected: String, array: &Array) -> String {
    format!(
        "`{name}`: expected shape {expected}, got {}",
        array.shape_text()
    )
}

/// The float16 array `name` of rank `dims.len()`, converted to `T`.
fn float16<'a, T: Float16>(
    arrays: &'a BTreeMap<String, Array>,
    name: &str,
    dims: &[&str],
    needs: &str,
) -> Result<(&'a Array, Vec<T>), String> {
    let array = required(arrays, name, needs)?;
    rank(array, name, dims)?;
    match &array.data {
        Data::F16(values) => Ok((
            array,
            values.iter().map(|v| T::from_f64(v.to_f64())).collect(),
        )),
        _ => Err(wrong_dtype(name, "float16", array)),
    }
}

struct SpmmFile<T: Float16> {
    w: TiledCsl<T>,
    x: Vec<T>,
    n: usize,
}

impl<T: Float16> SpmmFile<T> {
    fn load(arrays: &BTreeMap<String, Array>) -> Result<Self, String> {
        let (w_array, w) = float16(arrays, "w", &["m", "k"], SPMM_NEEDS)?;
        let (x_array, x) = float16(arrays, "x", &["n", "k"], SPMM_NEEDS)?;
        let (m, k) = (w_array.shape[0], w_array.shape[1]);
        if x_array.shape[1] != k {
            return Err(mismatch("x", format!("(n, {k}) (k from w)"), x_array));
        }
        let n = x_array.shape[0];
        if m == 0 || k == 0 || n == 0 {
            return Err(format!(
                "`w`, `x`: every size must be at least 1, got w {} and x {}",
                w_array.shape_text(),
                x_array.shape_text()
            ));
        }
        let w = TiledCsl::encode(&w, m, k).map_err(|e| format!("`w`: {e}"))?;
        Ok(SpmmFile { w, x, n })
    }

    fn y(&self, values: Vec<f32>) -> Vec<(String, Array)> {
        vec![(
            "y".into(),
            Array {
                shape: vec![self.n, self.w.m()],
                data: Data::F32(values),
            },
        )]
    }
}

impl<T: DeviceFloat16> CaseFile for SpmmFile<T>
where
    f32: DeviceOutput<T>,
{
    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String> {
        if backend == Backend::Cpu {
            let y = spmm::reference(&self.w, &self.x).map_err(|e| e.to_string())?;
            return Ok(self.y(y.into_iter().map(|v| v as f32).collect()));
        }
        match spmm::run::<T, f32>(backends, backend, &self.w, &self.x).map_err(|e| e.to_string())? {
            Some(y) => Ok(self.y(y)),
            None => Err(format!("spmm has no {backend} path")),
        }
    }

    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String> {
        Ok(vec![(
            "y".into(),
            spmm::reference(&self.w, &self.x).map_err(|e| e.to_string())?,
        )])
    }

    /// The operands' 16-bit bound: a file's data may be of one sign, where f32 accumulation's
    /// roundings add up (spmm::tolerance holds random-sign test data to f32's).
    fn tolerance(&self) -> Tolerance {
        spmm::tolerance(T::NAME == "bf16", false, self.w.k())
    }
}

struct ScanFile<T: ScanElement> {
    scan: Scan<T>,
    inputs: scan::Inputs<T>,
}

/// Elements of `array` if it holds `T`s (float32 for f32, complex64 for Complex32).
fn elements<T: ScanElement>(name: &str, array: &Array) -> Result<Vec<T>, String> {
    match (&array.data, T::LANES) {
        (Data::F32(values), 1) => Ok(bytemuck::cast_slice(values).to_vec()),
        (Data::C64(values), 2) => Ok(bytemuck::cast_slice(values).to_vec()),
        _ => Err(wrong_dtype(
            name,
            if T::LANES == 1 {
                "float32 (as u)"
            } else {
                "complex64 (as u)"
            },
            array,
        )),
    }
}

impl<T: ScanElement> ScanFile<T> {
    fn load(arrays: &BTreeMap<String, Array>) -> Result<Self, String> {
        let u_array = required(arrays, "u", SCAN_NEEDS)?;
        rank(u_array, "u", &["b", "t", "p"])?;
        if !matches!(u_array.data, Data::F32(_) | Data::C64(_)) {
            return Err(wrong_dtype("u", "float32 or complex64", u_array));
        }
        let (b, t, p) = (u_array.shape[0], u_array.shape[1], u_array.shape[2]);
        let shape = ScanShape::new(b, t, p).map_err(|e| format!("`u`: {e}"))?;
        let a_array = required(arrays, "a", SCAN_NEEDS)?;
        let decay = match a_array.shape.as_slice() {
            [q] if *q == p => Decay::TimeInvariant,
            dims if dims == u_array.shape.as_slice() => Decay::TimeVarying,
            _ => {
                return Err(mismatch(
                    "a",
                    format!("({p},) or {} (as u)", u_array.shape_text()),
                    a_array,
                ));
            }
        };
        let reset_array = required(arrays, "reset", SCAN_NEEDS)?;
        if reset_array.shape != [b, t] {
            return Err(mismatch(
                "reset",
                format!("({b}, {t}) ([b, t] of u)"),
                reset_array,
            ));
        }
        let Data::U8(reset) = &reset_array.data else {
            return Err(wrong_dtype("reset", "uint8 (or bool)", reset_array));
        };
        let h0 = match arrays.get("h0") {
            None => None,
            Some(array) if array.shape == [b, p] => Some(elements::<T>("h0", array)?),
            Some(array) => return Err(mismatch("h0", format!("({b}, {p}) ([b, p] of u)"), array)),
        };
        let inputs = scan::Inputs {
            a: elements::<T>("a", a_array)?,
            u: elements::<T>("u", u_array)?,
            reset: reset.clone(),
            h0,
        };
        Ok(ScanFile {
            scan: Scan::new(shape, Layout::BatchMajor, decay),
            inputs,
        })
    }

    fn arrays(&self, h: Option<Vec<f32>>, h_last: Vec<f32>) -> Vec<(String, Array)> {
        let shape = self.scan.shape;
        let data = |v: Vec<f32>| match T::LANES {
            1 => Data::F32(v),
            _ => Data::C64(bytemuck::cast_slice(&v).to_vec()),
        };
        let mut out = Vec::new();
        if let Some(h) = h {
            out.push((
                "h".into(),
                Array {
                    shape: vec![shape.batch(), shape.time(), shape.channels()],
                    data: data(h),
                },
            ));
        }
        out.push((
            "h_last".into(),
            Array {
                shape: vec![shape.batch(), shape.channels()],
                data: data(h_last),
            },
        ));
        out
    }
}

impl<T: ScanElement> CaseFile for ScanFile<T> {
    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String> {
        if backend == Backend::Cpu {
            let [(_, h), (_, h_last)] = <[_; 2]>::try_from(self.reference()?).expect("two outputs");
            let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
            return Ok(self.arrays(Some(narrow(h)), narrow(h_last)));
        }
        match scan::run(backends, backend, &self.scan, &self.inputs, false)
            .map_err(|e| e.to_string())?
        {
            Some(out) => Ok(self.arrays(out.h, out.h_last)),
            None => Err(format!("scan has no {backend} path")),
        }
    }

    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String> {
        let i = &self.inputs;
        let states = scan::reference(&self.scan, &i.a, &i.u, &i.reset, i.h0.as_deref())
            .map_err(|e| e.to_string())?;
        Ok(vec![
            ("h".into(), states.h),
            ("h_last".into(), states.h_last),
        ])
    }

    fn tolerance(&self) -> Tolerance {
        // The bound of a scan whose |a| may reach its largest value in the file.
        let max_a = self
            .inputs
            .a
            .iter()
            .map(|a| a.widen().norm())
            .fold(0.0, f64::max);
        let shape = self.scan.shape;
        scan::Case {
            a_magnitude: (0.0, max_a),
            ..scan::Case::new(shape.batch(), shape.time(), shape.channels())
        }
        .tolerance()
    }
}

/// An array's values as f64 (complex as interleaved pairs), for comparisons.
pub fn as_f64(array: &Array) -> Option<Vec<f64>> {
    match &array.data {
        Data::F16(v) => Some(v.iter().map(|x| x.to_f64()).collect()),
        Data::F32(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Data::C64(v) => Some(v.iter().flat_map(|c| [c.re.into(), c.im.into()]).collect()),
        _ => None,
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
fn scalar_i32(arrays: &BTreeMap<String, Array>, name: &str) -> Result<i64, String> {
    let array = required(arrays, name, ATTENTION_NEEDS)?;
    match &array.data {
        Data::I32(v) if v.len() == 1 => Ok(v[0].into()),
        Data::I32(_) => Err(mismatch(name, "() (a scalar)".into(), array)),
        _ => Err(wrong_dtype(name, "int32", array)),
    }
}

impl<T: Float16> AttentionFile<T> {
    fn load(arrays: &BTreeMap<String, Array>) -> Result<Self, String> {
        let half = |name: &str| {
            let dims: &[&str] = if name == "q" {
                &["b", "lq", "hq", "d"]
            } else {
                &["b", "lk", "hkv", "d"]
            };
            float16(arrays, name, dims, ATTENTION_NEEDS)
        };
        let ((q_array, q), (k_array, k), (v_array, v)) = (half("q")?, half("k")?, half("v")?);
        let [b, lq, hq, d] =
            <[usize; 4]>::try_from(q_array.shape.as_slice()).expect("rank checked");
        let [kb, lk, hkv, kd] =
            <[usize; 4]>::try_from(k_array.shape.as_slice()).expect("rank checked");
        if kb != b || kd != d {
            return Err(mismatch(
                "k",
                format!("({b}, lk, hkv, {d}) (b and d of q)"),
                k_array,
            ));
        }
        if v_array.shape != k_array.shape {
            return Err(mismatch("v", k_array.shape_text() + " (as k)", v_array));
        }
        let shape =
            AttentionShape::new(b, lq, lk, hq, hkv, d).map_err(|e| format!("`q`, `k`: {e}"))?;
        let block = |name: &str| -> Result<usize, String> {
            match scalar_i32(arrays, name)? {
                size @ (64 | 128) => Ok(size as usize),
                other => Err(format!("`{name}`: expected 64 or 128, got {other}")),
            }
        };
        let (block_m, block_n) = (block("block_m")?, block("block_n")?);
        let mask_mod = scalar_i32(arrays, "mask_mod")?;
        let window = || -> Result<usize, String> {
            let window = scalar_i32(arrays, "window")?;
            usize::try_from(window)
                .ok()
                .filter(|&w| w > 0)
                .ok_or_else(|| {
                    format!("`window`: expected a window of at least 1 key, got {window}")
                })
        };
        let element = match mask_mod {
            0 => ElementMask::None,
            1 => ElementMask::Causal,
            2 => ElementMask::SlidingWindow(window()?),
            3 => ElementMask::CausalWindow(window()?),
            other => {
                return Err(format!(
                    "`mask_mod`: expected 0 (none), 1 (causal), 2 (sliding window) or 3 (causal + window), got {other}"
                ));
            }
        };
        let layout_array = required(arrays, "layout", ATTENTION_NEEDS)?;
        let Data::U8(layout) = &layout_array.data else {
            return Err(wrong_dtype(
                "layout",
                "uint8 (0 skip, 1 partial, 2 full)",
                layout_array,
            ));
        };
        let mask_heads = layout_array.shape.first().copied().unwrap_or(0);
        let mask_shape = MaskShape {
            batch: 1,
            heads: mask_heads,
            lq,
            lk,
            block_m,
            block_n,
        };
        let expected = [mask_heads, lq.div_ceil(block_m), lk.div_ceil(block_n)];
        if layout_array.shape != expected || (mask_heads != 1 && mask_heads != hq) {
            let want = format!("({} or 1, {}, {})", hq, expected[1], expected[2]);
            return Err(mismatch("layout", want, layout_array));
        }
        let mask = BlockMask::from_layout(mask_shape, element, layout)
            .map_err(|e| format!("`layout`: {e}"))?;
        let scale_array = required(arrays, "scale", ATTENTION_NEEDS)?;
        let scale = match &scale_array.data {
            Data::F32(v) if v.len() == 1 && v[0].is_finite() => f64::from(v[0]),
            Data::F32(v) if v.len() == 1 => {
                return Err(format!("`scale`: expected a finite number, got {}", v[0]));
            }
            Data::F32(_) => return Err(mismatch("scale", "() (a scalar)".into(), scale_array)),
            _ => return Err(wrong_dtype("scale", "float32", scale_array)),
        };
        Ok(AttentionFile {
            shape,
            q,
            k,
            v,
            mask,
            scale,
        })
    }
}

impl<T: DeviceFloat16 + OutputElement<T>> CaseFile for AttentionFile<T>
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
            Backend::Wgpu => attention::Output::F32,
            _ => attention::Output::Input,
        };
        let scale = self.scale as f32;
        let ran = attention::run(backends, backend, &s, inputs, &self.mask, scale, output);
        match ran.map_err(|e| e.to_string())? {
            Some((o, lse)) => Ok(arrays(Data::F32(o), Data::F32(lse))),
            None => Err(format!("attention has no {backend} path in this build")),
        }
    }

    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String> {
        let out = attention::reference(
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
        if T::NAME == "bf16" {
            Tolerance::BF16
        } else {
            Tolerance::F16
        }
    }
}

/// `tilefuse run`: the op on one backend, outputs written to `output` (nothing on failure).
pub fn run_file(
    backends: &Backends,
    op: Op,
    input: &std::path::Path,
    output: &std::path::Path,
    backend: Option<Backend>,
    dtype: Option<Dtype>,
    format: Option<SparseFormat>,
) -> Result<Backend, String> {
    let arrays = crate::npz::read(input)?;
    let case = load(op, &arrays, dtype, format)?;
    let backend = match backend {
        Some(backend) => {
            backends
                .status(backend)
                .map_err(|why| format!("--backend {backend}: {why}"))?;
            backend
        }
        None => [Backend::Cuda, Backend::Wgpu, Backend::Cpu]
            .into_iter()
            .find(|&b| case.backends().contains(&b) && backends.has(b))
            .unwrap_or(Backend::Cpu),
    };
    let outputs = case.run(backends, backend)?;
    crate::npz::write(output, &outputs)?;
    Ok(backend)
}

/// One row of `tilefuse check --input`: a backend's output against the reference or against
/// an `expect_` array of the file.
pub struct FileCheck {
    pub backend: Backend,
    pub output: String,
    pub against: String,
    pub result: Result<tilefuse::harness::Comparison, String>,
}

/// `tilefuse check --input`: the op on every runnable backend against the reference and,
/// with `expect`, against the file's `expect_<output>` arrays.
pub fn check_file(
    backends: &Backends,
    op: Op,
    input: &std::path::Path,
    runnable: &[Backend],
    expect: bool,
) -> Result<Vec<FileCheck>, String> {
    let arrays = crate::npz::read(input)?;
    let case = load(op, &arrays, None, None)?;
    let reference = case.reference()?;
    let tolerance = case.tolerance();
    let mut rows = Vec::new();
    for &backend in runnable.iter().filter(|b| case.backends().contains(b)) {
        let outputs = case.run(backends, backend);
        for (name, want) in &reference {
            let got = match &outputs {
                Ok(outputs) => outputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, a)| as_f64(a)),
                Err(e) => {
                    rows.push(FileCheck {
                        backend,
                        output: name.clone(),
                        against: "reference".into(),
                        result: Err(e.clone()),
                    });
                    continue;
                }
            };
            let Some(got) = got else { continue };
            let compare = |want: &[f64]| tilefuse::harness::compare(&got, want, tolerance);
            rows.push(FileCheck {
                backend,
                output: name.clone(),
                against: "reference".into(),
                result: Ok(compare(want)),
            });
            let expected_name = format!("expect_{name}");
            if let (true, Some(expected)) = (expect, arrays.get(&expected_name)) {
                let result = match as_f64(expected) {
                    Some(values) if values.len() == want.len() => Ok(compare(&values)),
                    _ => Err(format!(
                        "`{expected_name}`: expected {} values of the output's type, got {} {}",
                        want.len(),
                        expected.data.dtype(),
                        expected.shape_text()
                    )),
                };
                rows.push(FileCheck {
                    backend,
                    output: name.clone(),
                    against: expected_name,
                    result,
                });
            }
        }
    }
    Ok(rows)
}
