//! `tilefuse`: check every op on every backend against the f64 reference, benchmark them, and
//! say what this build and machine have.

mod input;
mod plot;
#[cfg(feature = "cuda")]
mod profile;
mod progress;
mod report;
mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tilefuse::backend::kernels;
use tilefuse::harness::file::{self, Dtype, FileOptions, SparseFormat};
use tilefuse::harness::npz;
use tilefuse::harness::{self, Backend, Backends, BenchRecord, BenchSettings, OpEntry};

use table::Table;

#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// With no command: `info`, then `check`.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Backends found, device and adapter names, features, and the CUDA kernels in this build.
    Info {
        /// Also print registers, shared memory and spills of every kernel (ptxas report).
        #[arg(long)]
        ptxas: bool,
    },
    /// Run every registered op on every available backend against the CPU reference, or
    /// (with --input) the case in a NumPy .npz file.
    Check {
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        file: CheckFile,
    },
    /// Run one op on the arrays of a NumPy .npz file and write its outputs as .npz.
    Run {
        /// The op: one whose registry entry reads case files (spmm, scan, attention).
        #[arg(value_parser = input::op_with_files)]
        op: &'static OpEntry,
        /// The input arrays (np.savez); other arrays in it are ignored.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Where the outputs go (float32, complex64 for complex scans).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// The backend (default: the best available: cuda, then wgpu, then cpu = the
        /// reference).
        #[arg(long, value_parser = parse_backend)]
        backend: Option<Backend>,
        /// The element type of the computation (spmm, attention: f16 or bf16, the float16
        /// arrays converted; scan: f32). Attention's o is written in it on CUDA, in f32 on
        /// WGSL.
        #[arg(long, value_enum)]
        dtype: Option<Dtype>,
        /// spmm: the sparse format the dense `w` is encoded to (default: the backend's faster
        /// kernel, printed: tiled-csl on CUDA, bitmap on WGSL).
        #[arg(long, value_enum)]
        format: Option<SparseFormat>,
        #[command(flatten)]
        read_limit: ReadLimit,
    },
    /// Time every registered op on every available backend.
    Bench {
        #[command(flatten)]
        selection: Selection,
        /// Also write the results as JSON (the schema the GPU bundle's peer script uses).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Few, short samples: checks that the benchmarks run, not how fast.
        #[arg(long)]
        quick: bool,
        /// Also draw the roofline picture (SVG) and write the table beside it as Markdown
        /// (FILE with the extension .md).
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
    },
    /// Run one configuration N times on CUDA, each launch in an NVTX range, for Nsight:
    /// `nsys profile tilefuse profile spmm`, `ncu --set full tilefuse profile spmm --iters 3`.
    #[cfg(feature = "cuda")]
    Profile(profile::ProfileArgs),
    /// Print benchmark JSON files (tilefuse's and peers') side by side, with ratios.
    Summary {
        /// Files written by `tilefuse bench --json` or `scripts/peers.py`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also draw the roofline picture of all of them (SVG), with the Markdown table
        /// beside it (FILE with the extension .md).
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
    },
}

#[derive(clap::Args, Default)]
struct CheckFile {
    /// A case file (.npz): run it on every available backend against the reference.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// With --input: also compare with the file's `expect_<output>` arrays.
    #[arg(long, requires = "input")]
    expect: bool,
    #[command(flatten)]
    read_limit: ReadLimit,
}

#[derive(clap::Args, Default)]
struct ReadLimit {
    /// The most bytes of array elements read from the input file, all arrays together
    /// (e.g. 512M, 16G; default 4G). Arrays the op does not use are never read.
    #[arg(long = "read-limit", value_name = "BYTES", value_parser = parse_bytes, requires = "input")]
    bytes: Option<u64>,
}

impl ReadLimit {
    fn bytes(&self) -> u64 {
        self.bytes.unwrap_or(npz::DEFAULT_READ_LIMIT)
    }
}

/// A byte count: a whole number, optionally with K, M, G or T (powers of 1024).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.char_indices().last() {
        Some((at, unit @ ('K' | 'M' | 'G' | 'T'))) => {
            (&text[..at], 10 * (1 + "KMGT".find(unit).unwrap_or(0)))
        }
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("expected a byte count such as 1000000, 512M or 16G; got {text:?}"))
}

