//! cuda/spmm.cu run by the CPU emulator ([`crate::backend::emulator`]) with the launcher's own
//! [`Plan`], against the f64 reference: the kernel's logic is tested on every machine, GPU or
//! not, before a device run confirms it.

use half::{bf16, f16};

use super::plan::tests::device as small_device;
use super::plan::{Buffers, Plan, SpmmLaunch, WeightSize};
use super::variant::Variant;
use crate::backend::abi::TF_SPMM_HELD_VECTORS;
use crate::backend::cuda::{CudaDeviceInfo, Kernel};
use crate::backend::emulator::{Emulator, Guarded, Launch, Order, assert_emulated};
use crate::element::{Float16, OutputElement};
use crate::harness::Rng;
use crate::spmm::check::{Case, Pattern, check_with};
use crate::spmm::{TILE_K, TILE_M, TiledCsl};

/// A device with `sm_count` SMs and the H100's shared memory, for the launch plan
/// (`small_device` takes the shared memory too: sm_86 and sm_89 have 99 KiB, sm_80 163 KiB).
pub(super) fn device(sm_count: u32) -> CudaDeviceInfo {
    small_device(sm_count, 227 * 1024)
}

pub(super) const NAN_WORDS: u32 = 0x7fc0_7fc0; // NaN as f32, and each half NaN as f16 and as bf16

/// The launch plan for `w` and `n` tokens on `device`, T in and out.
fn plan<T: Float16>(w: &TiledCsl<T>, n: usize, device: &CudaDeviceInfo) -> Result<Plan, String> {
    Setup::new(device, Order::Threads).plan::<T, T>(w, n)
}

/// What the launch plan needs of `w`.
fn weight_size<T: Float16>(w: &TiledCsl<T>) -> WeightSize {
    WeightSize {
        m: w.m(),
        k: w.k(),
        vectors: w.device_entries().len() / 4,
        max_tile_vectors: w.max_tile_vectors(),
    }
}

/// Registers per thread of `kernel` on sm_90 (or the first architecture built), from this
/// build's ptxas report; 128, no fewer than any spmm kernel uses, in a build without kernels
/// (or without the probes' module).
pub(super) fn registers(kernel: Kernel) -> u32 {
    let Some(module) = crate::backend::kernels::module(kernel.module) else {
        return 128;
    };
    let mut entries: Vec<_> = module
        .resources()
        .into_iter()
        .filter(|r| r.kernel == kernel.name)
        .collect();
    entries.sort_by_key(|r| r.arch != "sm_90");
    let entry = entries.first();
    entry
        .unwrap_or_else(|| panic!("{} is not in the ptxas report", kernel.name))
        .registers
}

/// Split-K's memory, as a `SpmmWorkspace` holds it: partials never written (NaN here), and
/// counters zeroed when allocated.
pub(super) struct Workspace {
    pub(super) partials: Guarded<u32>,
    pub(super) counters: Guarded<u32>,
    /// Words of each.
    sizes: (usize, usize),
}

impl Workspace {
    /// An error unless it holds what a launch of `plan` needs.
    pub(super) fn fits(&self, plan: &Plan) -> Result<(), String> {
        let (partials, counters) = self.sizes;
        if plan.split_k() && (partials < plan.partials() || counters < plan.counters()) {
            return Err(format!(
                "a workspace of {:?} words is too small",
                self.sizes
            ));
        }
        Ok(())
    }

    /// An error unless a launch left it in bounds and its counters at zero.
    pub(super) fn check_after(&self) -> Result<(), String> {
        self.partials.read("split-K partials")?;
        if self
            .counters
            .read("split-K counters")?
            .iter()
            .any(|&c| c != 0)
        {
            return Err("split-K counters not left at zero".into());
        }
        Ok(())
    }

    pub(super) fn new(partials: usize, counters: usize) -> Workspace {
        Workspace {
            partials: Guarded::new(&vec![NAN_WORDS; partials]),
            counters: Guarded::new(&vec![0; counters]),
            sizes: (partials, counters),
        }
    }
}

