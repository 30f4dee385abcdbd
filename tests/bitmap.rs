//! spmm's bitmap format: encoding at every density and shape, the mask bit order of the
//! `mma.sync` A fragment, `from_parts` against corrupted and arbitrary parts, conversion
//! from Tiled-CSL, safetensors, and the reference on either format.

mod common;

use half::{bf16, f16};
use proptest::prelude::*;
use tilefuse::Error;
use tilefuse::harness::Rng;
use tilefuse::spmm::{Bitmap, Pruning, TiledCsl, UNIT_K, UNIT_M, prune, reference};

#[test]
fn encode_decode_round_trip_is_exact_at_every_density_and_shape() {
    let seed = common::seed();
    let shapes = [
        (1, 1),
        (16, 64),
        (17, 65),
        (33, 129),
        (130, 200),
        (300, 520),
    ];
    for (m, k) in shapes {
        for sparsity in [0.0, 0.3, 0.5, 0.8, 0.95, 1.0] {
            let dense = common::random_sparse(m, k, sparsity, seed);
            let w = Bitmap::encode(&dense, m, k).unwrap();
            let what = format!("seed {seed}, m={m} k={k} sparsity {sparsity}");
            assert_eq!(w.decode(), dense, "{what}");
            let nonzeros = dense.iter().filter(|v| v.to_f32() != 0.0).count();
            assert_eq!(w.stats().nnz, nonzeros, "{what}");
            assert!(w.unit_offsets().iter().all(|o| o % 8 == 0), "{what}");
            let back = Bitmap::<f16>::from_parts(
                m,
                k,
                w.unit_offsets().to_vec(),
                w.masks().to_vec(),
                w.values().to_vec(),
            );
            assert_eq!(back.unwrap(), w, "{what}");
        }
    }
    let bf = [1.5, 0.0, -2.0, 3.0].map(bf16::from_f32);
    assert_eq!(Bitmap::encode(&bf, 2, 2).unwrap().decode(), bf);
    let negative_zero = [f16::NEG_ZERO, f16::ONE];
    assert_eq!(
        Bitmap::encode(&negative_zero, 1, 2).unwrap().decode(),
        [f16::ZERO, f16::ONE]
    );
}

/// What a lane of the CUDA kernel will do: for each `m16n8k16` step of a unit, register
/// `a_i` of lane `l` (PTX ISA: row l / 4 + 8 for a2, a3, a6, a7; column 2·(l % 4) + i % 2, + 8
/// for a4..a7) is the value at the popcount of the unit's earlier bits, when its bit
/// `2l + i % 2` of block `4·step + i / 2` is set, and 0 when not.
#[test]
fn the_mask_bit_order_is_the_a_fragment_of_mma_sync() {
    let (m, k) = (2 * UNIT_M, 2 * UNIT_K);
    let mut rng = Rng::new(common::seed());
    // Distinct values (exact in f16), half of them zero.
    let dense: Vec<f16> = (0..m * k)
        .map(|i| match rng.unit() < 0.5 {
            true => f16::ZERO,
            false => f16::from_f64((i + 1) as f64),
        })
        .collect();
    let w = Bitmap::encode(&dense, m, k).unwrap();
    let units_k = k / UNIT_K;
    for unit in 0..(m / UNIT_M) * units_k {
        let masks = &w.masks()[unit * 16..(unit + 1) * 16];
        let values = &w.values()[w.unit_offsets()[unit] as usize..];
        let (row0, col0) = ((unit / units_k) * UNIT_M, (unit % units_k) * UNIT_K);
        for step in 0..4 {
            for lane in 0..32 {
                for i in 0..8 {
                    let (block, bit) = (4 * step + i / 2, 2 * lane + i % 2);
                    let earlier: u32 = masks[..block].iter().map(|m| m.count_ones()).sum();
                    let below = (masks[block] & ((1u64 << bit) - 1)).count_ones();
                    let got = match masks[block] >> bit & 1 {
                        1 => values[(earlier + below) as usize],
                        _ => 0,
                    };
                    let row = row0 + lane / 4 + 8 * ((i / 2) % 2);
                    let col = col0 + 16 * step + 2 * (lane % 4) + i % 2 + 8 * (i / 4);
                    let want = dense[row * k + col].to_bits();
                    assert_eq!(got, want, "unit {unit} step {step} lane {lane} a{i}");
                }
            }
        }
    }
}

#[test]
fn tiled_csl_converts_and_both_formats_give_the_same_reference() {
    let seed = common::seed();
    for (m, k, sparsity) in [(300, 520, 0.8), (17, 65, 0.0), (129, 130, 0.5)] {
        let dense = common::random_sparse(m, k, sparsity, seed);
        let pruned = prune(&dense, m, k, sparsity, Pruning::PerRow).unwrap();
        let tiled = TiledCsl::encode(&pruned, m, k).unwrap();
        let bitmap = Bitmap::from_tiled_csl(&tiled).unwrap();
        assert_eq!(bitmap, Bitmap::encode(&pruned, m, k).unwrap());
        let x = common::random_sparse(3, k, 0.0, seed ^ 1);
        assert_eq!(
            reference(&bitmap, &x).unwrap(),
            reference(&tiled, &x).unwrap(),
            "seed {seed}"
        );
    }
}

