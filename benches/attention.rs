//! Block-sparse attention (b = 1, hq = 32, d = 128) over the benchmark masks, forward and
//! backward.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

fn attention(c: &mut Criterion) {
    common::bench_ops(c, &["attention", "attention-backward"]);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = attention
}
criterion_main!(benches);