/// How a test launches the emulated kernel.
#[derive(Clone, Copy)]
struct Setup<'a> {
    /// The device the launch is planned for.
    device: &'a CudaDeviceInfo,
    order: Order,
    /// Elements of x's buffer before x (a view at an offset: with x_shift odd, x's rows are
    /// not 16-byte aligned even when k is a multiple of 8).
    x_shift: usize,
    /// A probe or variant kernel in place of the plan's (f16 in and out only).
    variant: Option<Variant>,
}

impl<'a> Setup<'a> {
    /// The launch for `w` and `n` tokens, T in and O out, as the launcher makes it.
    fn launch<T: Float16, O: OutputElement<T>>(
        &self,
        w: &TiledCsl<T>,
        n: usize,
    ) -> Result<SpmmLaunch, String> {
        SpmmLaunch::new::<T, O>(self.device, weight_size(w), n, self.variant, |kernel| {
            Ok(registers(kernel))
        })
        .map_err(|e| e.to_string())
    }

    /// The launch plan for `w` and `n` tokens, as the launcher makes it for this kernel.
    fn plan<T: Float16, O: OutputElement<T>>(
        &self,
        w: &TiledCsl<T>,
        n: usize,
    ) -> Result<Plan, String> {
        Ok(self.launch::<T, O>(w, n)?.plan)
    }

    /// The plan's own kernel, x at the start of its buffer.
    fn new(device: &'a CudaDeviceInfo, order: Order) -> Self {
        Setup {
            device,
            order,
            x_shift: 0,
            variant: None,
        }
    }
}

/// `y = x · wᵀ` through the emulated kernel, launched as `setup` says, with a workspace of
/// its own.
fn run<T: Float16, O: OutputElement<T>>(
    emulator: &Emulator,
    w: &TiledCsl<T>,
    x: &[T],
    setup: Setup,
) -> Result<Vec<O>, String> {
    let plan = setup.plan::<T, O>(w, x.len() / w.k())?;
    let mut workspace = Workspace::new(plan.partials(), plan.counters());
    run_in(emulator, w, x, setup, &mut workspace)
}

/// [`run`] with split-K's memory from `workspace`, which must be large enough.
fn run_in<T: Float16, O: OutputElement<T>>(
    emulator: &Emulator,
    w: &TiledCsl<T>,
    x: &[T],
    setup: Setup,
    workspace: &mut Workspace,
) -> Result<Vec<O>, String> {
    let Setup { order, x_shift, .. } = setup;
    let (m, k) = (w.m(), w.k());
    let n = x.len() / k;
    let SpmmLaunch { kernel, plan } = setup.launch::<T, O>(w, n)?;
    let mut entries = Guarded::new(w.device_entries());
    let mut offsets = Guarded::new(w.tile_offsets());
    let mut x_buffer = Guarded::new(&[&vec![T::default(); x_shift][..], x].concat());
    let mut y = Guarded::new(&poison::<O>(n * m));
    workspace.fits(&plan)?;
    let params = plan.params(Buffers {
        entries: entries.address(),
        tile_offsets: offsets.address(),
        x: x_buffer.address() + (x_shift * size_of::<T>()) as u64,
        y: y.address(),
        workspace: workspace.partials.address(),
        counters: workspace.counters.address(),
    });
    let launch = Launch::new(plan.shape(), order);
    // Split-K's last block is then another one: the first split, not the last.
    let launch = match order {
        Order::Reverse => launch.blocks_reversed(),
        _ => launch,
    };
    // SAFETY: the parameters follow abi.h's spmm contract, as the CUDA launcher's do: the
    // entries and offsets of a validated TiledCsl, x with n·k values, y with n·m, and with
    // splits > 1 a workspace with room for the plan's partials and zeroed counters (checked
    // above); all buffers live until the launch returns. A variant stands for the f16 kernel
    // (Variant::kernel refused other types) and was planned for.
    unsafe {
        emulator.launch(kernel, &params, &launch)?;
    }
    entries.read("entries")?;
    offsets.read("tile offsets")?;
    if x_buffer.read("x")?[x_shift..] != *x {
        return Err("x was written".into());
    }
    workspace.check_after()?;
    y.read("y")
}

