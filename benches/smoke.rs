//! The plumbing op, beside the copy bandwidth baseline.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

fn smoke(c: &mut Criterion) {
    common::bench_ops(c, &["copy", "smoke"]);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = smoke
}
criterion_main!(benches);
