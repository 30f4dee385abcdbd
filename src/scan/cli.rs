//! The scan's case files (`tilefuse run scan`, `tilefuse check --input`): `a [p]` or
//! `[b, t, p]`, `u [b, t, p]` (float32 or complex64; or float16, `[b, t, p, 2]` for complex
//! values, with a complex64 `a`), `reset [b, t]` uint8, optional `h0 [b, p]`; out
//! `h [b, t, p]` (as `u`) and `h_last [b, p]`. `a`, `h0` and `h_last` are float32 or
//! complex64 whatever `u` is: the carry is f32. `--dtype` stores `u` and `h` as f32, f16 or
//! bf16 (default: as the file holds `u`); bf16 states are written as float32, which holds them
//! exactly.

use num_complex::Complex32;

use super::{Decay, Layout, Scan, ScanElement, ScanShape, StateStorage, Storage};
#[cfg(feature = "cuda")]
use crate::backend::cuda::Cuda;
use crate::harness::file::{
    CaseFile, Dtype, FileEntry, FileOptions, data, mismatch, optional, required, wrong_dtype,
};
use crate::harness::npz::{Array, Data, Element, Entry, Npz};
#[cfg(feature = "cuda")]
use crate::harness::profile::{ParamKind, Prepared, ProfileEntry, ProfileParam, ProfileValues};
use crate::harness::{Backend, Backends, Tolerance};

/// The scan's case files.
pub(crate) const FILE: FileEntry = FileEntry {
    marks: &["u", "reset"],
    needs: SCAN_NEEDS,
    load,
};

const SCAN_NEEDS: &str = "scan needs a [p] or [b, t, p], u [b, t, p] (float32 or complex64, or float16; [b, t, p, 2] float16 with a complex64 a), reset [b, t] uint8, optional h0 [b, p]";

fn load(arrays: &Npz, options: FileOptions) -> Result<Box<dyn CaseFile>, String> {
    options.no_format("scan")?;
    let u = required(arrays, "u", SCAN_NEEDS)?;
    let storage = storage_of(options, u);
    if holds_complex(u) {
        Ok(Box::new(ScanFile::<Complex32>::load(
            arrays, storage, SCAN_NEEDS,
        )?))
    } else {
        Ok(Box::new(ScanFile::<f32>::load(
            arrays, storage, SCAN_NEEDS,
        )?))
    }
}

/// Whether `u` holds complex values: complex64, or float16 pairs in a last dimension of 2.
fn holds_complex(u: &Entry) -> bool {
    u.element == Element::C64 || (u.element == Element::F16 && u.shape.len() == 4)
}

/// How the states are stored: as `--dtype` says, else as the file holds `u`.
fn storage_of(options: FileOptions, u: &Entry) -> Storage {
    match (options.dtype, &u.element) {
        (Some(Dtype::F32), _) => Storage::F32,
        (Some(Dtype::F16), _) | (None, Element::F16) => Storage::F16,
        (Some(Dtype::Bf16), _) => Storage::Bf16,
        (None, _) => Storage::F32,
    }
}

struct ScanFile<T: ScanElement> {
    scan: Scan<T>,
    inputs: super::Inputs<T>,
    storage: Storage,
    /// Whether the states came (and go) as float16 (`[b, t, p, 2]` for complex values).
    half: bool,
}

/// An error unless `array` holds `T`s in f32 (float32 for f32, complex64 for Complex32).
fn holds<T: ScanElement>(name: &str, array: &Entry) -> Result<(), String> {
    match (&array.element, T::LANES) {
        (Element::F32, 1) | (Element::C64, 2) => Ok(()),
        (_, 1) => Err(wrong_dtype(name, "float32", array)),
        _ => Err(wrong_dtype(name, "complex64", array)),
    }
}

/// The elements of `array`, checked by [`holds`].
fn elements<T: ScanElement>(name: &str, array: &Entry) -> Result<Vec<T>, String> {
    match data(array, name)? {
        Data::F32(values) if T::LANES == 1 => Ok(bytemuck::cast_slice(values).to_vec()),
        Data::C64(values) if T::LANES == 2 => Ok(bytemuck::cast_slice(values).to_vec()),
        _ => Err(wrong_dtype(name, "the type of u", array)),
    }
}