/// `len` outputs of NaN.
pub(super) fn poison<O: bytemuck::Pod>(len: usize) -> Vec<O> {
    bytemuck::cast_slice(&vec![NAN_WORDS; (len * size_of::<O>()).div_ceil(4)])[..len].to_vec()
}

fn check_case(case: &Case, device: &CudaDeviceInfo, order: Order) {
    let setup = Setup::new(device, order);
    match (case.bf16, case.out_f32) {
        (false, false) => check_typed::<f16, f16>(case, setup),
        (false, true) => check_typed::<f16, f32>(case, setup),
        (true, false) => check_typed::<bf16, bf16>(case, setup),
        (true, true) => check_typed::<bf16, f32>(case, setup),
    }
}

/// One case, launched as `setup` says.
fn check_typed<T: Float16, O: OutputElement<T>>(case: &Case, setup: Setup) {
    let Setup { device, order, .. } = setup;
    let what = format!(
        "{case}, {} SMs, {} B of shared memory, {order:?}, x shifted by {}, {:?}",
        device.sm_count, device.max_shared_per_block, setup.x_shift, setup.variant
    );
    assert_emulated(&what, |emulator, seed| {
        check_with::<T, O>(case, seed, |w, x| {
            let y = run::<T, O>(emulator, w, x, setup);
            Ok(Some(y.unwrap_or_else(|e| panic!("emulated spmm: {e}"))))
        })
    });
}

pub(super) const ORDERS: [Order; 3] = [Order::Threads, Order::Reverse, Order::Shuffled(7)];

/// The poison of emulated outputs and partials is NaN as f32 and as either 16-bit type.
#[test]
fn poison_is_nan_in_every_output_type() {
    assert!(f32::from_bits(NAN_WORDS).is_nan());
    let halves = [NAN_WORDS as u16, (NAN_WORDS >> 16) as u16];
    assert!(halves.iter().all(|&h| f16::from_bits(h).is_nan()));
    assert!(
        halves.iter().all(|&h| bf16::from_bits(h).is_nan()),
        "{NAN_WORDS:#010x}"
    );
}

#[test]
fn ragged_shape_every_token_count() {
    for (i, n) in [1, 7, 8, 16, 31, 32, 64, 65, 128].into_iter().enumerate() {
        let case = Case::new(300, 520, n, 0.8);
        check_case(&case, &device(4), ORDERS[i % 3]);
    }
}

#[test]
fn every_sparsity_and_pattern() {
    for (i, sparsity) in [0.0, 0.5, 0.7, 0.9, 0.99, 1.0].into_iter().enumerate() {
        for pattern in [Pattern::Uniform, Pattern::DenseAndEmptyTiles] {
            let case = Case {
                pattern,
                ..Case::new(300, 520, 16, sparsity)
            };
            check_case(&case, &device(4), ORDERS[i % 3]);
        }
    }
}

#[test]
fn types_outputs_and_orders() {
    for bf16 in [false, true] {
        for out_f32 in [false, true] {
            for order in ORDERS {
                let case = Case {
                    bf16,
                    out_f32,
                    pattern: Pattern::MagnitudeGlobal,
                    ..Case::new(257, 200, 24, 0.7)
                };
                check_case(&case, &device(4), order);
            }
        }
    }
}

#[test]
fn tiny_and_unaligned_shapes() {
    for (m, k, n) in [
        (1, 1, 1),
        (1, 130, 3),
        (129, 65, 9),
        (130, 8, 2),
        (5, 1000, 17),
    ] {
        let case = Case::new(m, k, n, 0.5);
        check_case(&case, &device(4), Order::Shuffled(m as u64));
    }
}

#[test]
fn split_k_sizes() {
    // From one split (few SMs) to one per four k tiles (many).
    for (i, sm_count) in [1, 3, 16, 132].into_iter().enumerate() {
        let case = Case::new(256, 1500, 16, 0.8);
        check_case(&case, &device(sm_count), ORDERS[i % 3]);
    }
}

