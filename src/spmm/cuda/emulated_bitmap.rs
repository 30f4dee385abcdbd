//! cuda/spmm_bitmap.cu run by the CPU emulator with the launcher's own [`Plan`], against the
//! f64 reference: both ways of filling the stages (bulk copies, as sm_90 compiles it, and
//! cp.async, as sm_80–89 do) under the emulator's adversarial model of mbarriers and copies.

use half::{bf16, f16};

use super::emulated::{ORDERS, Workspace, bits, device, poison, registers};
use super::plan::tests::device as small_device;
use super::plan::{BitmapBuffers, BitmapSize, Plan};
use super::variant::BitmapProbe;
use crate::backend::cuda::{CudaDeviceInfo, Kernel};
use crate::backend::emulator::{Emulator, Guarded, Launch, Order, assert_emulated};
use crate::element::{Dtype16, Float16, OutputElement};
use crate::harness::Rng;
use crate::spmm::check::{Case, Pattern, check_with};
use crate::spmm::{Bitmap, TILE_K};

/// How the kernel fills its stages.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fill {
    /// One bulk copy per unit's masks and values (sm_90).
    Bulk,
    /// 16-byte cp.async copies (sm_80–89; the emulator's extra entry points).
    Async,
}

/// How a test launches the emulated kernel.
#[derive(Clone, Copy)]
struct Setup<'a> {
    device: &'a CudaDeviceInfo,
    order: Order,
    fill: Fill,
    /// Elements of x's buffer before x (x's rows not 16-byte aligned when odd).
    x_shift: usize,
    /// A probe in place of the kernel (f16 in and out, 16 tokens a block, bulk fill).
    probe: Option<BitmapProbe>,
}

impl<'a> Setup<'a> {
    fn new(device: &'a CudaDeviceInfo, order: Order, fill: Fill) -> Self {
        Setup {
            device,
            order,
            fill,
            x_shift: 0,
            probe: None,
        }
    }

    /// The kernel for `n` tokens, T in and O out, and the plan the launcher makes for it.
    fn launch<T: Float16, O: OutputElement<T>>(
        &self,
        w: &Bitmap<T>,
        n: usize,
    ) -> Result<(Kernel, Plan), String> {
        let tokens = super::plan::tokens_per_block(n);
        let kernel = super::bitmap_kernel::<T, O>(tokens);
        let size = BitmapSize {
            m: w.m(),
            k: w.k(),
            values: w.values().len().max(1),
            max_tile_values: w.max_tile_values(),
        };
        let plan =
            Plan::bitmap(self.device, size, n, registers(kernel)).map_err(|e| e.to_string())?;
        let kernel = match (self.probe, self.fill) {
            (Some(probe), _) => probe.kernel::<T, O>(tokens).map_err(|e| e.to_string())?,
            (None, Fill::Bulk) => kernel,
            (None, Fill::Async) => async_kernel::<T, O>(tokens),
        };
        Ok((kernel, plan))
    }
}

/// The emulator's cp.async build of the kernel for `T` in, `O` out and `tokens` per block.
fn async_kernel<T: Float16, O: OutputElement<T>>(tokens: u32) -> Kernel {
    let input = match T::DTYPE {
        Dtype16::F16 => "f16",
        Dtype16::Bf16 => "bf16",
    };
    let output = if O::F32 { "f32" } else { "same" };
    let name = format!("tilefuse_spmm_bitmap_async_{input}_n{tokens}_{output}");
    Kernel {
        module: "spmm_bitmap",
        name: Box::leak(name.into_boxed_str()),
    }
}

/// `y = x · wᵀ` through the emulated kernel with a workspace of its own.
fn run<T: Float16, O: OutputElement<T>>(
    emulator: &Emulator,
    w: &Bitmap<T>,
    x: &[T],
    setup: Setup,
) -> Result<Vec<O>, String> {
    let (_, plan) = setup.launch::<T, O>(w, x.len() / w.k())?;
    let mut workspace = Workspace::new(plan.partials(), plan.counters());
    run_in(emulator, w, x, setup, &mut workspace)
}

