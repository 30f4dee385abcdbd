//! SpMM (Tiled-CSL, f16) beside cuBLAS dense fp16 GEMM on the same shapes and the copy
//! bandwidth baseline, all in one run.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

fn spmm(c: &mut Criterion) {
    common::bench_ops(c, &["copy", "spmm"]);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = spmm
}
criterion_main!(benches);