/// Launch after launch of different shapes and split counts on one workspace, as
/// `spmm_with_workspace` reuses it: each finds the counters zero and ignores the partials
/// that earlier launches left.
#[test]
fn one_workspace_serves_launch_after_launch() {
    let cases = [
        Case::new(256, 1500, 16, 0.8),
        Case::new(300, 700, 40, 0.5),
        Case::new(129, 2000, 8, 0.9),
        Case::new(256, 1500, 16, 0.7),
    ];
    let device = device(16);
    let (mut partials, mut counters) = (0, 0);
    for case in &cases {
        let w = crate::spmm::check::weight::<f16>(case, 1).unwrap();
        let plan = plan(&w, case.n, &device).unwrap();
        assert!(plan.splits > 1, "{case}: {} split", plan.splits);
        // Room for as many splits as k tiles: the split count may differ with the seed.
        let most_splits = case.k.div_ceil(TILE_K);
        partials = partials.max(plan.partials() / plan.splits as usize * most_splits);
        counters = counters.max(plan.counters());
    }
    let mut workspace = Workspace::new(partials, counters);
    for (i, case) in cases.iter().enumerate() {
        let order = ORDERS[i % 3];
        assert_emulated(
            &format!("{case}, launch {i} on one workspace"),
            |emulator, seed| {
                check_with::<f16, f16>(case, seed, |w, x| {
                    let setup = Setup::new(&device, order);
                    let y = run_in(emulator, w, x, setup, &mut workspace);
                    Ok(Some(y.unwrap_or_else(|e| panic!("emulated spmm: {e}"))))
                })
            },
        );
    }
}

/// The launch plan of the benchmark's target shapes on an H100 (132 SMs) keeps every SM busy
/// and spreads the k tiles evenly: the busiest SM walks at most 10% more than an even share.
/// So do the register variants' (all their entries held: a stage of one vector).
#[test]
fn plans_spread_the_work_over_the_sms() {
    let sm_count = 132;
    for (m, k) in [
        (8192usize, 8192usize),
        (28672, 8192),
        (8192, 28672),
        (36864, 9216),
    ] {
        let held = TF_SPMM_HELD_VECTORS as usize;
        // (From 32 tokens on, split-K's partials weigh enough that fewer splits and a less
        // even spread move fewer bytes.)
        for (n, held) in [(8, 0), (16, 0), (8, held), (16, held)] {
            let (tiles_m, tiles_k) = (m.div_ceil(TILE_M), k.div_ceil(TILE_K));
            // 80% sparsity: 8192 * 0.2 / 4 vectors in the average tile, 10% more in the largest.
            let vectors = tiles_m * tiles_k * 410;
            let variant = (held > 0).then_some(Variant::EntriesInRegisters);
            let weight = WeightSize {
                m,
                k,
                vectors,
                max_tile_vectors: 451,
            };
            let launch = SpmmLaunch::new::<f16, f16>(&device(sm_count), weight, n, variant, |k| {
                Ok(registers(k))
            });
            let plan = launch.unwrap().plan;
            let blocks = (plan.tiles_m * plan.n_blocks * plan.splits) as usize;
            let busiest = blocks.div_ceil(sm_count as usize) * plan.tiles_per_split as usize;
            let even = (tiles_m * tiles_k) as f64 / f64::from(sm_count);
            assert!(
                blocks >= sm_count as usize && busiest as f64 <= 1.1 * even,
                "m={m} k={k} n={n} held={held}: {} splits of {} tiles, {blocks} blocks: {busiest} tiles on the busiest SM, {even:.1} even",
                plan.splits,
                plan.tiles_per_split
            );
        }
    }
}

