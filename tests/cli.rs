//! `tilefuse run` and `tilefuse check --input` on NumPy files, as a NumPy user drives them:
//! every op round-trips through `run` on the CPU and WGSL against the reference, and every
//! bad file gets a one-line error, exit code 2 and no output.
#![cfg(feature = "cli")]

mod common;

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use half::f16;
use npyz::WriterBuilder;
use num_complex::Complex32;
use tilefuse::harness::{Backend, Rng, Tolerance, compare};
use tilefuse::scan::{Decay, Layout, Scan, ScanElement, ScanShape, reference};
use tilefuse::spmm::TiledCsl;

/// One array of a case file, as np.savez writes it.
enum Values {
    F16(Vec<f16>),
    F32(Vec<f32>),
    C64(Vec<Complex32>),
    U8(Vec<u8>),
    I32(Vec<i32>),
}

struct Npz(Vec<(&'static str, Vec<u64>, Values)>);

impl Npz {
    fn with(mut self, name: &'static str, shape: &[u64], values: Values) -> Self {
        self.0.retain(|(n, _, _)| *n != name);
        self.0.push((name, shape.to_vec(), values));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.0.retain(|(n, _, _)| *n != name);
        self
    }

    fn save(&self, path: &Path) {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, shape, values) in &self.0 {
            zip.start_file(format!("{name}.npy"), options).unwrap();
            let mut bytes = Vec::new();
            macro_rules! emit {
                ($v:expr) => {{
                    let mut w = npyz::WriteOptions::new()
                        .default_dtype()
                        .shape(shape)
                        .writer(&mut bytes)
                        .begin_nd()
                        .unwrap();
                    w.extend($v.iter().copied()).unwrap();
                    w.finish().unwrap();
                }};
            }
            match values {
                Values::F16(v) => emit!(v),
                Values::F32(v) => emit!(v),
                Values::C64(v) => emit!(v),
                Values::U8(v) => emit!(v),
                Values::I32(v) => emit!(v),
            }
            zip.write_all(&bytes).unwrap();
        }
        std::fs::write(path, zip.finish().unwrap().into_inner()).unwrap();
    }
}

/// Reads one float16, float32 or complex64 array of an output file as f64s (complex
/// interleaved).
fn load(path: &Path, name: &str) -> (Vec<u64>, Vec<f64>) {
    load_typed(path, name).1
}

/// [`load`], with the array's dtype (`<f2`, `<f4`, `<c8`).
fn load_typed(path: &Path, name: &str) -> (String, (Vec<u64>, Vec<f64>)) {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut bytes = Vec::new();
    archive
        .by_name(&format!("{name}.npy"))
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    let dtype = npy.dtype().descr().trim_matches('\'').to_string();
    let values = match npy.dtype() {
        npyz::DType::Plain(t) if t.to_string() == "<f2" => npy
            .into_vec::<f16>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
        npyz::DType::Plain(t) if t.to_string() == "<c8" => npy
            .into_vec::<Complex32>()
            .unwrap()
            .into_iter()
            .flat_map(|c| [c.re as f64, c.im as f64])
            .collect(),
        _ => npy
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
    };
    (dtype, (shape, values))
}

/// A scratch folder for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tilefuse-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The CLI as a plain shell runs it: without `XDG_RUNTIME_DIR`, where Mesa's Vulkan driver
/// adds a warning of its own to stderr.
fn tilefuse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tilefuse"))
        .args(args)
        .env("TILEFUSE_BACKENDS", "cpu,wgpu")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap()
}