#[derive(clap::Args, Default)]
struct Selection {
    /// Only these ops (repeatable); `tilefuse info` lists them.
    #[arg(long = "op", value_name = "OP")]
    ops: Vec<String>,
    /// Only these backends (repeatable).
    #[arg(long = "backend", value_name = "BACKEND", value_parser = parse_backend)]
    backends: Vec<Backend>,
    /// Only cases whose name holds TEXT, a benchmark's with its implementation in
    /// parentheses (repeatable: every TEXT), e.g. `--case 'n=16 s=80%' --case registers`.
    #[arg(long = "case", value_name = "TEXT")]
    cases: Vec<String>,
}

impl Selection {
    /// The cases whose `label` holds every `--case` text; an error if that leaves none.
    fn keep<T>(&self, cases: Vec<T>, label: impl Fn(&T) -> String) -> Result<Vec<T>, String> {
        let total = cases.len();
        let kept: Vec<T> = cases
            .into_iter()
            .filter(|case| {
                let label = label(case);
                self.cases.iter().all(|text| label.contains(text.as_str()))
            })
            .collect();
        if kept.is_empty() && total > 0 {
            return Err(format!(
                "no case of the selected ops holds all of {:?} ({total} cases)",
                self.cases
            ));
        }
        Ok(kept)
    }
}

fn parse_backend(name: &str) -> Result<Backend, String> {
    Backend::ALL
        .into_iter()
        .find(|b| b.name() == name)
        .ok_or_else(|| format!("expected one of cpu, cuda, wgpu; got {name:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        None => {
            let backends = Backends::detect();
            print!("{}", info(&backends, false));
            println!();
            check(&backends, &Selection::default())
        }
        Some(Command::Info { ptxas }) => {
            print!("{}", info(&Backends::detect(), ptxas));
            Ok(true)
        }
        Some(Command::Check {
            selection,
            file:
                CheckFile {
                    input: Some(input),
                    expect,
                    read_limit,
                },
        }) => check_input(&selection, &input, expect, read_limit.bytes()),
        Some(Command::Check { selection, .. }) => check(&Backends::detect(), &selection),
        Some(Command::Run {
            op,
            input,
            output,
            backend,
            dtype,
            format,
            read_limit,
        }) => {
            let options = FileOptions { dtype, format };
            let ran = input::run_file(op, &input, &output, backend, options, read_limit.bytes());
            ran.map(|(backend, variant)| {
                let variant = variant.map_or(String::new(), |v| format!(" ({v})"));
                println!(
                    "{} on {backend}{variant}: wrote {}",
                    op.name,
                    output.display()
                );
                true
            })
        }
        Some(Command::Bench {
            selection,
            json,
            quick,
            plot,
        }) => bench(&Backends::detect(), &selection, json, quick, plot),
        Some(Command::Summary { files, plot }) => summary(&files, plot),
        #[cfg(feature = "cuda")]
        Some(Command::Profile(args)) => profile::profile(&args).map(|line| {
            println!("{line}");
            true
        }),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("tilefuse: {message}");
            ExitCode::from(2)
        }
    }
}

fn info(backends: &Backends, ptxas: bool) -> String {
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("wgpu", cfg!(feature = "wgpu")),
        ("cli", true),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let mut out = format!(
        "tilefuse {} (features: {})\n\n",
        env!("CARGO_PKG_VERSION"),
        features.join(", ")
    );
    let mut table = Table::new(["backend", "status", "device"]);
    for backend in Backend::ALL {
        let (status, detail) = match backends.status(backend) {
            Ok(device) => ("available", device),
            Err(why) => ("unavailable", why),
        };
        table.row([backend.to_string(), status.into(), detail]);
    }
    out += &table.render();
    out += "\n";
    out += &kernel_info(ptxas);
    out += "\n";
    let mut ops = Table::new(["op", "kernel modules", "about"]);
    for op in harness::ops() {
        let modules = if op.kernel_modules.is_empty() {
            "-".into()
        } else {
            op.kernel_modules.join(" ")
        };
        ops.row([op.name.into(), modules, op.about.into()]);
    }
    out + &ops.render()
}