/// [`run`] with split-K's memory from `workspace`, which must be large enough.
fn run_in<T: Float16, O: OutputElement<T>>(
    emulator: &Emulator,
    w: &Bitmap<T>,
    x: &[T],
    setup: Setup,
    workspace: &mut Workspace,
) -> Result<Vec<O>, String> {
    let (m, k) = (w.m(), w.k());
    let n = x.len() / k;
    let (kernel, plan) = setup.launch::<T, O>(w, n)?;
    let mut masks = Guarded::new(w.masks());
    let mut offsets = Guarded::new(w.unit_offsets());
    let mut values = Guarded::new(if w.values().is_empty() {
        &[0][..]
    } else {
        w.values()
    });
    let x_padded = [&vec![T::default(); setup.x_shift][..], x].concat();
    let mut x_buffer = Guarded::new(&x_padded);
    let mut y = Guarded::new(&poison::<O>(n * m));
    workspace.fits(&plan)?;
    let params = plan.bitmap_params(BitmapBuffers {
        masks: masks.address(),
        unit_offsets: offsets.address(),
        values: values.address(),
        x: x_buffer.address() + (setup.x_shift * size_of::<T>()) as u64,
        y: y.address(),
        workspace: workspace.partials.address(),
        counters: workspace.counters.address(),
    });
    let launch = Launch::new(plan.shape(), setup.order);
    // Split-K's last block is then another one: the first split, not the last.
    let launch = match setup.order {
        Order::Reverse => launch.blocks_reversed(),
        _ => launch,
    };
    // SAFETY: the parameters follow abi.h's bitmap spmm contract, as the CUDA launcher's do:
    // the masks, offsets and values of a validated Bitmap, x with n·k values, y with n·m, a
    // stage of at least the largest tile's values, and with splits > 1 a workspace with room
    // for the plan's partials and zeroed counters (checked above); all buffers live until the
    // launch returns.
    unsafe {
        emulator.launch(kernel, &params, &launch)?;
    }
    masks.read("masks")?;
    offsets.read("unit offsets")?;
    values.read("values")?;
    if x_buffer.read("x")?[setup.x_shift..] != *x {
        return Err("x was written".into());
    }
    workspace.check_after()?;
    y.read("y")
}

fn check_case(case: &Case, setup: Setup) {
    match (case.bf16, case.out_f32) {
        (false, false) => check_typed::<f16, f16>(case, setup),
        (false, true) => check_typed::<f16, f32>(case, setup),
        (true, false) => check_typed::<bf16, bf16>(case, setup),
        (true, true) => check_typed::<bf16, f32>(case, setup),
    }
}

/// One case, launched as `setup` says, on the case's weight encoded as a bitmap.
fn check_typed<T: Float16, O: OutputElement<T>>(case: &Case, setup: Setup) {
    let what = format!(
        "bitmap {case}, {} SMs, {} B of shared memory, {:?}, {:?} fill, x shifted by {}",
        setup.device.sm_count,
        setup.device.max_shared_per_block,
        setup.order,
        setup.fill,
        setup.x_shift
    );
    assert_emulated(&what, |emulator, seed| {
        check_with::<T, O>(case, seed, |w, x| {
            let w = Bitmap::from_tiled_csl(w)?;
            let y = run::<T, O>(emulator, &w, x, setup);
            Ok(Some(
                y.unwrap_or_else(|e| panic!("emulated bitmap spmm: {e}")),
            ))
        })
    });
}

/// Both fills, alternating with the order.
fn fill(i: usize) -> Fill {
    [Fill::Bulk, Fill::Async][i % 2]
}

#[test]
fn ragged_shape_every_token_count() {
    let device = device(4);
    for (i, n) in [1, 7, 8, 16, 31, 32, 64, 65, 128].into_iter().enumerate() {
        let case = Case::new(300, 520, n, 0.8);
        check_case(&case, Setup::new(&device, ORDERS[i % 3], fill(i)));
    }
}