/// The sizes `[b, t, p]` of a states array (`u`, and `dh` as u): `[b, t, p]` of `T`s in f32,
/// or float16 `[b, t, p]` (real) or `[b, t, p, 2]` (complex); and whether it is float16.
fn states_dims<T: ScanElement>(name: &str, array: &Entry) -> Result<([usize; 3], bool), String> {
    let half = array.element == Element::F16;
    let expected = match (half, T::LANES) {
        (false, 1) => "float32 [b, t, p]",
        (false, _) => "complex64 [b, t, p]",
        (true, 1) => "float16 [b, t, p]",
        (true, _) => "float16 [b, t, p, 2]",
    };
    let rank = if half && T::LANES == 2 { 4 } else { 3 };
    if !half {
        holds::<T>(name, array).map_err(|_| wrong_dtype(name, expected, array))?;
    }
    match *array.shape.as_slice() {
        [b, t, p] if rank == 3 => Ok(([b, t, p], half)),
        [b, t, p, 2] if rank == 4 => Ok(([b, t, p], half)),
        _ => Err(mismatch(name, expected.into(), array)),
    }
}

/// The elements of a states array checked by [`states_dims`], rounded to `storage`.
fn states<T: ScanElement>(name: &str, array: &Entry, storage: Storage) -> Result<Vec<T>, String> {
    let mut values = match data(array, name)? {
        Data::F16(values) => {
            let wide: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
            bytemuck::cast_slice::<f32, T>(&wide).to_vec()
        }
        _ => elements::<T>(name, array)?,
    };
    super::check::round_to(storage, &mut values);
    Ok(values)
}

impl<T: ScanElement> ScanFile<T> {
    fn load(arrays: &Npz, storage: Storage, needs: &str) -> Result<Self, String> {
        let u_array = required(arrays, "u", needs)?;
        let ([b, t, p], half) = states_dims::<T>("u", u_array)?;
        let shape = ScanShape::new(b, t, p).map_err(|e| format!("`u`: {e}"))?;
        let a_array = required(arrays, "a", needs)?;
        let decay = match a_array.shape.as_slice() {
            [q] if *q == p => Decay::TimeInvariant,
            &[ab, at, ap] if [ab, at, ap] == [b, t, p] => Decay::TimeVarying,
            _ => {
                return Err(mismatch(
                    "a",
                    format!("({p},) or ({b}, {t}, {p}) ([b, t, p] of u)"),
                    a_array,
                ));
            }
        };
        let reset_array = required(arrays, "reset", needs)?;
        if reset_array.shape != [b, t] {
            return Err(mismatch(
                "reset",
                format!("({b}, {t}) ([b, t] of u)"),
                reset_array,
            ));
        }
        if !reset_array.element.is_bytes() {
            return Err(wrong_dtype("reset", "uint8 (or bool)", reset_array));
        }
        let h0_array = optional(arrays, "h0")?;
        if let Some(array) = h0_array {
            if array.shape != [b, p] {
                return Err(mismatch("h0", format!("({b}, {p}) ([b, p] of u)"), array));
            }
            holds::<T>("h0", array)?;
        }
        holds::<T>("a", a_array)?;
        let Data::U8(reset) = data(reset_array, "reset")? else {
            return Err(wrong_dtype("reset", "uint8 (or bool)", reset_array));
        };
        let inputs = super::Inputs {
            a: elements::<T>("a", a_array)?,
            u: states::<T>("u", u_array, storage)?,
            reset: reset.clone(),
            h0: h0_array.map(|h0| elements::<T>("h0", h0)).transpose()?,
        };
        Ok(ScanFile {
            scan: Scan::new(shape, Layout::BatchMajor, decay),
            inputs,
            storage,
            half,
        })
    }

    /// f32 values as an array of `T`s in f32 (float32 or complex64) of `dims`.
    fn wide_array(dims: Vec<usize>, values: Vec<f32>) -> Array {
        let data = match T::LANES {
            1 => Data::F32(values),
            _ => Data::C64(bytemuck::cast_slice(&values).to_vec()),
        };
        Array { shape: dims, data }
    }

    /// States `[b, t, p]` (h, du) as the file held u: float16 when it came so and is stored
    /// so (complex values in a last dimension of 2), else float32 or complex64.
    fn states_array(&self, values: Vec<f32>) -> Array {
        let shape = self.scan.shape;
        let dims = vec![shape.batch(), shape.time(), shape.channels()];
        if self.half && self.storage == Storage::F16 {
            let data = Data::F16(values.into_iter().map(half::f16::from_f32).collect());
            let dims = match T::LANES {
                1 => dims,
                _ => [dims, vec![2]].concat(),
            };
            return Array { shape: dims, data };
        }
        Self::wide_array(dims, values)
    }