fn kernel_info(ptxas: bool) -> String {
    let Some(nvcc) = kernels::nvcc_version() else {
        return format!(
            "CUDA kernels: none ({})\n",
            kernels::unavailable_reason().unwrap_or("not built")
        );
    };
    let mut out = format!("CUDA kernels built by {nvcc} for {}\n", kernels::targets());
    let mut modules = Table::new(["module", "fatbin", "targets", "kernels"]);
    let mut resources = Table::new([
        "kernel",
        "arch",
        "registers",
        "smem bytes",
        "stack",
        "spill st",
        "spill ld",
    ]);
    for module in kernels::modules() {
        let entries = module.resources();
        let mut names: Vec<&str> = entries.iter().map(|e| e.kernel.as_str()).collect();
        names.dedup();
        modules.row([
            module.name.into(),
            format!("{} KiB", module.image.len().div_ceil(1024)),
            module.targets.into(),
            names.join(" "),
        ]);
        for e in entries {
            let flag = if e.uses_local_memory() { " !" } else { "" };
            resources.row([
                e.kernel.clone() + flag,
                e.arch.clone(),
                e.registers.to_string(),
                e.shared_bytes.to_string(),
                e.stack_frame_bytes.to_string(),
                e.spill_store_bytes.to_string(),
                e.spill_load_bytes.to_string(),
            ]);
        }
    }
    out += &modules.render();
    if ptxas {
        out += "\nptxas (static shared memory only; '!' marks local-memory use):\n";
        out += &resources.render();
    }
    out
}

/// The ops a selection names, or an error listing the registered ones.
fn selected_ops(selection: &Selection) -> Result<Vec<&'static OpEntry>, String> {
    if selection.ops.is_empty() {
        return Ok(harness::ops().iter().collect());
    }
    selection
        .ops
        .iter()
        .map(|name| {
            harness::op(name).ok_or_else(|| {
                let known: Vec<&str> = harness::ops().iter().map(|o| o.name).collect();
                format!("unknown op {name:?}; registered: {}", known.join(", "))
            })
        })
        .collect()
}

/// The selected backends that can run here; prints one line for each that cannot.
fn runnable_backends(backends: &Backends, selection: &Selection) -> Vec<Backend> {
    let wanted = if selection.backends.is_empty() {
        Backend::ALL.to_vec()
    } else {
        selection.backends.clone()
    };
    wanted
        .into_iter()
        .filter(|&backend| match backends.status(backend) {
            Ok(_) => true,
            Err(why) => {
                println!("skipping {backend}: {why}");
                false
            }
        })
        .collect()
}

fn check(backends: &Backends, selection: &Selection) -> Result<bool, String> {
    let ops = selected_ops(selection)?;
    let runnable = runnable_backends(backends, selection);
    let mut table = Table::new([
        "op", "backend", "case", "rel_l2", "max_abs", "bound", "result",
    ]);
    let (mut passed, mut failed) = (0, 0);
    let cases = ops.iter().flat_map(|op| (op.check_cases)()).collect();
    let cases = selection.keep(cases, |case| case.name.clone())?;
    let mut progress = progress::Progress::new("checking", cases.len() * runnable.len());
    for case in &cases {
        for &backend in &runnable {
            progress.start(&format!("{} {} on {backend}", case.op, case.name));
            let outcome = case.run(backends, backend);
            progress.finish_step();
            let (errors, result) = match outcome {
                Ok(None) => continue,
                Ok(Some(c)) if c.passed() => {
                    passed += 1;
                    (Some(c), "pass".to_string())
                }
                Ok(Some(c)) => {
                    failed += 1;
                    let why = if c.non_finite > 0 {
                        format!(" ({} non-finite)", c.non_finite)
                    } else {
                        String::new()
                    };
                    (Some(c), format!("FAIL{why}"))
                }
                Err(e) => {
                    failed += 1;
                    (None, format!("ERROR: {e}"))
                }
            };
            table.row([
                case.op.into(),
                backend.to_string(),
                case.name.clone(),
                errors
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.2e}", c.rel_l2)),
                errors
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.2e}", c.max_abs)),
                errors
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.0e}", c.tolerance.rel_l2)),
                result,
            ]);
        }
    }
    print!("{}", table.render());
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// Says which inputs the case read hold NaN or infinities, and how they are compared.
fn say_if_not_finite(arrays: &npz::Npz) {
    let counts: Vec<String> = arrays
        .non_finite()
        .iter()
        .map(|(name, count)| format!("`{name}` {count}"))
        .collect();
    if !counts.is_empty() {
        println!(
            "the inputs hold NaN or infinite values ({}): outputs must be NaN or infinite \
             exactly where the reference's are, the rest is compared as usual",
            counts.join(", ")
        );
    }
}

