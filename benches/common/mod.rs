//! Criterion glue shared by every bench file: each registered case of the named ops, on every
//! backend present, timed with the harness's runner (CUDA events on CUDA), so the criterion
//! numbers and `tilefuse bench` measure the same thing.

use criterion::{Criterion, Throughput};
use tilefuse::harness::{self, Backend, Backends};

/// Benchmarks every case of `ops` (the copy baseline first when listed) on each backend.
pub fn bench_ops(c: &mut Criterion, ops: &[&str]) {
    let backends = Backends::detect();
    for backend in [Backend::Cuda, Backend::Wgpu] {
        if let Err(why) = backends.status(backend) {
            eprintln!("{backend}: skipped: {why}");
        }
    }
    for &name in ops {
        let entry = harness::op(name).unwrap_or_else(|| panic!("op {name} is not registered"));
        let mut group = c.benchmark_group(name);
        for case in (entry.bench_cases)() {
            if case.bytes > 0 {
                group.throughput(Throughput::Bytes(case.bytes));
            }
            for backend in [Backend::Cuda, Backend::Wgpu] {
                if !backends.has(backend) {
                    continue;
                }
                let mut runner = match case.prepare(&backends, backend) {
                    Ok(Some(runner)) => runner,
                    Ok(None) => continue,
                    Err(e) => panic!("{name} {} on {backend}: {e}", case.name),
                };
                let id = format!("{backend}/{}/{}", case.implementation, case.name);
                group.bench_function(id, |b| {
                    b.iter_custom(|runs| runner.time_runs(runs).unwrap_or_else(|e| panic!("{e}")))
                });
            }
        }
        group.finish();
    }
}