    fn arrays(&self, h: Option<Vec<f32>>, h_last: Vec<f32>) -> Vec<(String, Array)> {
        let shape = self.scan.shape;
        let mut out = Vec::new();
        if let Some(h) = h {
            out.push(("h".into(), self.states_array(h)));
        }
        let dims = vec![shape.batch(), shape.channels()];
        out.push(("h_last".into(), Self::wide_array(dims, h_last)));
        out
    }

    /// The scan on `backend` with the states stored as `S`.
    fn run_stored<S: StateStorage>(
        &self,
        backends: &Backends,
        backend: Backend,
    ) -> crate::Result<Option<super::Outputs>> {
        super::run::<T, S>(backends, backend, &self.scan, &self.inputs, false)
    }

    /// The bound of a scan whose |a| may reach its largest value in the file.
    fn case(&self) -> super::Case {
        let max_a = self
            .inputs
            .a
            .iter()
            .map(|a| a.widen().norm())
            .fold(0.0, f64::max);
        let shape = self.scan.shape;
        super::Case {
            a_magnitude: (0.0, max_a),
            storage: self.storage,
            ..super::Case::new(shape.batch(), shape.time(), shape.channels())
        }
    }
}

impl<T: ScanElement> CaseFile for ScanFile<T> {
    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String> {
        if backend == Backend::Cpu {
            let [(_, h), (_, h_last)] = <[_; 2]>::try_from(self.reference()?).expect("two outputs");
            let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
            return Ok(self.arrays(Some(narrow(h)), narrow(h_last)));
        }
        let ran = match self.storage {
            Storage::F32 => self.run_stored::<f32>(backends, backend),
            Storage::F16 => self.run_stored::<half::f16>(backends, backend),
            Storage::Bf16 => self.run_stored::<half::bf16>(backends, backend),
        };
        match ran.map_err(|e| e.to_string())? {
            Some(out) => Ok(self.arrays(out.h, out.h_last)),
            None => Err(format!("scan has no {backend} path")),
        }
    }

    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String> {
        let i = &self.inputs;
        let states = super::reference(&self.scan, &i.a, &i.u, &i.reset, i.h0.as_deref())
            .map_err(|e| e.to_string())?;
        Ok(vec![
            ("h".into(), states.h),
            ("h_last".into(), states.h_last),
        ])
    }

    fn tolerance(&self) -> Tolerance {
        self.case().tolerance()
    }
}

/// The backward pass's case files.
pub(crate) const BACKWARD_FILE: FileEntry = FileEntry {
    marks: &["u", "reset", "dh"],
    needs: BACKWARD_NEEDS,
    load: load_backward,
};

const BACKWARD_NEEDS: &str = "scan-backward needs the scan's a, u, reset (optional h0), dh (as u), optional dh_last [b, p] (as a)";

fn load_backward(arrays: &Npz, options: FileOptions) -> Result<Box<dyn CaseFile>, String> {
    options.no_format("scan-backward")?;
    let u = required(arrays, "u", BACKWARD_NEEDS)?;
    let storage = storage_of(options, u);
    if holds_complex(u) {
        Ok(Box::new(BackwardFile::<Complex32>::load(arrays, storage)?))
    } else {
        Ok(Box::new(BackwardFile::<f32>::load(arrays, storage)?))
    }
}

/// A backward case: the forward's arrays and the cotangents.
struct BackwardFile<T: ScanElement> {
    forward: ScanFile<T>,
    cotangents: super::Cotangents<T>,
}