/// With less shared memory than the densest tile needs (sm_86 / sm_89: 99 KiB), a stage holds
/// part of a tile and the scatter reads the rest from global memory.
#[test]
fn dense_tiles_with_little_shared_memory() {
    for (i, n) in [8, 64].into_iter().enumerate() {
        for pattern in [Pattern::Uniform, Pattern::DenseAndEmptyTiles] {
            let case = Case {
                pattern,
                ..Case::new(200, 300, n, 0.0)
            };
            check_case(&case, &small_device(4, 99 * 1024), ORDERS[i]);
        }
    }
}

/// x at an address that is not a multiple of 16 bytes, with k a multiple of 8: the kernel
/// must not use 16-byte copies for it.
#[test]
fn x_not_16_byte_aligned() {
    let device = device(4);
    let setup = Setup {
        x_shift: 1,
        ..Setup::new(&device, Order::Threads)
    };
    check_typed::<f16, f16>(&Case::new(200, 256, 16, 0.8), setup);
}

/// The probes (the target configuration's kernel with parts left out, for benchmarks) run on
/// dense and empty tiles and with split-K within their buffers, leave the counters zero and
/// write y = 0; other token counts have none.
#[test]
fn probes_write_zeros() {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let seed = Rng::fresh_seed();
    // One and three k tiles, and split-K whose last split has one (k = 1600 on 132 SMs);
    // x rows 16-byte aligned (k a multiple of 8: cp.async) or not.
    for (sm_count, pattern, k, split_k) in [
        (1, Pattern::DenseAndEmptyTiles, 1500, false),
        (16, Pattern::Uniform, 1500, true),
        (132, Pattern::Uniform, 1600, true),
        (4, Pattern::Uniform, 64, false),
        (4, Pattern::DenseAndEmptyTiles, 192, false),
    ] {
        let case = Case {
            pattern,
            ..Case::new(300, k, 16, 0.8)
        };
        let what = format!("{case}, {sm_count} SMs, seed {seed}");
        let device = device(sm_count);
        let w = crate::spmm::check::weight::<f16>(&case, seed).unwrap();
        let x: Vec<f16> = (1..=case.n * case.k)
            .map(|i| f16::from_f32((i % 13) as f32 / 8.0 - 0.75))
            .collect();
        let launch = plan(&w, case.n, &device).unwrap();
        assert_eq!(launch.splits > 1, split_k, "{what}");
        for probe in Variant::ALL.into_iter().filter(|v| v.is_probe()) {
            let setup = Setup {
                variant: Some(probe),
                ..Setup::new(&device, Order::Shuffled(seed))
            };
            let y: Vec<f16> = run(emulator, &w, &x, setup)
                .unwrap_or_else(|e| panic!("{what}: emulated {probe:?}: {e}"));
            assert!(
                y.iter().all(|v| v.to_bits() == 0),
                "{what}: {probe:?} wrote y != 0"
            );
        }
    }
    assert!(Variant::ProbeLoads.kernel::<f16, f16>(8).is_err());
    assert!(Variant::EntriesInRegisters.kernel::<f16, f16>(8).is_ok());
    assert!(Variant::EntriesInRegisters.kernel::<f16, f32>(16).is_err());
    assert!(
        Variant::EntriesInRegisters
            .kernel::<bf16, bf16>(16)
            .is_err()
    );
}