/// `--case` keeps the cases whose name holds every text given; texts that no case holds are
/// an error (exit code 2), for `check` and `bench` alike.
#[test]
fn case_texts_pick_cases_by_name() {
    let out = tilefuse(&["check", "--op", "smoke", "--case", "m=16", "--case", "k=16"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    if backends().contains(&"wgpu") {
        assert!(stdout.contains("m=16 n=8 k=16"), "{stdout}");
        assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
    }
    for command in ["check", "bench"] {
        let out = tilefuse(&[command, "--op", "smoke", "--case", "m=16", "--case", "m=17"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("no case of the selected ops"), "{stderr}");
    }
}

/// `tilefuse run OP --input .. --output .. --backend ..`, which must succeed.
fn run_ok(op: &str, input: &Path, output: &Path, backend: &str) {
    let (input, output) = (input.to_str().unwrap(), output.to_str().unwrap());
    let out = tilefuse(&[
        "run",
        op,
        "--input",
        input,
        "--output",
        output,
        "--backend",
        backend,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{op} on {backend}: {stderr}");
}

/// The backends a round trip runs on: the CPU always, WGSL where an adapter is (or must be).
fn backends() -> Vec<&'static str> {
    let mut list = vec!["cpu"];
    if common::available(Backend::Wgpu).is_some() {
        list.push("wgpu");
    }
    list
}

fn spmm_case(seed: u64) -> (Npz, TiledCsl<f16>, Vec<f16>) {
    let (m, k, n) = (150, 100, 9);
    let mut rng = Rng::new(seed);
    let w: Vec<f16> = (0..m * k)
        .map(|_| {
            if rng.unit() < 0.7 {
                f16::ZERO
            } else {
                f16::from_f64(rng.uniform(-1.0, 1.0))
            }
        })
        .collect();
    let x: Vec<f16> = (0..n * k)
        .map(|_| f16::from_f64(rng.uniform(-1.0, 1.0)))
        .collect();
    let npz = Npz(vec![])
        .with("w", &[m as u64, k as u64], Values::F16(w.clone()))
        .with("x", &[n as u64, k as u64], Values::F16(x.clone()))
        .with("notes", &[2], Values::U8(vec![1, 2])); // ignored
    (npz, TiledCsl::encode(&w, m, k).unwrap(), x)
}

#[test]
fn spmm_round_trips_through_run() {
    let seed = common::seed();
    let (npz, w, x) = spmm_case(seed);
    let dir = Scratch::new("spmm");
    let (input, output) = (dir.join("spmm.npz"), dir.join("spmm-out.npz"));
    npz.save(&input);
    let reference = tilefuse::spmm::reference(&w, &x).unwrap();
    for backend in backends() {
        run_ok("spmm", &input, &output, backend);
        let (shape, y) = load(&output, "y");
        assert_eq!(shape, [9, 150]);
        let c = compare(&y, &reference, Tolerance::F16);
        assert!(c.passed(), "{backend} (seed {seed}): {c}");
        std::fs::remove_file(&output).unwrap();
    }
    // Either format, said explicitly (tiledcsl is the old spelling), on every backend; the run
    // says which it used. Other ops have no sparse weight.
    let paths = [input.to_str().unwrap(), output.to_str().unwrap()];
    let with_format = |op: &str, backend: &str, format: &str| {
        let args = ["run", op, "--input", paths[0], "--output", paths[1]];
        tilefuse(&[&args[..], &["--backend", backend, "--format", format]].concat())
    };
    for backend in backends() {
        for (format, said) in [
            ("bitmap", "bitmap"),
            ("tiled-csl", "tiled-csl"),
            ("tiledcsl", "tiled-csl"),
        ] {
            let out = with_format("spmm", backend, format);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{format} on {backend}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if backend != "cpu" {
                assert!(stdout.contains(&format!("({said})")), "{stdout}");
            }
            let c = compare(&load(&output, "y").1, &reference, Tolerance::F16);
            assert!(c.passed(), "{format} on {backend} (seed {seed}): {c}");
            std::fs::remove_file(&output).unwrap();
        }
    }
    let out = with_format("spmm", "cpu", "tiledcsl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(load(&output, "y").0, [9, 150]);
    std::fs::remove_file(&output).unwrap();
    let out = with_format("scan", "cpu", "tiledcsl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--format"), "{stderr}");
    assert!(!output.exists());
}

fn scan_case(seed: u64, complex: bool, varying: bool) -> (Npz, Vec<f64>, Vec<f64>) {
    let (b, t, p) = (2usize, 300usize, 5usize);
    let mut rng = Rng::new(seed);
    let n_a = if varying { b * t * p } else { p };
    let reset: Vec<u8> = (0..b * t).map(|_| u8::from(rng.unit() < 0.05)).collect();
    let shape_u = [b as u64, t as u64, p as u64];
    let shape_a: Vec<u64> = if varying {
        shape_u.to_vec()
    } else {
        vec![p as u64]
    };
    let decay = if varying {
        Decay::TimeVarying
    } else {
        Decay::TimeInvariant
    };
    let problem_shape = ScanShape::new(b, t, p).unwrap();
    let (npz, states) = if complex {
        let a: Vec<Complex32> = (0..n_a)
            .map(|_| {
                Complex32::from_polar(rng.uniform(0.5, 0.95) as f32, rng.uniform(0.0, 6.0) as f32)
            })
            .collect();
        let u: Vec<Complex32> = (0..b * t * p)
            .map(|_| Complex32::new(rng.uniform(-1.0, 1.0) as f32, rng.uniform(-1.0, 1.0) as f32))
            .collect();
        let h0: Vec<Complex32> = (0..b * p).map(|_| Complex32::new(1.0, -1.0)).collect();
        let scan = Scan::<Complex32>::new(problem_shape, Layout::BatchMajor, decay);
        let states = tilefuse::scan::reference(&scan, &a, &u, &reset, Some(&h0)).unwrap();
        let npz = Npz(vec![])
            .with("a", &shape_a, Values::C64(a))
            .with("u", &shape_u, Values::C64(u))
            .with("h0", &[b as u64, p as u64], Values::C64(h0));
        (npz, states)
    } else {
        let a: Vec<f32> = (0..n_a).map(|_| rng.uniform(-0.95, 0.95) as f32).collect();
        let u: Vec<f32> = (0..b * t * p)
            .map(|_| rng.uniform(-1.0, 1.0) as f32)
            .collect();
        let scan = Scan::<f32>::new(problem_shape, Layout::BatchMajor, decay);
        let states = tilefuse::scan::reference(&scan, &a, &u, &reset, None).unwrap();
        let npz =
            Npz(vec![])
                .with("a", &shape_a, Values::F32(a))
                .with("u", &shape_u, Values::F32(u));
        (npz, states)
    };
    (
        npz.with("reset", &[b as u64, t as u64], Values::U8(reset)),
        states.h,
        states.h_last,
    )
}

#[test]
fn scan_round_trips_through_run() {
    let seed = common::seed();
    let dir = Scratch::new("scan");
    for (complex, varying) in [(false, false), (true, false), (false, true), (true, true)] {
        let (npz, h, h_last) = scan_case(seed, complex, varying);
        let (input, output) = (dir.join("scan.npz"), dir.join("scan-out.npz"));
        npz.save(&input);
        for backend in backends() {
            run_ok("scan", &input, &output, backend);
            let (shape, got_h) = load(&output, "h");
            assert_eq!(shape, [2, 300, 5]);
            let (shape, got_last) = load(&output, "h_last");
            assert_eq!(shape, [2, 5]);
            for (got, want) in [(got_h, &h), (got_last, &h_last)] {
                let c = compare(&got, want, Tolerance::F32);
                assert!(
                    c.passed(),
                    "{backend} complex={complex} varying={varying} (seed {seed}): {c}"
                );
            }
            std::fs::remove_file(&output).unwrap();
        }
    }
}

/// A backward case file (the scan's arrays, `dh` and, when asked, `dh_last`) of `T` elements,
/// and the reference's du, da and dh0 (zeros without h0).
fn scan_backward_case<T: ScanElement>(
    seed: u64,
    varying: bool,
    with_h0: bool,
    with_dh_last: bool,
    values: fn(Vec<T>) -> Values,
) -> (Npz, [Vec<f64>; 3]) {
    let (b, t, p) = (2usize, 300usize, 5usize);
    let decay = if varying {
        Decay::TimeVarying
    } else {
        Decay::TimeInvariant
    };
    let case = tilefuse::scan::Case {
        complex: T::LANES == 2,
        decay,
        h0: with_h0,
        resets: tilefuse::scan::ResetPattern::Random(0.05),
        ..tilefuse::scan::Case::new(b, t, p)
    };
    let scan = Scan::<T>::new(ScanShape::new(b, t, p).unwrap(), Layout::BatchMajor, decay);
    let inputs = tilefuse::scan::Inputs::random(&case, &scan, seed);
    let cotangents = tilefuse::scan::random_cotangents(&scan, with_dh_last, seed ^ 3);
    let grads = tilefuse::scan::reference_backward(&scan, &inputs, &cotangents).unwrap();
    let dh0 = grads.dh0.unwrap_or_else(|| vec![0.0; b * p * T::LANES]);
    let shape_u = [b as u64, t as u64, p as u64];
    let shape_a: Vec<u64> = if varying {
        shape_u.to_vec()
    } else {
        vec![p as u64]
    };
    let mut npz = Npz(vec![])
        .with("a", &shape_a, values(inputs.a))
        .with("u", &shape_u, values(inputs.u))
        .with("reset", &[b as u64, t as u64], Values::U8(inputs.reset))
        .with("dh", &shape_u, values(cotangents.dh));
    if let Some(h0) = inputs.h0 {
        npz = npz.with("h0", &[b as u64, p as u64], values(h0));
    }
    if let Some(dh_last) = cotangents.dh_last {
        npz = npz.with("dh_last", &[b as u64, p as u64], values(dh_last));
    }
    (npz, [grads.du, grads.da, dh0])
}

/// `tilefuse run scan-backward`: du [b, t, p], da as a and dh0 [b, p] in the input's type,
/// against the reference, for f32 and complex64, both decays, with and without h0 and
/// dh_last; `check --input` tells such a file from a forward case by its `dh`.
#[test]
fn scan_backward_round_trips_through_run() {
    let seed = common::seed();
    let dir = Scratch::new("scan-backward");
    let (input, output) = (dir.join("case.npz"), dir.join("out.npz"));
    let cases = [
        (false, false, true, true),
        (true, true, false, false),
        (true, false, true, false),
        (false, true, false, true),
    ];
    for (complex, varying, with_h0, with_dh_last) in cases {
        let (npz, want) = if complex {
            scan_backward_case::<Complex32>(seed, varying, with_h0, with_dh_last, Values::C64)
        } else {
            scan_backward_case::<f32>(seed, varying, with_h0, with_dh_last, Values::F32)
        };
        npz.save(&input);
        let what = format!(
            "complex={complex} varying={varying} h0={with_h0} dh_last={with_dh_last} (seed {seed})"
        );
        for backend in backends() {
            run_ok("scan-backward", &input, &output, backend);
            let a_shape: Vec<u64> = if varying { vec![2, 300, 5] } else { vec![5] };
            let shapes = [
                ("du", vec![2, 300, 5]),
                ("da", a_shape),
                ("dh0", vec![2, 5]),
            ];
            for ((name, shape), want) in shapes.into_iter().zip(&want) {
                let (got_shape, got) = load(&output, name);
                assert_eq!(got_shape, shape, "{backend} {name}, {what}");
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{name} is complex64 exactly when u is"
                );
                // A time-invariant da sums b·t = 600 products per channel, whose roundings
                // may add up (√600 of them, at random) while the products cancel.
                let bound = match (name, varying) {
                    ("da", false) => {
                        let factor = 2.0 * 600f64.sqrt();
                        Tolerance {
                            rel_l2: factor * Tolerance::F32.rel_l2,
                            element: factor * Tolerance::F32.element,
                        }
                    }
                    _ => Tolerance::F32,
                };
                let c = compare(&got, want, bound);
                assert!(c.passed(), "{backend} {name}, {what}: {c}");
            }
            std::fs::remove_file(&output).unwrap();
        }
        let out = tilefuse(&["check", "--input", input.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("scan-backward") && stdout.contains("du"),
            "{what}: {stdout}"
        );
    }
}

/// 16-bit states through the CLI: a float16 `u` (`[b, t, p, 2]` for complex values) runs
/// the scan and its backward with u, h, dh and du in f16 and writes h and du as float16 (a, h0,
/// h_last, da, dh0 stay float32 or complex64); `--dtype bf16` stores them in bf16 and writes
/// them as float32 (or complex64). Against the reference on the values as stored, within one
/// rounding of each stored value; `check --input` passes such a file.
#[test]
fn sixteen_bit_scans_round_trip_through_run() {
    let seed = common::seed();
    let dir = Scratch::new("scan-16");
    sixteen_bit_round_trip::<f32>(&dir, seed, Values::F32);
    sixteen_bit_round_trip::<Complex32>(&dir, seed, Values::C64);
}

fn sixteen_bit_round_trip<T: ScanElement>(dir: &Scratch, seed: u64, values: fn(Vec<T>) -> Values) {
    use tilefuse::scan::{Case, ResetPattern, Storage, random_cotangents, reference_backward};
    let (input, output) = (dir.join("case.npz"), dir.join("out.npz"));
    let complex = T::LANES == 2;
    let case = Case {
        complex,
        storage: Storage::F16,
        resets: ResetPattern::Random(0.05),
        ..Case::new(2, 300, 5)
    };
    let scan = case.scan::<T>().unwrap();
    let inputs = tilefuse::scan::Inputs::random(&case, &scan, seed);
    let mut cotangents = random_cotangents(&scan, true, seed ^ 3);
    let round = |v: &mut [T], storage: Storage| {
        for x in bytemuck::cast_slice_mut::<T, f32>(v) {
            *x = storage.round(*x);
        }
    };
    round(&mut cotangents.dh, Storage::F16);
    let (b, t, p) = (2u64, 300u64, 5u64);
    let shape_u: Vec<u64> = if complex {
        vec![b, t, p, 2]
    } else {
        vec![b, t, p]
    };
    let half = |v: &[T]| {
        let floats: &[f32] = bytemuck::cast_slice(v);
        Values::F16(floats.iter().map(|&x| f16::from_f32(x)).collect())
    };
    let h0 = inputs.h0.clone().unwrap();
    Npz(vec![])
        .with("a", &[p], values(inputs.a.clone()))
        .with("u", &shape_u, half(&inputs.u))
        .with("reset", &[b, t], Values::U8(inputs.reset.clone()))
        .with("h0", &[b, p], values(h0.clone()))
        .with("dh", &shape_u, half(&cotangents.dh))
        .with(
            "dh_last",
            &[b, p],
            values(cotangents.dh_last.clone().unwrap()),
        )
        .save(&input);
    for (dtype, storage, stored) in [
        (None, Storage::F16, "<f2"),
        (
            Some("bf16"),
            Storage::Bf16,
            if complex { "<c8" } else { "<f4" },
        ),
    ] {
        let what = format!("complex={complex} --dtype {dtype:?} (seed {seed})");
        // The values as the run stores them: f16's, rounded again to bf16.
        let (mut inputs, mut cotangents) = (inputs.clone(), cotangents.clone());
        round(&mut inputs.u, storage);
        round(&mut cotangents.dh, storage);
        let states = reference(&scan, &inputs.a, &inputs.u, &inputs.reset, Some(&h0)).unwrap();
        let grads = reference_backward(&scan, &inputs, &cotangents).unwrap();
        let bound = Case { storage, ..case }.tolerance();
        let wide = if complex { "<c8" } else { "<f4" };
        let expected = [
            ("scan", "h", stored, states.h),
            ("scan", "h_last", wide, states.h_last),
            ("scan-backward", "du", stored, grads.du),
            ("scan-backward", "dh0", wide, grads.dh0.unwrap()),
        ];
        for backend in backends() {
            for (op, name, dtype_out, want) in &expected {
                let mut args = vec!["run", op, "--input", input.to_str().unwrap()];
                args.extend(["--output", output.to_str().unwrap(), "--backend", backend]);
                args.extend(dtype.map(|d| ["--dtype", d]).into_iter().flatten());
                let out = tilefuse(&args);
                assert!(out.status.success(), "{op} {backend} {what}: {out:?}");
                let (got_dtype, (_, got)) = load_typed(&output, name);
                assert_eq!(&got_dtype, dtype_out, "{op} {backend} {name}, {what}");
                let c = compare(&got, want, bound);
                assert!(c.passed(), "{op} {backend} {name}, {what}: {c}");
                std::fs::remove_file(&output).unwrap();
            }
        }
        if dtype.is_some() {
            continue; // `check --input` runs a file as it holds its arrays
        }
        let out = tilefuse(&["check", "--input", input.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn bad_scan_backward_files_get_one_line_and_exit_code_2() {
    let (case, _) = scan_backward_case::<f32>(1, false, true, true, Values::F32);
    let case = || {
        Npz(case
            .0
            .iter()
            .map(|(n, s, v)| (*n, s.clone(), clone(v)))
            .collect())
    };
    assert_rejected("scan-backward", &case().without("dh"), "dh");
    assert_rejected(
        "scan-backward",
        &case().with("dh", &[2, 299, 5], Values::F32(vec![0.0; 2 * 299 * 5])),
        "dh",
    );
    assert_rejected(
        "scan-backward",
        &case().with("dh", &[2, 300, 5], Values::C64(vec![Complex32::ONE; 3000])),
        "dh",
    );
    // dh as u: float16 when u is.
    assert_rejected(
        "scan-backward",
        &case().with("u", &[2, 300, 5], Values::F16(vec![f16::ONE; 3000])),
        "dh",
    );
    assert_rejected(
        "scan-backward",
        &case().with("dh_last", &[2, 4], Values::F32(vec![0.0; 8])),
        "dh_last",
    );
    assert_rejected(
        "scan-backward",
        &case().with("dh_last", &[2, 5], Values::U8(vec![0; 10])),
        "dh_last",
    );
    assert_rejected(
        "scan-backward",
        &case().with("reset", &[2, 300], Values::F32(vec![0.0; 600])),
        "reset",
    );
    // u and dh of rank 0 (equal shapes), with a dh_last.
    assert_rejected(
        "scan-backward",
        &case()
            .with("u", &[], Values::F32(vec![1.0]))
            .with("dh", &[], Values::F32(vec![1.0])),
        "u",
    );
}

#[test]
fn check_input_compares_backends_and_expectations() {
    let seed = common::seed();
    let (npz, w, x) = spmm_case(seed);
    let reference: Vec<f32> = tilefuse::spmm::reference(&w, &x)
        .unwrap()
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let dir = Scratch::new("check");
    let path = dir.join("check.npz");
    npz.with("expect_y", &[9, 150], Values::F32(reference.clone()))
        .save(&path);
    let out = tilefuse(&["check", "--input", path.to_str().unwrap(), "--expect"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("expect_y") && stdout.contains("reference"),
        "{stdout}"
    );

    let mut wrong = reference;
    wrong[17] += 1.0;
    let (npz, _, _) = spmm_case(seed);
    npz.with("expect_y", &[9, 150], Values::F32(wrong))
        .save(&path);
    let out = tilefuse(&["check", "--input", path.to_str().unwrap(), "--expect"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `check --input` on data with NaN and infinities says so, and passes on every backend:
/// the outputs they reach are NaN exactly where the reference's are.
#[test]
fn check_input_says_the_data_is_not_finite_and_compares_it_exactly() {
    let seed = common::seed();
    let (mut npz, _, _) = attention_case(seed);
    for (name, _, values) in &mut npz.0 {
        if let (&mut "q" | &mut "v", Values::F16(values)) = (name, values) {
            values[20 * 4 * 64 + 5] = f16::NAN;
            values[100 * 2 * 64 + 7] = f16::INFINITY;
        }
    }
    let dir = Scratch::new("check-non-finite");
    let path = dir.join("case.npz");
    npz.save(&path);
    let out = tilefuse(&["check", "--input", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "seed {seed}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("NaN or infinite values (`q` 2, `v` 2)"),
        "{stdout}"
    );
}

/// The one line of tilefuse's own on stderr of a run that must exit with code 2 (a driver
/// may add its own noise: Mesa without XDG_RUNTIME_DIR).
fn the_error_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tilefuse: "))
        .collect();
    assert_eq!(ours.len(), 1, "{stderr}");
    ours[0].to_string()
}

/// Runs `tilefuse run` on a bad file: exit code 2, one line naming `array`, no output file.
fn assert_rejected(op: &str, npz: &Npz, array: &str) {
    let dir = Scratch::new(&format!("bad-{array}"));
    let (input, output) = (
        dir.join(format!("bad-{array}.npz")),
        dir.join(format!("bad-{array}-out.npz")),
    );
    npz.save(&input);
    let out = tilefuse(&[
        "run",
        op,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    let line = the_error_line(&out);
    assert!(
        line.contains(&format!("`{array}`")),
        "expected the error to name `{array}`: {line}"
    );
    assert!(!output.exists(), "{array}: an output file was written");
}

/// `--output` naming the input (by another path) is refused, and the input is left as it was.
#[test]
fn the_output_cannot_be_the_input() {
    let dir = Scratch::new("output-is-input");
    let input = dir.join("case.npz");
    spmm_case(1).0.save(&input);
    let before = std::fs::read(&input).unwrap();
    let out = tilefuse(&[
        "run",
        "spmm",
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.join(".").join("case.npz").to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the input file"), "{stderr}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

/// `--read-limit` bounds the bytes a run reads of the arrays it uses; an array it ignores
/// is never read, whatever its size. w and x of the spmm case hold 31800 bytes.
#[test]
fn the_read_limit_bounds_what_a_run_reads() {
    let dir = Scratch::new("read-limit");
    let (input, output) = (dir.join("case.npz"), dir.join("out.npz"));
    let big = Values::F32(vec![0.0; 1 << 20]);
    spmm_case(1).0.with("big", &[1 << 20], big).save(&input);
    let run = |limit: &str| {
        let paths = [input.to_str().unwrap(), output.to_str().unwrap()];
        let args = ["run", "spmm", "--input", paths[0], "--output", paths[1]];
        tilefuse(&[&args[..], &["--backend", "cpu", "--read-limit", limit]].concat())
    };
    let out = run("31800");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&output).unwrap();
    let line = the_error_line(&run("31799"));
    assert!(
        line.contains("`x`") && line.contains("--read-limit"),
        "{line}"
    );
    assert!(!output.exists());
}

#[test]
fn bad_files_get_one_line_and_exit_code_2() {
    let (spmm, _, _) = spmm_case(1);
    let spmm = || {
        Npz(spmm
            .0
            .iter()
            .map(|(n, s, v)| (*n, s.clone(), clone(v)))
            .collect())
    };
    assert_rejected("spmm", &spmm().without("x"), "x");
    assert_rejected(
        "spmm",
        &spmm().with("w", &[150, 100], Values::F32(vec![0.0; 15000])),
        "w",
    );
    assert_rejected(
        "spmm",
        &spmm().with("w", &[15000], Values::F16(vec![f16::ZERO; 15000])),
        "w",
    );
    assert_rejected(
        "spmm",
        &spmm().with("x", &[9, 99], Values::F16(vec![f16::ZERO; 891])),
        "x",
    );

    let (scan, _, _) = scan_case(1, true, false);
    let scan = || {
        Npz(scan
            .0
            .iter()
            .map(|(n, s, v)| (*n, s.clone(), clone(v)))
            .collect())
    };
    assert_rejected("scan", &scan().without("reset"), "reset");
    assert_rejected(
        "scan",
        &scan().with("reset", &[2, 299], Values::U8(vec![0; 598])),
        "reset",
    );
    assert_rejected(
        "scan",
        &scan().with("reset", &[2, 300], Values::F32(vec![0.0; 600])),
        "reset",
    );
    assert_rejected(
        "scan",
        &scan().with("a", &[4], Values::C64(vec![Complex32::ONE; 4])),
        "a",
    );
    assert_rejected(
        "scan",
        &scan().with("a", &[5], Values::F32(vec![0.5; 5])),
        "a",
    );
    assert_rejected(
        "scan",
        &scan().with("h0", &[5, 2], Values::C64(vec![Complex32::ONE; 10])),
        "h0",
    );
    assert_rejected(
        "scan",
        &scan().with("u", &[2, 300], Values::C64(vec![Complex32::ONE; 600])),
        "u",
    );
    // Complex 16-bit states are float16 pairs in a last dimension of 2, nothing else.
    assert_rejected(
        "scan",
        &scan().with("u", &[2, 300, 5, 3], Values::F16(vec![f16::ONE; 9000])),
        "u",
    );

    // Not an npz at all, and an op tilefuse does not have yet: one line, exit 2.
    let dir = Scratch::new("junk");
    let junk = dir.join("junk.npz");
    std::fs::write(&junk, b"not a zip").unwrap();
    let out = tilefuse(&[
        "run",
        "scan",
        "--input",
        junk.to_str().unwrap(),
        "--output",
        dir.join("o.npz").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = tilefuse(&[
        "run",
        "attention",
        "--input",
        junk.to_str().unwrap(),
        "--output",
        dir.join("o.npz").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

fn clone(values: &Values) -> Values {
    match values {
        Values::F16(v) => Values::F16(v.clone()),
        Values::F32(v) => Values::F32(v.clone()),
        Values::C64(v) => Values::C64(v.clone()),
        Values::U8(v) => Values::U8(v.clone()),
        Values::I32(v) => Values::I32(v.clone()),
    }
}

/// An attention case: b=1, lq=150, lk=200, hq=4, hkv=2, d=64, a per-head layout of 64-blocks
/// with causal + window 90 in partial blocks; head 3's first query block sees nothing.
fn attention_case(seed: u64) -> (Npz, Vec<f64>, Vec<f64>) {
    use tilefuse::attention::{AttentionShape, BlockMask, ElementMask, MaskShape};
    let mut rng = Rng::new(seed);
    let mut random = |len: usize| -> Vec<f16> {
        (0..len)
            .map(|_| f16::from_f64(rng.uniform(-1.0, 1.0)))
            .collect()
    };
    let (q, k, v) = (
        random(150 * 4 * 64),
        random(200 * 2 * 64),
        random(200 * 2 * 64),
    );
    // Index (head * 3 + q_block) * 4 + kv_block; head 3's first query block skips all.
    let layout: Vec<u8> = (0..4 * 3 * 4)
        .map(|i| {
            if (36..40).contains(&i) {
                0
            } else {
                (i % 3) as u8
            }
        })
        .collect();
    let shape = AttentionShape::new(1, 150, 200, 4, 2, 64).unwrap();
    let mask_shape = MaskShape {
        heads: 4,
        block_m: 64,
        block_n: 64,
        ..MaskShape::new(150, 200)
    };
    let mask = BlockMask::from_layout(mask_shape, ElementMask::CausalWindow(90), &layout).unwrap();
    let out = tilefuse::attention::reference(&shape, &q, &k, &v, &mask, 0.3f32 as f64).unwrap();
    let npz = Npz(vec![])
        .with("q", &[1, 150, 4, 64], Values::F16(q))
        .with("k", &[1, 200, 2, 64], Values::F16(k))
        .with("v", &[1, 200, 2, 64], Values::F16(v))
        .with("block_m", &[], Values::I32(vec![64]))
        .with("block_n", &[], Values::I32(vec![64]))
        .with("layout", &[4, 3, 4], Values::U8(layout))
        .with("mask_mod", &[], Values::I32(vec![3]))
        .with("window", &[], Values::I32(vec![90]))
        .with("scale", &[], Values::F32(vec![0.3]));
    (npz, out.o, out.lse)
}

/// `tilefuse run attention-backward`: dq [b, lq, hq, d], dk and dv [b, lk, hkv, d] float32
/// against the reference backward (GQA, a causal window, a query block that sees nothing);
/// on every backend; `check --input` tells such a file from a forward case by its `do`; a `do`
/// of the wrong shape gets one line.
#[test]
fn attention_backward_round_trips_through_run() {
    use tilefuse::attention::{AttentionShape, BlockMask, ElementMask, MaskShape};
    let seed = common::seed();
    let (npz, _, _) = attention_case(seed);
    let mut rng = Rng::new(seed ^ 9);
    let d_o: Vec<f16> = (0..150 * 4 * 64)
        .map(|_| f16::from_f64(rng.uniform(-1.0, 1.0)))
        .collect();
    let npz = npz.with("do", &[1, 150, 4, 64], Values::F16(d_o.clone()));
    let dir = Scratch::new("attention-backward");
    let (input, output) = (dir.join("case.npz"), dir.join("out.npz"));
    npz.save(&input);
    // The same case, through the library.
    let half = |name: &str| match &npz.0.iter().find(|(n, _, _)| *n == name).unwrap().2 {
        Values::F16(v) => v.clone(),
        _ => unreachable!("q, k and v are float16"),
    };
    let (q, k, v) = (half("q"), half("k"), half("v"));
    let layout = match &npz.0.iter().find(|(n, _, _)| *n == "layout").unwrap().2 {
        Values::U8(v) => v.clone(),
        _ => unreachable!("the layout is uint8"),
    };
    let mask_shape = MaskShape {
        heads: 4,
        block_m: 64,
        block_n: 64,
        ..MaskShape::new(150, 200)
    };
    let mask = BlockMask::from_layout(mask_shape, ElementMask::CausalWindow(90), &layout).unwrap();
    let shape = AttentionShape::new(1, 150, 200, 4, 2, 64).unwrap();
    let want =
        tilefuse::attention::reference_backward(&shape, [&q, &k, &v], &d_o, &mask, 0.3f32 as f64)
            .unwrap();
    // On a GPU the forward's o (rounded to f16) and lse come from the device too: the bound
    // of the backward's checks, 4 and 12 units of f16's roundoff.
    let u = 2f64.powi(-11);
    let device_bound = Tolerance {
        rel_l2: 4.0 * u,
        element: 12.0 * u,
    };
    for backend in backends() {
        run_ok("attention-backward", &input, &output, backend);
        for (name, dims, want) in [
            ("dq", [1, 150, 4, 64], &want.dq),
            ("dk", [1, 200, 2, 64], &want.dk),
            ("dv", [1, 200, 2, 64], &want.dv),
        ] {
            let (got_dtype, (got_dims, got)) = load_typed(&output, name);
            assert_eq!(
                (got_dtype.as_str(), got_dims),
                ("<f4", dims.to_vec()),
                "{name}"
            );
            let bound = if backend == "cpu" {
                Tolerance::F32
            } else {
                device_bound
            };
            let c = compare(&got, want, bound);
            assert!(c.passed(), "{backend} {name} (seed {seed}): {c}");
        }
    }
    let out = tilefuse(&["check", "--input", input.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("attention-backward") && stdout.contains("dq"),
        "{stdout}"
    );
    let wrong = npz.with(
        "do",
        &[1, 150, 4, 32],
        Values::F16(vec![f16::ZERO; 150 * 4 * 32]),
    );
    assert_rejected("attention-backward", &wrong, "do");
}

#[test]
fn attention_round_trips_through_run_and_checks_its_files() {
    let seed = common::seed();
    let (npz, o, lse) = attention_case(seed);
    let dir = Scratch::new("attention");
    let (input, output) = (dir.join("attention.npz"), dir.join("attention-out.npz"));
    npz.save(&input);
    for backend in backends() {
        run_ok("attention", &input, &output, backend);
        let (shape, got_o) = load(&output, "o");
        assert_eq!(shape, [1, 150, 4, 64]);
        let (shape, got_lse) = load(&output, "lse");
        assert_eq!(shape, [1, 4, 150]);
        for (got, want) in [(got_o, &o), (got_lse, &lse)] {
            let c = compare(&got, want, Tolerance::F32);
            assert!(c.passed(), "{backend} (seed {seed}): {c}");
        }
        std::fs::remove_file(&output).unwrap();
    }
    assert!(
        lse[3 * 150] == f64::NEG_INFINITY,
        "head 3 sees nothing from its first block"
    );
    let out = tilefuse(&["check", "--input", input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // --dtype bf16 converts the inputs: WGSL (f32 out) matches the reference on the same
    // bf16 values within the f32 bound.
    if backends().contains(&"wgpu") {
        let [cpu, wgpu] = ["cpu", "wgpu"].map(|backend| {
            let path = dir.join(format!("bf16-{backend}.npz"));
            let out = tilefuse(&[
                "run",
                "attention",
                "--input",
                input.to_str().unwrap(),
                "--output",
                path.to_str().unwrap(),
                "--backend",
                backend,
                "--dtype",
                "bf16",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            load(&path, "o").1
        });
        assert!(compare(&wgpu, &cpu, Tolerance::F32).passed());
        assert!(
            !compare(&cpu, &o, Tolerance::F32).passed(),
            "bf16 differs from f16"
        );
    }
}

#[test]
fn bad_attention_files_get_one_line_and_exit_code_2() {
    let (base, _, _) = attention_case(1);
    let case = || {
        Npz(base
            .0
            .iter()
            .map(|(n, s, v)| (*n, s.clone(), clone(v)))
            .collect())
    };
    assert_rejected("attention", &case().without("v"), "v");
    // 3 key heads do not divide 4 query heads.
    let three_heads = || Values::F16(vec![f16::ZERO; 200 * 3 * 64]);
    let three = case().with("k", &[1, 200, 3, 64], three_heads()).with(
        "v",
        &[1, 200, 3, 64],
        three_heads(),
    );
    assert_rejected("attention", &three, "k");
    assert_rejected(
        "attention",
        &case().with(
            "v",
            &[1, 199, 2, 64],
            Values::F16(vec![f16::ZERO; 199 * 2 * 64]),
        ),
        "v",
    );
    assert_rejected(
        "attention",
        &case().with("block_m", &[], Values::I32(vec![32])),
        "block_m",
    );
    assert_rejected(
        "attention",
        &case().with("mask_mod", &[], Values::I32(vec![7])),
        "mask_mod",
    );
    assert_rejected(
        "attention",
        &case().with("window", &[], Values::I32(vec![0])),
        "window",
    );
    assert_rejected(
        "attention",
        &case().with("layout", &[4, 3, 3], Values::U8(vec![1; 36])),
        "layout",
    );
    assert_rejected(
        "attention",
        &case().with("layout", &[4, 3, 4], Values::U8(vec![5; 48])),
        "layout",
    );
    let nan_layout = Values::F32(vec![f32::NAN; 48]);
    assert_rejected(
        "attention",
        &case().with("layout", &[4, 3, 4], nan_layout),
        "layout",
    );
    assert_rejected(
        "attention",
        &case().with("scale", &[], Values::F32(vec![f32::NAN])),
        "scale",
    );
}

#[test]
fn summary_draws_the_roofline_and_writes_the_markdown_table() {
    let dir = Scratch::new("plot");
    let with_flops = |op: &str,
                      case: &str,
                      implementation: &str,
                      us: f64,
                      bytes: u64,
                      flops: u64| {
        format!(
            r#"{{"op": "{op}", "case": "{case}", "backend": "cuda", "implementation": "{implementation}", "median_us": {us}, "bytes": {bytes}, "flops": {flops}}}"#
        )
    };
    let record = |op: &str, case: &str, implementation: &str, us: f64, bytes: u64| {
        with_flops(op, case, implementation, us, bytes, 0)
    };
    let results = [
        record("copy", "256 MiB", "tilefuse", 180.0, 536_870_912),
        with_flops(
            "scan",
            "c64 b=16",
            "tilefuse",
            200.0,
            536_870_912,
            268_435_456,
        ),
        with_flops(
            "scan",
            "c64 b=16",
            "jax-associative-scan",
            1100.0,
            536_870_912,
            268_435_456,
        ),
        // No FLOPs: no place on the roofline.
        record("spmm", "no flops", "tilefuse", 10.0, 1000),
        with_flops("peak", "mma", "tilefuse", 1000.0, 0, 600_000_000_000),
        with_flops(
            "attention",
            "causal",
            "tilefuse",
            1000.0,
            1,
            350_000_000_000,
        ),
    ];
    let json = dir.join("bench.json");
    std::fs::write(
        &json,
        format!(
            r#"{{"schema": "tilefuse-bench/1", "results": [{}]}}"#,
            results.join(", ")
        ),
    )
    .unwrap();
    let svg = dir.join("bench.svg");
    let out = tilefuse(&[
        "summary",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(
        picture.starts_with("<svg") && picture.contains("device copy (cuda)"),
        "{picture:.300}"
    );
    assert!(picture.contains("mma.sync f16 peak (cuda): 600 TFLOP/s"));
    assert!(picture.contains("FLOP per byte"), "{picture:.300}");
    for label in [
        "scan c64 b=16",
        "attention causal",
        "tilefuse (cuda)",
        "jax-associative-scan (cuda)",
    ] {
        assert!(picture.contains(label), "no {label:?} in the picture");
    }
    assert!(
        !picture.contains("no flops"),
        "a record without FLOPs was drawn"
    );
    assert_eq!(
        picture.matches("<circle").count(),
        3 + 2,
        "two scan points, an attention point, and two implementations' legend marks"
    );
    let table = std::fs::read_to_string(dir.join("bench.md")).unwrap();
    assert!(
        table.starts_with("| op | case |") && table.contains("jax-associative-scan"),
        "{table}"
    );
}

/// `tilefuse profile` offers every op with a profile entry, the attention forward and
/// backward sharing their flags; where CUDA cannot run, profiling is one line and exit code 2.
#[cfg(feature = "cuda")]
#[test]
fn profile_offers_the_attention_backward() {
    let out = tilefuse(&["profile", "--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("attention-backward") && stdout.contains("--head-dim"),
        "{stdout}"
    );
    if common::available(Backend::Cuda).is_none() {
        let out = tilefuse(&[
            "profile",
            "attention-backward",
            "--len",
            "256",
            "--iters",
            "1",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