#[test]
fn every_sparsity_and_pattern() {
    let device = device(4);
    for (i, sparsity) in [0.0, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0].into_iter().enumerate() {
        for (j, pattern) in [Pattern::Uniform, Pattern::DenseAndEmptyTiles]
            .into_iter()
            .enumerate()
        {
            let case = Case {
                pattern,
                ..Case::new(300, 520, 16, sparsity)
            };
            check_case(&case, Setup::new(&device, ORDERS[i % 3], fill(i + j)));
        }
    }
}

#[test]
fn types_outputs_and_orders() {
    let device = device(4);
    for bf16 in [false, true] {
        for out_f32 in [false, true] {
            for (i, order) in ORDERS.into_iter().enumerate() {
                let case = Case {
                    bf16,
                    out_f32,
                    pattern: Pattern::MagnitudeGlobal,
                    ..Case::new(257, 200, 24, 0.7)
                };
                check_case(&case, Setup::new(&device, order, fill(i)));
            }
        }
    }
}

#[test]
fn tiny_and_unaligned_shapes() {
    let device = device(4);
    for (i, (m, k, n)) in [
        (1, 1, 1),
        (1, 130, 3),
        (129, 65, 9),
        (130, 8, 2),
        (5, 1000, 17),
        (17, 63, 40),
    ]
    .into_iter()
    .enumerate()
    {
        let case = Case::new(m, k, n, 0.5);
        check_case(
            &case,
            Setup::new(&device, Order::Shuffled(m as u64), fill(i)),
        );
    }
    // x's rows not 16-byte aligned (k a multiple of 8, x at an odd element): no cp.async for x.
    for fill in [Fill::Bulk, Fill::Async] {
        let setup = Setup {
            x_shift: 1,
            ..Setup::new(&device, Order::Threads, fill)
        };
        check_typed::<f16, f16>(&Case::new(200, 256, 16, 0.8), setup);
    }
}

#[test]
fn split_k_sizes() {
    // From one split (few SMs) to one per four k tiles (many).
    for (i, sm_count) in [1, 3, 16, 132].into_iter().enumerate() {
        let device = device(sm_count);
        let case = Case::new(256, 1500, 16, 0.8);
        check_case(&case, Setup::new(&device, ORDERS[i % 3], fill(i)));
    }
}

/// A block walks many more k tiles than the ring has stages, each stage refilled several
/// times: a producer that refills a stage before its consumers release it, or a consumer that
/// reads a stage after releasing it, reads the next copy's poison.
#[test]
fn long_k_walks_the_ring_many_times() {
    let device = device(1);
    for (i, (n, sparsity)) in [(16, 0.8), (64, 0.5), (8, 0.0)].into_iter().enumerate() {
        let case = Case::new(256, 64 * 40, n, sparsity);
        let w =
            Bitmap::from_tiled_csl(&crate::spmm::check::weight::<f16>(&case, 1).unwrap()).unwrap();
        let (_, plan) = Setup::new(&device, Order::Threads, Fill::Bulk)
            .launch::<f16, f16>(&w, n)
            .unwrap();
        assert!(
            plan.tiles_per_split > 2 * plan.stages,
            "{case}: {} tiles through {} stages",
            plan.tiles_per_split,
            plan.stages
        );
        for fill in [Fill::Bulk, Fill::Async] {
            check_case(&case, Setup::new(&device, ORDERS[i % 3], fill));
        }
    }
}