/// 2 bytes per nonzero, 8 per 64-element block and 4 per 16 x 64 unit, padding aside: about
/// 0.525 bytes per element at 80% sparsity and 1.125 at 50%.
#[test]
fn stats_count_the_bytes() {
    let seed = common::seed();
    for (sparsity, low, high) in [(0.8, 0.52, 0.55), (0.5, 1.12, 1.15)] {
        let dense = common::random_sparse(512, 512, sparsity, seed);
        let stats = Bitmap::encode(&dense, 512, 512).unwrap().stats();
        let per_element = stats.bytes_per_dense_element;
        assert!(
            (low..high).contains(&per_element),
            "seed {seed}: {per_element}"
        );
        let units = 512 / UNIT_M * (512 / UNIT_K);
        let values = (stats.bytes - 8 * 16 * units - 4 * (units + 1)) / 2;
        assert!(values >= stats.nnz && values < stats.nnz + 8 * units);
    }
}

#[test]
fn safetensors_round_trip_and_checks_metadata() {
    let dense = common::random_sparse(200, 300, 0.7, common::seed());
    let w = Bitmap::encode(&dense, 200, 300).unwrap();
    let path = std::env::temp_dir().join(format!(
        "tilefuse-bitmap-{}.safetensors",
        std::process::id()
    ));
    w.save(&path).unwrap();
    assert_eq!(Bitmap::<f16>::load(&path).unwrap(), w);
    let wrong_type = Bitmap::<bf16>::load(&path).unwrap_err();
    assert!(
        wrong_type.to_string().contains("dtype = bf16"),
        "{wrong_type}"
    );
    std::fs::remove_file(&path).unwrap();
    let tiled = TiledCsl::encode(&dense, 200, 300).unwrap();
    let wrong_format = Bitmap::<f16>::from_safetensors(&tiled.to_safetensors().unwrap());
    assert!(
        wrong_format
            .unwrap_err()
            .to_string()
            .contains("format = bitmap"),
    );
    assert!(Bitmap::<f16>::from_safetensors(b"not a file").is_err());
}

/// The parts of a valid 40 x 100 weight (3 x 2 units, ragged in both directions).
fn parts(seed: u64) -> (Vec<u32>, Vec<u64>, Vec<u16>) {
    let w = Bitmap::encode(&common::random_sparse(40, 100, 0.6, seed), 40, 100).unwrap();
    (
        w.unit_offsets().to_vec(),
        w.masks().to_vec(),
        w.values().to_vec(),
    )
}

/// One way to break valid parts, by what it breaks.
#[derive(Debug, Clone, Copy)]
enum Corruption {
    /// A bit flipped inside the matrix: the unit's values no longer match its offsets.
    FlipBit,
    /// The first bit of a block past the matrix's last row (set in the last unit row).
    PastTheEdge,
    /// A nonzero padding value.
    Padding,
    /// An offset moved by one vector of 8.
    Offset,
    /// The first offset not 0.
    FirstOffset,
    /// A value more or fewer than the offsets say.
    ValuesLength,
    /// A mask more or fewer.
    MasksLength,
}

fn corrupt(corruption: Corruption, choice: usize, seed: u64) -> (Vec<u32>, Vec<u64>, Vec<u16>) {
    let (mut offsets, mut masks, mut values) = parts(seed);
    match corruption {
        Corruption::FlipBit => {
            let at = choice % masks.len();
            masks[at] ^= 1 << (choice % 64);
        }
        Corruption::PastTheEdge => {
            // Units of the last row (rows 32..40): blocks rows 8..15 lie past row 39.
            let unit = 4 + choice % 2;
            masks[unit * 16 + 1] |= 1;
        }
        Corruption::Padding => {
            let unit = (0..6)
                .find(|&u| {
                    let ones: u32 = masks[u * 16..(u + 1) * 16]
                        .iter()
                        .map(|m| m.count_ones())
                        .sum();
                    !ones.is_multiple_of(8)
                })
                .expect("a unit with padding");
            values[offsets[unit + 1] as usize - 1] = 0x3c00;
        }
        Corruption::Offset => offsets[1 + choice % 5] += 8,
        Corruption::FirstOffset => offsets[0] = 8,
        Corruption::ValuesLength => {
            if choice.is_multiple_of(2) {
                values.pop();
            } else {
                values.push(0);
            }
        }
        Corruption::MasksLength => {
            if choice.is_multiple_of(2) {
                masks.pop();
            } else {
                masks.push(0);
            }
        }
    }
    (offsets, masks, values)
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        Just(Corruption::FlipBit),
        Just(Corruption::PastTheEdge),
        Just(Corruption::Padding),
        Just(Corruption::Offset),
        Just(Corruption::FirstOffset),
        Just(Corruption::ValuesLength),
        Just(Corruption::MasksLength),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every corruption of valid parts is a typed error, never a weight or a panic.
    #[test]
    fn corrupted_parts_are_errors(
        corruption in corruption(),
        choice in any::<usize>(),
        seed in any::<u64>(),
    ) {
        let (offsets, masks, values) = corrupt(corruption, choice, seed);
        let built = Bitmap::<f16>::from_parts(40, 100, offsets, masks, values);
        prop_assert!(
            matches!(built, Err(Error::InvalidArgument { .. } | Error::Length { .. })),
            "{corruption:?}: {built:?}"
        );
    }

    /// Arbitrary parts and sizes never panic: an error or a weight that decodes.
    #[test]
    fn arbitrary_parts_never_panic(
        (m, k) in (common::any_size(), common::any_size()),
        offsets in proptest::collection::vec(any::<u32>(), 0..8),
        masks in proptest::collection::vec(any::<u64>(), 0..40),
        values in proptest::collection::vec(any::<u16>(), 0..80),
    ) {
        if let Ok(w) = Bitmap::<f16>::from_parts(m, k, offsets, masks, values) {
            prop_assert_eq!(w.decode().len(), m * k);
        }
    }
}