impl<T: ScanElement> BackwardFile<T> {
    fn load(arrays: &Npz, storage: Storage) -> Result<Self, String> {
        let dh_array = required(arrays, "dh", BACKWARD_NEEDS)?;
        let dh_last_array = optional(arrays, "dh_last")?;
        let u_array = required(arrays, "u", BACKWARD_NEEDS)?;
        let ([b, _, p], _) = states_dims::<T>("u", u_array)?;
        if dh_array.shape != u_array.shape || dh_array.element != u_array.element {
            return Err(format!(
                "`dh`: expected {} {} (as u), got {} {}",
                u_array.element.name(),
                u_array.shape_text(),
                dh_array.element.name(),
                dh_array.shape_text()
            ));
        }
        if let Some(array) = dh_last_array {
            if array.shape != [b, p] {
                return Err(mismatch(
                    "dh_last",
                    format!("({b}, {p}) ([b, p] of u)"),
                    array,
                ));
            }
            holds::<T>("dh_last", array)?;
        }
        let forward = ScanFile::<T>::load(arrays, storage, BACKWARD_NEEDS)?;
        let cotangents = super::Cotangents {
            dh: states::<T>("dh", dh_array, storage)?,
            dh_last: dh_last_array
                .map(|d| elements::<T>("dh_last", d))
                .transpose()?,
        };
        Ok(BackwardFile {
            forward,
            cotangents,
        })
    }

    /// The backward pass on `backend` with the states stored as `S`, recomputing them.
    fn run_stored<S: StateStorage>(
        &self,
        backends: &Backends,
        backend: Backend,
    ) -> crate::Result<Option<super::DeviceGradients>> {
        let (scan, inputs) = (&self.forward.scan, &self.forward.inputs);
        super::check_backward::run_backward::<T, S>(
            backends,
            backend,
            scan,
            inputs,
            &self.cotangents,
            true,
        )
    }

    /// The output arrays: du [b, t, p], da as a, dh0 [b, p] (zeros without h0).
    fn arrays(&self, du: Vec<f32>, da: Vec<f32>, dh0: Option<Vec<f32>>) -> Vec<(String, Array)> {
        let scan = &self.forward.scan;
        let shape = scan.shape;
        let a_shape = match scan.decay {
            Decay::TimeInvariant => vec![shape.channels()],
            Decay::TimeVarying => vec![shape.batch(), shape.time(), shape.channels()],
        };
        let final_shape = vec![shape.batch(), shape.channels()];
        let dh0 = dh0.unwrap_or_else(|| vec![0.0; scan.final_len() * T::LANES]);
        vec![
            ("du".into(), self.forward.states_array(du)),
            ("da".into(), ScanFile::<T>::wide_array(a_shape, da)),
            ("dh0".into(), ScanFile::<T>::wide_array(final_shape, dh0)),
        ]
    }
}

impl<T: ScanElement> CaseFile for BackwardFile<T> {
    fn backends(&self) -> &'static [Backend] {
        super::check_backward::BACKWARD_BACKENDS
    }

    fn run(&self, backends: &Backends, backend: Backend) -> Result<Vec<(String, Array)>, String> {
        let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        if backend == Backend::Cpu {
            let mut reference = self.reference()?.into_iter().map(|(_, v)| narrow(v));
            let (du, da, dh0) = (reference.next(), reference.next(), reference.next());
            return match (du, da, dh0) {
                (Some(du), Some(da), Some(dh0)) => Ok(self.arrays(du, da, Some(dh0))),
                _ => Err("the reference gave fewer outputs than du, da, dh0".into()),
            };
        }
        let ran = match self.forward.storage {
            Storage::F32 => self.run_stored::<f32>(backends, backend),
            Storage::F16 => self.run_stored::<half::f16>(backends, backend),
            Storage::Bf16 => self.run_stored::<half::bf16>(backends, backend),
        };
        match ran.map_err(|e| e.to_string())? {
            Some(g) => Ok(self.arrays(g.du, g.da, g.dh0)),
            None => Err(format!("scan-backward has no {backend} path")),
        }
    }

    fn reference(&self) -> Result<Vec<(String, Vec<f64>)>, String> {
        let scan = &self.forward.scan;
        let grads = super::reference_backward(scan, &self.forward.inputs, &self.cotangents)
            .map_err(|e| e.to_string())?;
        let dh0 = grads
            .dh0
            .unwrap_or_else(|| vec![0.0; scan.final_len() * T::LANES]);
        Ok(vec![
            ("du".into(), grads.du),
            ("da".into(), grads.da),
            ("dh0".into(), dh0),
        ])
    }

    fn tolerance(&self) -> Tolerance {
        self.forward.tolerance()
    }

    fn tolerance_of(&self, output: &str) -> Tolerance {
        let bound = self.forward.tolerance();
        let scan = &self.forward.scan;
        let times = |factor: f64| Tolerance {
            rel_l2: bound.rel_l2 * factor,
            element: bound.element * factor,
        };
        match (output, scan.decay) {
            // g·h[t−1]: twice the bound of each.
            ("da", Decay::TimeVarying) => times(2.0),
            // A sum of b·t such products per channel, which may cancel: each channel's error
            // is bounded by twice the bound times the sum of its terms' magnitudes, here
            // relative to the norm of da (as the check of the registered cases bounds it).
            ("da", Decay::TimeInvariant) => {
                let magnitudes = super::backward::da_term_magnitudes(
                    scan,
                    &self.forward.inputs,
                    &self.cotangents,
                );
                let reference = self.reference().ok().and_then(|outputs| {
                    outputs
                        .into_iter()
                        .find(|(name, _)| name == "da")
                        .map(|(_, v)| v)
                });
                match (magnitudes, reference) {
                    (Ok(magnitudes), Some(da)) => {
                        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                        let rms = norm(&da) / (da.len() as f64).sqrt();
                        let largest = magnitudes.iter().copied().fold(0.0, f64::max);
                        // Each complex channel's magnitude bounds both its parts.
                        let terms = norm(&magnitudes) * (T::LANES as f64).sqrt();
                        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { 1.0 };
                        Tolerance {
                            rel_l2: 2.0 * bound.rel_l2 * ratio(terms, norm(&da)).max(1.0),
                            element: 2.0 * bound.element * ratio(largest, rms).max(1.0),
                        }
                    }
                    _ => times(2.0 * ((scan.shape.batch() * scan.shape.time()) as f64).sqrt()),
                }
            }
            _ => bound,
        }
    }
}

