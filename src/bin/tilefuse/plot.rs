//! The roofline picture of a benchmark run: every case of every implementation as a point of
//! arithmetic intensity (FLOP per byte moved) and achieved TFLOP/s, on log-log axes, under the
//! roofs measured in the same run: the device copy bandwidth of each backend (a line of slope
//! one) and the `mma.sync` f16 rate (the `peak` entry, CUDA). Each point is labelled with its
//! op and case; each implementation (and backend) has its own colour, so tilefuse and its
//! peers sit side by side.

use std::collections::BTreeSet;
use std::path::Path;

use plotters::prelude::*;
use tilefuse::harness::BenchRecord;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const ROOF: RGBColor = RGBColor(90, 90, 90);

/// A roof: a backend's copy bandwidth (GB/s), capped by its compute rate where the run
/// measured one, or that compute rate (TFLOP/s) from the ridge on.
enum Roof {
    Bandwidth {
        label: String,
        gbps: f64,
        cap: Option<f64>,
    },
    Compute {
        label: String,
        tflops: f64,
        ridge: f64,
    },
}

impl Roof {
    fn label(&self) -> &str {
        match self {
            Roof::Bandwidth { label, .. } | Roof::Compute { label, .. } => label,
        }
    }

    /// TFLOP/s the roof allows at `intensity` FLOP per byte (None left of a compute roof's
    /// ridge).
    fn at(&self, intensity: f64) -> Option<f64> {
        match self {
            Roof::Bandwidth { gbps, cap, .. } => {
                Some((gbps * intensity / 1e3).min(cap.unwrap_or(f64::INFINITY)))
            }
            Roof::Compute { tflops, ridge, .. } => (intensity >= *ridge).then_some(*tflops),
        }
    }
}

/// The records drawn as points: those that do work and move bytes, and are not roofs.
fn points(records: &[BenchRecord]) -> Vec<&BenchRecord> {
    records
        .iter()
        .filter(|r| r.op != "copy" && r.op != "peak" && r.bytes > 0 && r.flops > 0)
        .filter(|r| r.tflops().is_finite() && r.tflops() > 0.0)
        .collect()
}

/// The roofs of the run: each backend's best copy bandwidth, and the CUDA mma.sync rate.
fn roofs(records: &[BenchRecord]) -> Vec<Roof> {
    let best = |op: &str, backend: &str, value: fn(&BenchRecord) -> f64| {
        let values = records
            .iter()
            .filter(|r| r.op == op && r.backend == backend)
            .map(value);
        Some(values.fold(f64::NAN, f64::max)).filter(|v| v.is_finite() && *v > 0.0)
    };
    let peak = best("peak", "cuda", BenchRecord::tflops);
    let cuda_copy = best("copy", "cuda", BenchRecord::gbps);
    let mut roofs: Vec<Roof> = ["cuda", "wgpu"]
        .iter()
        .filter_map(|&backend| {
            let gbps = best("copy", backend, BenchRecord::gbps)?;
            Some(Roof::Bandwidth {
                label: format!("device copy ({backend}): {gbps:.0} GB/s"),
                gbps,
                cap: peak.filter(|_| backend == "cuda"),
            })
        })
        .collect();
    if let Some(tflops) = peak {
        roofs.push(Roof::Compute {
            label: format!("mma.sync f16 peak (cuda): {tflops:.0} TFLOP/s"),
            tflops,
            ridge: cuda_copy.map_or(0.0, |gbps| tflops * 1e3 / gbps),
        });
    }
    roofs
}

/// Pixel offsets that keep labels apart: each label goes down from its point, in steps of a
/// line, until no label placed before it is within a line's height and `width` pixels.
fn spread_labels(anchors: &[(i32, i32)], width: i32, line: i32) -> Vec<i32> {
    let mut placed: Vec<(i32, i32)> = Vec::new();
    anchors
        .iter()
        .map(|&(x, y)| {
            let mut dy = 0;
            while placed
                .iter()
                .any(|&(px, py)| (px - x).abs() < width && (py - (y + dy)).abs() < line)
            {
                dy += line;
            }
            placed.push((x, y + dy));
            dy
        })
        .collect()
}

