//! `tilefuse`: check every op on every backend against the f64 reference, benchmark them, and
//! say what this build and machine have.

mod report;
mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tilefuse::backend::kernels;
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
    /// Run every registered op on every available backend against the CPU reference.
    Check(Selection),
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
    },
    /// Print benchmark JSON files (tilefuse's and peers') side by side, with ratios.
    Summary {
        /// Files written by `tilefuse bench --json` or `scripts/peers.py`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Default)]
struct Selection {
    /// Only these ops (repeatable); `tilefuse info` lists them.
    #[arg(long = "op", value_name = "OP")]
    ops: Vec<String>,
    /// Only these backends (repeatable).
    #[arg(long = "backend", value_name = "BACKEND", value_parser = parse_backend)]
    backends: Vec<Backend>,
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
        Some(Command::Check(selection)) => check(&Backends::detect(), &selection),
        Some(Command::Bench {
            selection,
            json,
            quick,
        }) => bench(&Backends::detect(), &selection, json, quick),
        Some(Command::Summary { files }) => summary(&files),
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
    for op in ops {
        for case in (op.check_cases)() {
            for &backend in &runnable {
                let (errors, result) = match case.run(backends, backend) {
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
    }
    print!("{}", table.render());
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn bench(
    backends: &Backends,
    selection: &Selection,
    json: Option<PathBuf>,
    quick: bool,
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
    for op in ops {
        for case in (op.bench_cases)() {
            for &backend in &runnable {
                match case.run(backends, backend, &settings) {
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
                        println!("{} {} on {backend}: ERROR: {e}", case.op, case.name);
                    }
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
    Ok(all_ran)
}

fn summary(files: &[PathBuf]) -> Result<bool, String> {
    let mut records = Vec::new();
    for file in files {
        records.extend(report::read(file)?);
    }
    print!("{}", report::summary(&records));
    Ok(true)
}