/// `tilefuse profile scan`: 1% resets, time-invariant a, every state written.
#[cfg(feature = "cuda")]
pub(crate) const PROFILE: ProfileEntry = ProfileEntry {
    params: &[
        ProfileParam {
            name: "batch",
            help: "scan: batch rows",
            kind: ParamKind::Count(16),
        },
        ProfileParam {
            name: "time",
            help: "scan: time steps",
            kind: ParamKind::Count(8192),
        },
        ProfileParam {
            name: "channels",
            help: "scan: channels",
            kind: ParamKind::Count(256),
        },
        ProfileParam {
            name: "real",
            help: "scan: f32 instead of complex64",
            kind: ParamKind::Switch,
        },
        ProfileParam {
            name: "bf16",
            help: "scan: u and h stored in bf16 (the carry in f32)",
            kind: ParamKind::Switch,
        },
    ],
    prepare: prepare_profile,
};

#[cfg(feature = "cuda")]
fn prepare_profile<'a>(cuda: &'a Cuda, values: &ProfileValues) -> crate::Result<Prepared<'a>> {
    let storage = match values.switch("bf16")? {
        true => Storage::Bf16,
        false => Storage::F32,
    };
    let prepare = super::typed_for!(prepare_typed, !values.switch("real")?, storage);
    prepare(cuda, values)
}

#[cfg(feature = "cuda")]
fn prepare_typed<'a, T: ScanElement, S: StateStorage>(
    cuda: &'a Cuda,
    values: &ProfileValues,
) -> crate::Result<Prepared<'a>> {
    let case = super::Case {
        complex: T::LANES == 2,
        h0: false,
        storage: S::STORAGE,
        ..super::Case::new(
            values.count("batch")?,
            values.count("time")?,
            values.count("channels")?,
        )
    };
    let problem = case.scan::<T>()?;
    let inputs = super::Inputs::random(&case, &problem, 1);
    let a = cuda.upload(bytemuck::cast_slice::<T, f32>(&inputs.a))?;
    let u = cuda.upload(&super::check::stored::<T, S>(&inputs.u))?;
    let reset = cuda.upload(&inputs.reset)?;
    let mut h = cuda.upload(&vec![S::from_f32(0.0); problem.states_len() * T::LANES])?;
    let mut h_last = cuda.upload(&vec![0.0f32; problem.final_len() * T::LANES])?;
    Ok(Prepared {
        label: format!("scan {case}"),
        launch: Box::new(move || {
            let inputs = super::cuda::ScanInputs {
                a: &a,
                u: &u,
                reset: &reset,
                h0: None,
            };
            super::cuda::scan(cuda, &problem, inputs, &mut h, &mut h_last)
        }),
    })
}