/// Draws `records` into an SVG at `path`.
pub fn roofline(records: &[BenchRecord], path: &Path) -> Result<(), String> {
    let points = points(records);
    if points.is_empty() {
        return Err("--plot: no benchmark records with both bytes and FLOPs to draw".into());
    }
    let roofs = roofs(records);
    let intensities = points.iter().map(|r| r.flops as f64 / r.bytes as f64);
    let (lo, hi) = intensities.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    // Room on the right for the labels of the rightmost points.
    let (x_lo, x_hi) = (lo / 4.0, hi * 16.0);
    let rates = points.iter().map(|r| r.tflops());
    let roof_rates = roofs
        .iter()
        .flat_map(|roof| [roof.at(x_lo), roof.at(x_hi)].into_iter().flatten());
    let (y_lo, y_hi) = rates
        .clone()
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let y_hi = roof_rates.fold(y_hi, f64::max) * 2.0;
    let y_lo = y_lo / 4.0;

    let root = SVGBackend::new(path, (1600, 1000)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "roofline: achieved TFLOP/s against FLOP per byte",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity, FLOP per byte moved (log)")
        .y_desc("TFLOP/s at the median time (log)")
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, roof) in roofs.iter().enumerate() {
        let style = match roof {
            Roof::Bandwidth { .. } => ROOF.stroke_width(2),
            Roof::Compute { .. } => BLACK.stroke_width(2),
        };
        let steps = 256;
        let line = (0..=steps).filter_map(|s| {
            let x = x_lo * (x_hi / x_lo).powf(f64::from(s) / f64::from(steps));
            Some((x, roof.at(x)?.min(y_hi)))
        });
        let dash = if i % 2 == 0 { 0 } else { 6 };
        chart
            .draw_series(DashedLineSeries::new(line, 10 - dash, dash.max(1), style))
            .map_err(|e| fail(&e))?
            .label(roof.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    let series: Vec<(String, String)> = points
        .iter()
        .map(|r| (r.implementation.clone(), r.backend.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let color_of = |r: &BenchRecord| {
        let i = series
            .iter()
            .position(|(implementation, backend)| {
                implementation == &r.implementation && backend == &r.backend
            })
            .unwrap_or(0);
        COLORS[i % COLORS.len()]
    };
    let at = |r: &BenchRecord| (r.flops as f64 / r.bytes as f64, r.tflops());
    for (implementation, backend) in &series {
        let mine = points
            .iter()
            .filter(|r| &r.implementation == implementation && &r.backend == backend);
        let color = color_of(mine.clone().next().expect("a series has points"));
        chart
            .draw_series(mine.map(|r| Circle::new(at(r), 4, color.filled())))
            .map_err(|e| fail(&e))?
            .label(format!("{implementation} ({backend})"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    let anchors: Vec<(i32, i32)> = points.iter().map(|r| chart.backend_coord(&at(r))).collect();
    let offsets = spread_labels(&anchors, 220, 11);
    chart
        .draw_series(points.iter().zip(offsets).map(|(r, dy)| {
            let color = color_of(r);
            let font = ("sans-serif", 10).into_font().color(&color);
            // A leader from the point to a label pushed down by its neighbours.
            let leader = PathElement::new(vec![(0, 0), (6, dy)], color.mix(0.5));
            EmptyElement::at(at(r))
                + leader
                + Text::new(format!("{} {}", r.op, r.case), (7, dy - 4), font)
        }))
        .map_err(|e| fail(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        op: &str,
        case: &str,
        implementation: &str,
        us: f64,
        bytes: u64,
        flops: u64,
    ) -> BenchRecord {
        BenchRecord {
            op: op.into(),
            case: case.into(),
            backend: "cuda".into(),
            implementation: implementation.into(),
            device: "test".into(),
            median_us: us,
            min_us: us,
            samples: 10,
            bytes,
            flops,
        }
    }

    /// The picture is an SVG document that names every drawn case (op and case), every
    /// implementation and every roof, and leaves out what has no FLOPs or bytes.
    #[test]
    fn the_picture_labels_every_point_and_roof() {
        let records = [
            record("copy", "1 GiB", "tilefuse", 400.0, 1 << 30, 0),
            record("peak", "mma.sync", "tilefuse", 100.0, 0, 60_000_000_000),
            record(
                "spmm",
                "m=8192 k=8192 n=16 s=80%",
                "tilefuse",
                22.0,
                54_000_000,
                2_147_483_648,
            ),
            record(
                "spmm",
                "m=8192 k=8192 n=16 s=80%",
                "cublas",
                49.0,
                134_000_000,
                2_147_483_648,
            ),
            record(
                "scan",
                "c64 b=16 t=8192 p=256 resets=1%",
                "tilefuse",
                300.0,
                537_000_000,
                268_435_456,
            ),
            record(
                "scan",
                "c64 b=16 t=8192 p=256 resets=1%",
                "jax-associative-scan",
                1500.0,
                537_000_000,
                268_435_456,
            ),
            record(
                "attention",
                "b=1 hq=32 d=128 l=8192 causal",
                "sdpa-flash",
                3000.0,
                268_435_456,
                1_100_000_000_000,
            ),
        ];
        let dir = std::env::temp_dir().join(format!("tilefuse-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roofline.svg");
        roofline(&records, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let document = roxmltree::Document::parse(&svg).expect("the picture is well-formed XML");
        assert_eq!(document.root_element().tag_name().name(), "svg");
        let texts: Vec<&str> = document
            .descendants()
            .filter_map(|node| node.text())
            .collect();
        let has = |wanted: &str| texts.iter().any(|t| t.contains(wanted));
        for r in records.iter().filter(|r| r.op != "copy" && r.op != "peak") {
            let label = format!("{} {}", r.op, r.case);
            assert!(has(&label), "no label {label:?} in the picture");
            assert!(
                has(&format!("{} (cuda)", r.implementation)),
                "no legend for {}",
                r.implementation
            );
        }
        assert!(
            has("device copy (cuda)") && has("mma.sync f16 peak (cuda)"),
            "roofs"
        );
        assert!(
            !has("copy 1 GiB") && !has("peak mma.sync"),
            "roofs drawn as points"
        );
        assert!(has("FLOP per byte"), "axis");
    }

    /// Records with nothing to draw are an error, not an empty picture.
    #[test]
    fn nothing_to_draw_is_an_error() {
        let path = std::env::temp_dir().join("tilefuse-plot-never-written.svg");
        let error = roofline(&[record("copy", "1 GiB", "tilefuse", 1.0, 1, 0)], &path).unwrap_err();
        assert!(error.contains("no benchmark records"), "{error}");
        assert!(!path.exists());
    }
}