/// The variants that hold a tile's first entries in registers compute y as the kernels do: at
/// every density (a dense tile's vectors beyond the registers go through the stages, and
/// where shared memory is small, partly through global memory), with and without split-K, in
/// every order, for every token count.
#[test]
fn entries_in_registers() {
    let devices = [device(1), device(16), small_device(4, 99 * 1024)];
    for (i, sparsity) in [0.0, 0.5, 0.8, 0.99, 1.0].into_iter().enumerate() {
        for pattern in [Pattern::Uniform, Pattern::DenseAndEmptyTiles] {
            let case = Case {
                pattern,
                ..Case::new(300, 1500, 13, sparsity)
            };
            for device in &devices {
                check_registers(&case, device, ORDERS[i % 3]);
            }
        }
    }
    // One and three k tiles, and split-K whose last split has one (tiles_per_split 4 of 25);
    // x rows 16-byte aligned, so x goes by cp.async.
    let device = device(132);
    let w = crate::spmm::check::weight::<f16>(&Case::new(300, 1600, 13, 0.5), 1).unwrap();
    let registers = Setup {
        variant: Some(Variant::EntriesInRegisters),
        ..Setup::new(&device, Order::Threads)
    };
    let launch = registers.plan::<f16, f16>(&w, 13).unwrap();
    assert_eq!((launch.splits, launch.tiles_per_split), (7, 4));
    for (i, (k, sparsity)) in [(1600, 0.5), (1600, 0.9), (64, 0.0), (192, 0.8)]
        .into_iter()
        .enumerate()
    {
        check_registers(&Case::new(300, k, 13, sparsity), &device, ORDERS[i % 3]);
    }
    // The kernels of 8, 32 and 64 tokens (70: two blocks of 64), on dense tiles beside empty
    // ones and at a decode sparsity.
    for (i, n) in [5, 29, 64, 70].into_iter().enumerate() {
        for (sparsity, pattern) in [(0.0, Pattern::DenseAndEmptyTiles), (0.8, Pattern::Uniform)] {
            let case = Case {
                pattern,
                ..Case::new(300, 1500, n, sparsity)
            };
            check_registers(&case, &devices[1 + i % 2], ORDERS[i % 3]);
        }
    }
}

fn check_registers(case: &Case, device: &CudaDeviceInfo, order: Order) {
    let setup = Setup {
        variant: Some(Variant::EntriesInRegisters),
        ..Setup::new(device, order)
    };
    check_typed::<f16, f16>(case, setup);
}

/// Split-K adds the splits in split order, whichever block of a tile finishes last, and the
/// warps' sums in warp order, however they interleave: the output is bitwise the same in
/// every order (docs/design.md: deterministic), for each way the warps split a tile (16, 24 and 40
/// tokens: four column groups, two, one), f32 and f16 outputs, and the register variant.
#[test]
fn split_k_is_bitwise_deterministic() {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let seed = Rng::fresh_seed();
    let device = device(132);
    let f32_out = |case: Case| Case {
        out_f32: true,
        ..case
    };
    for (case, variant) in [
        (f32_out(Case::new(256, 1600, 16, 0.5)), None),
        (f32_out(Case::new(300, 1600, 24, 0.5)), None),
        (f32_out(Case::new(300, 1600, 40, 0.5)), None),
        (Case::new(300, 1600, 13, 0.5), None),
        (
            Case::new(300, 1600, 13, 0.5),
            Some(Variant::EntriesInRegisters),
        ),
    ] {
        let what = format!("{case}, {variant:?}, seed {seed}");
        let (w, x) = crate::spmm::check::inputs::<f16>(&case, seed).unwrap();
        let setup = |order| Setup {
            variant,
            ..Setup::new(&device, order)
        };
        let splits = if case.out_f32 {
            setup(Order::Threads).plan::<f16, f32>(&w, case.n)
        } else {
            setup(Order::Threads).plan::<f16, f16>(&w, case.n)
        };
        let splits = splits.unwrap().splits;
        assert!(splits > 2, "{what}: {splits} splits");
        let outputs: Vec<Vec<u64>> = ORDERS
            .into_iter()
            .map(|order| {
                let y = if case.out_f32 {
                    bits(run::<f16, f32>(emulator, &w, &x, setup(order)))
                } else {
                    bits(run::<f16, f16>(emulator, &w, &x, setup(order)))
                };
                y.unwrap_or_else(|e| panic!("{what}, {order:?}: {e}"))
            })
            .collect();
        for (order, y) in ORDERS.iter().zip(&outputs).skip(1) {
            assert!(
                y == &outputs[0],
                "{what}: {order:?} differs from {:?}",
                ORDERS[0]
            );
        }
    }
}

/// Each output's bits (as f64, which holds f16 and f32 values exactly).
pub(super) fn bits<O: OutputElement<f16>>(y: Result<Vec<O>, String>) -> Result<Vec<u64>, String> {
    Ok(y?.into_iter().map(|v| v.to_f64().to_bits()).collect())
}