/// With little shared memory the ring has few stages, down to one (sm_86's 99 KiB, and less):
/// the producer then waits for the consumers at every tile.
#[test]
fn few_stages() {
    for (i, (shared, sparsity, n)) in [
        (99 * 1024, 0.0, 64),
        (40 * 1024, 0.0, 16),
        (40 * 1024, 0.8, 16),
        (24 * 1024, 0.5, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let device = small_device(4, shared);
        let case = Case {
            pattern: Pattern::DenseAndEmptyTiles,
            ..Case::new(200, 700, n, sparsity)
        };
        let w =
            Bitmap::from_tiled_csl(&crate::spmm::check::weight::<f16>(&case, 1).unwrap()).unwrap();
        let (_, plan) = Setup::new(&device, Order::Threads, Fill::Bulk)
            .launch::<f16, f16>(&w, n)
            .unwrap();
        eprintln!("{shared} B: {} stages", plan.stages);
        for fill in [Fill::Bulk, Fill::Async] {
            check_case(&case, Setup::new(&device, ORDERS[i % 3], fill));
        }
    }
    let one_stage = small_device(4, 20 * 1024);
    let dense = Bitmap::<f16>::encode(&vec![f16::ONE; 128 * 64], 128, 64).unwrap();
    let (_, plan) = Setup::new(&one_stage, Order::Threads, Fill::Bulk)
        .launch::<f16, f16>(&dense, 16)
        .unwrap();
    assert_eq!(plan.stages, 1);
    check_case(
        &Case::new(128, 640, 16, 0.0),
        Setup::new(&one_stage, Order::Reverse, Fill::Bulk),
    );
}

/// Launch after launch of different shapes and split counts on one workspace, as
/// `spmm_with_workspace` reuses it.
#[test]
fn one_workspace_serves_launch_after_launch() {
    let cases = [
        Case::new(256, 1500, 16, 0.8),
        Case::new(300, 700, 40, 0.5),
        Case::new(129, 2000, 8, 0.9),
    ];
    let device = device(16);
    let (mut partials, mut counters) = (0, 0);
    for case in &cases {
        let w =
            Bitmap::from_tiled_csl(&crate::spmm::check::weight::<f16>(case, 1).unwrap()).unwrap();
        let (_, plan) = Setup::new(&device, Order::Threads, Fill::Bulk)
            .launch::<f16, f16>(&w, case.n)
            .unwrap();
        assert!(plan.splits > 1, "{case}: {} split", plan.splits);
        let most_splits = case.k.div_ceil(TILE_K);
        partials = partials.max(plan.partials() / plan.splits as usize * most_splits);
        counters = counters.max(plan.counters());
    }
    let mut workspace = Workspace::new(partials, counters);
    for (i, case) in cases.iter().enumerate() {
        assert_emulated(
            &format!("bitmap {case}, launch {i} on one workspace"),
            |emulator, seed| {
                check_with::<f16, f16>(case, seed, |w, x| {
                    let w = Bitmap::from_tiled_csl(w)?;
                    let setup = Setup::new(&device, ORDERS[i % 3], fill(i));
                    let y = run_in(emulator, &w, x, setup, &mut workspace);
                    Ok(Some(
                        y.unwrap_or_else(|e| panic!("emulated bitmap spmm: {e}")),
                    ))
                })
            },
        );
    }
}

/// Split-K adds the splits in split order whichever block finishes last: the output is bitwise
/// the same in every order and with either fill.
#[test]
fn split_k_is_bitwise_deterministic() {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let seed = Rng::fresh_seed();
    let device = device(132);
    for case in [
        Case {
            out_f32: true,
            ..Case::new(256, 1600, 16, 0.5)
        },
        Case::new(300, 1600, 40, 0.8),
    ] {
        let what = format!("bitmap {case}, seed {seed}");
        let (w, x) = crate::spmm::check::inputs::<f16>(&case, seed).unwrap();
        let w = Bitmap::from_tiled_csl(&w).unwrap();
        let (_, plan) = Setup::new(&device, Order::Threads, Fill::Bulk)
            .launch::<f16, f32>(&w, case.n)
            .unwrap();
        assert!(plan.splits > 2, "{what}: {} splits", plan.splits);
        let mut outputs = Vec::new();
        for (i, order) in ORDERS.into_iter().enumerate() {
            let setup = Setup::new(&device, order, fill(i));
            let y = if case.out_f32 {
                bits(run::<f16, f32>(emulator, &w, &x, setup))
            } else {
                bits(run::<f16, f16>(emulator, &w, &x, setup))
            };
            outputs.push(y.unwrap_or_else(|e| panic!("{what}, {order:?}: {e}")));
        }
        for (order, y) in ORDERS.iter().zip(&outputs).skip(1) {
            assert!(
                y == &outputs[0],
                "{what}: {order:?} differs from {:?}",
                ORDERS[0]
            );
        }
    }
}

/// The plans of the benchmark's target shapes on an H100 (132 SMs) spread the k tiles evenly
/// (the busiest SM walks at most 10% more than an even share), with a ring of at least four
/// stages and room for two blocks an SM.
#[test]
fn plans_spread_the_work_over_the_sms() {
    let h100 = device(132);
    for (m, k) in [
        (8192usize, 8192usize),
        (28672, 8192),
        (8192, 28672),
        (36864, 9216),
    ] {
        for (n, sparsity) in [(8, 0.8), (16, 0.8), (16, 0.5), (16, 0.0)] {
            let (tiles_m, tiles_k) = (m.div_ceil(crate::spmm::TILE_M), k.div_ceil(TILE_K));
            // The average tile's values, and 10% more in the largest.
            let tile_values = (8192.0 * (1.0 - sparsity)) as usize;
            let size = BitmapSize {
                m,
                k,
                values: tiles_m * tiles_k * tile_values,
                max_tile_values: (tile_values * 11 / 10).min(8192),
            };
            let kernel = super::bitmap_kernel::<f16, f16>(super::plan::tokens_per_block(n));
            let plan = Plan::bitmap(&h100, size, n, registers(kernel)).unwrap();
            let blocks = (plan.tiles_m * plan.n_blocks * plan.splits) as usize;
            let busiest = blocks.div_ceil(132) * plan.tiles_per_split as usize;
            let even = (tiles_m * tiles_k) as f64 / 132.0;
            let what = format!(
                "m={m} k={k} n={n} s={sparsity}: {} splits of {} tiles, {blocks} blocks, {} stages, {} B",
                plan.splits, plan.tiles_per_split, plan.stages, plan.shared_bytes
            );
            assert!(
                busiest as f64 <= 1.1 * even,
                "{what}: {busiest} tiles on the busiest SM, {even:.1} even"
            );
            assert!(plan.stages >= 4, "{what}");
            assert!(
                2 * (plan.shared_bytes as u64 + 1024) <= h100.max_shared_per_sm,
                "{what}"
            );
        }
    }
}

/// The probes (the target configuration's kernel with parts left out, for benchmarks) run
/// through dense and empty tiles, a ring walked many times and split-K within their buffers,
/// leave the counters zero and write y = 0; other token counts and types have none.
#[test]
fn probes_write_zeros() {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let seed = Rng::fresh_seed();
    for (sm_count, pattern, k, sparsity) in [
        (1, Pattern::DenseAndEmptyTiles, 1500, 0.5),
        (1, Pattern::Uniform, 64 * 40, 0.8),
        (132, Pattern::Uniform, 1600, 0.8),
        (4, Pattern::Uniform, 64, 0.0),
    ] {
        let case = Case {
            pattern,
            ..Case::new(300, k, 16, sparsity)
        };
        let what = format!("bitmap {case}, {sm_count} SMs, seed {seed}");
        let device = device(sm_count);
        let w = crate::spmm::check::weight::<f16>(&case, seed).unwrap();
        let w = Bitmap::from_tiled_csl(&w).unwrap();
        let x: Vec<f16> = (1..=case.n * case.k)
            .map(|i| f16::from_f32((i % 13) as f32 / 8.0 - 0.75))
            .collect();
        for probe in BitmapProbe::ALL {
            let setup = Setup {
                probe: Some(probe),
                ..Setup::new(&device, Order::Shuffled(seed), Fill::Bulk)
            };
            let y: Vec<f16> = run(emulator, &w, &x, setup)
                .unwrap_or_else(|e| panic!("{what}: emulated {probe:?}: {e}"));
            assert!(
                y.iter().all(|v| v.to_bits() == 0),
                "{what}: {probe:?} wrote y != 0"
            );
        }
    }
    assert!(BitmapProbe::Loads.kernel::<f16, f16>(8).is_err());
    assert!(BitmapProbe::Loads.kernel::<f16, f32>(16).is_err());
    assert!(BitmapProbe::NoMultiply.kernel::<bf16, bf16>(16).is_err());
}
