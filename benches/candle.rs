//! `tilefuse::candle::SparseLinear` on candle's CPU device against candle's dense `Linear`
//! (its gemm, multithreaded) with the same weight, in f16 and f32, at 50, 80 and 90%
//! sparsity: MiniLM's feed-forward shapes and one 4096² projection.
//!
//!     cargo bench --features candle --bench candle

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tilefuse::candle::{Prune, SparseLinear};

/// (m, k, tokens).
const SHAPES: [(usize, usize, usize); 3] = [(1536, 384, 256), (384, 1536, 256), (4096, 4096, 16)];

fn linear_layers(c: &mut Criterion) {
    let device = Device::Cpu;
    let mut group = c.benchmark_group("candle_linear_cpu");
    group.sample_size(20);
    for (m, k, n) in SHAPES {
        let weight = Tensor::randn(0f32, 0.05, (m, k), &device).expect("weight");
        for dtype in [DType::F16, DType::F32] {
            let x = Tensor::randn(0f32, 1.0, (n, k), &device)
                .and_then(|x| x.to_dtype(dtype))
                .expect("x");
            let shape = format!("{m}x{k}_n{n}_{dtype:?}");
            let dense = Linear::new(weight.to_dtype(dtype).expect("weight"), None);
            group.bench_function(BenchmarkId::new("candle_dense", &shape), |b| {
                b.iter(|| dense.forward(&x).expect("dense"))
            });
            for sparsity in [0.5, 0.8, 0.9] {
                let sparse = SparseLinear::from_weight(&weight, None, Prune::per_row(sparsity))
                    .expect("sparse layer");
                let id = format!("tilefuse_sparse_{:.0}", sparsity * 100.0);
                group.bench_function(BenchmarkId::new(id, &shape), |b| {
                    b.iter(|| sparse.forward(&x).expect("sparse"))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, linear_layers);
criterion_main!(benches);