/// `check --input`: the file is read and checked before any backend is opened.
fn check_input(
    selection: &Selection,
    path: &std::path::Path,
    expect: bool,
    read_limit: u64,
) -> Result<bool, String> {
    if !selection.cases.is_empty() {
        return Err("--case picks registered cases; --input checks the file's one case".into());
    }
    let arrays = npz::Npz::open(path, read_limit)?;
    let op = match selection.ops.as_slice() {
        [] => file::infer(harness::ops(), &arrays)?,
        [name] => input::op_with_files(name).map_err(|e| format!("--op {e}"))?,
        _ => return Err("--input takes at most one --op".into()),
    };
    let case = input::load(op, &arrays, FileOptions::default())?;
    say_if_not_finite(&arrays);
    let backends = &Backends::detect();
    let runnable = runnable_backends(backends, selection);
    let rows = input::check_case(backends, &*case, &arrays, &runnable, expect)?;
    let mut table = Table::new([
        "backend", "output", "against", "rel_l2", "max_abs", "bound", "result",
    ]);
    let mut failed = 0;
    for row in &rows {
        let (rel, abs, bound, result) = match &row.result {
            Ok(c) => {
                failed += usize::from(!c.passed());
                (
                    format!("{:.2e}", c.rel_l2),
                    format!("{:.2e}", c.max_abs),
                    format!("{:.0e}", c.tolerance.rel_l2),
                    match (c.passed(), c.non_finite) {
                        (true, _) => "pass".to_string(),
                        (false, 0) => "FAIL".to_string(),
                        (false, n) => format!("FAIL ({n} non-finite mismatches)"),
                    },
                )
            }
            Err(e) => {
                failed += 1;
                ("-".into(), "-".into(), "-".into(), format!("ERROR: {e}"))
            }
        };
        table.row([
            row.backend.to_string(),
            row.output.clone(),
            row.against.clone(),
            rel,
            abs,
            bound,
            result,
        ]);
    }
    print!("{}", table.render());
    println!(
        "{} from {}: {} passed, {failed} failed",
        op.name,
        path.display(),
        rows.len() - failed
    );
    Ok(failed == 0)
}

fn bench(
    backends: &Backends,
    selection: &Selection,
    json: Option<PathBuf>,
    quick: bool,
    plot: Option<PathBuf>,
) -> Result<bool, String> {
    let ops = selected_ops(selection)?;
    let runnable = runnable_backends(backends, selection);
    let settings = if quick {
        BenchSettings::quick()
    } else {
        BenchSettings::default()
    };
    let mut records = Vec::new();
    let mut all_ran = true;
    let cases = ops.iter().flat_map(|op| (op.bench_cases)()).collect();
    let mut cases = selection.keep(cases, |case| {
        format!("{} ({})", case.name, case.implementation)
    })?;
    harness::add_copy_baseline(&mut cases);
    let mut progress = progress::Progress::new("timing", cases.len() * runnable.len());
    for case in &cases {
        for &backend in &runnable {
            progress.start(&format!(
                "{} {} ({}) on {backend}",
                case.op, case.name, case.implementation
            ));
            let outcome = case.run(backends, backend, &settings);
            progress.finish_step();
            match outcome {
                Ok(None) => {}
                Ok(Some(timing)) => records.push(BenchRecord {
                    op: case.op.into(),
                    case: case.name.clone(),
                    backend: backend.to_string(),
                    implementation: case.implementation.into(),
                    device: backends.status(backend).unwrap_or_default(),
                    median_us: timing.median_us(),
                    min_us: timing.min_us(),
                    samples: timing.samples_us.len(),
                    bytes: case.bytes,
                    flops: case.flops,
                }),
                Err(e) => {
                    all_ran = false;
                    println!(
                        "{} {} ({}) on {backend}: ERROR: {e}",
                        case.op, case.name, case.implementation
                    );
                }
            }
        }
    }
    print!("{}", report::summary(&records));
    if let Some(path) = json {
        let devices: BTreeMap<String, String> = runnable
            .iter()
            .filter_map(|&b| Some((b.to_string(), backends.status(b).ok()?)))
            .collect();
        let text = serde_json::to_string_pretty(&report::to_json(&records, &devices))
            .map_err(|e| e.to_string())?;
        std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = plot {
        draw(&records, &path)?;
    }
    Ok(all_ran)
}

/// The roofline SVG at `path` and the summary table as Markdown beside it.
fn draw(records: &[BenchRecord], path: &std::path::Path) -> Result<(), String> {
    plot::roofline(records, path)?;
    let table = path.with_extension("md");
    std::fs::write(&table, report::summary_table(records).markdown())
        .map_err(|e| format!("{}: {e}", table.display()))?;
    println!("wrote {} and {}", path.display(), table.display());
    Ok(())
}

fn summary(files: &[PathBuf], plot: Option<PathBuf>) -> Result<bool, String> {
    let mut records = Vec::new();
    for file in files {
        records.extend(report::read(file)?);
    }
    print!("{}", report::summary(&records));
    if let Some(path) = plot {
        draw(&records, &path)?;
    }
    Ok(true)
}
