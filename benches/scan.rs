//! The scan (complex64, 1% resets; full and final-state-only) beside a device copy of the
//! same bytes and the 256 MiB copy bandwidth baseline.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

fn scan(c: &mut Criterion) {
    common::bench_ops(c, &["copy", "scan"]);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = scan
}
criterion_main!(benches);
