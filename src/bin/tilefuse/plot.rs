//! The roofline picture of a benchmark run: every case as a point of achieved bandwidth
//! (memory-bound ops) under the device's measured copy bandwidth, and, for attention, of
//! TFLOP/s under the measured Tensor-Core rate (the `peak` entry; the best rate in the run
//! when it was not measured); peers from the same run beside.

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
    RGBColor(127, 127, 127),
];

/// Draws `records` into an SVG at `path`.
pub fn roofline(records: &[BenchRecord], path: &Path) -> Result<(), String> {
    let memory: Vec<&BenchRecord> = records
        .iter()
        .filter(|r| r.op != "copy" && r.op != "peak" && r.op != "attention" && r.bytes > 0)
        .collect();
    let compute: Vec<&BenchRecord> = records
        .iter()
        .filter(|r| r.op == "attention" && r.flops > 0)
        .collect();
    let panels = usize::from(!memory.is_empty()) + usize::from(!compute.is_empty());
    if panels == 0 {
        return Err("--plot: no benchmark records with bytes or FLOPs to draw".into());
    }
    let root = SVGBackend::new(path, (1400, 560 * panels as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((panels, 1));
    let mut areas = areas.iter();
    if !memory.is_empty() {
        let roofs: Vec<(String, f64)> = ["cuda", "wgpu"]
            .iter()
            .filter_map(|&backend| {
                let copy = records
                    .iter()
                    .filter(|r| r.op == "copy" && r.backend == backend);
                let best = copy.map(BenchRecord::gbps).fold(f64::NAN, f64::max);
                best.is_finite()
                    .then(|| (format!("device copy ({backend})"), best))
            })
            .collect();
        let area = areas.next().expect("one area per panel");
        panel(
            area,
            "achieved bandwidth, GB/s (memory-bound cases)",
            &memory,
            BenchRecord::gbps,
            &roofs,
        )?;
    }
    if !compute.is_empty() {
        let peak = records
            .iter()
            .filter(|r| r.op == "peak" && r.backend == "cuda")
            .map(BenchRecord::tflops)
            .fold(f64::NAN, f64::max);
        let roofs = if peak.is_finite() {
            [("mma.sync f16 peak (cuda)".to_string(), peak)]
        } else {
            let best = compute.iter().map(|r| r.tflops()).fold(0.0, f64::max);
            [("best measured in this run".to_string(), best)]
        };
        let area = areas.next().expect("one area per panel");
        panel(
            area,
            "TFLOP/s on computed blocks (attention)",
            &compute,
            BenchRecord::tflops,
            &roofs,
        )?;
    }
    root.present()
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    records: &[&BenchRecord],
    value: fn(&BenchRecord) -> f64,
    roofs: &[(String, f64)],
) -> Result<(), String> {
    let cases: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.op.clone(), r.case.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let top = records
        .iter()
        .map(|r| value(r))
        .chain(roofs.iter().map(|r| r.1))
        .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..cases.len() as f64 - 0.5, 0.0..top.max(1e-9))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "case (0 = {}, ..., by op and case name)",
            cases
                .first()
                .map_or("-".into(), |c| format!("{} {}", c.0, c.1))
        ))
        .x_labels(cases.len().min(40))
        .x_label_formatter(&|x| format!("{:.0}", x))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (label, roof)) in roofs.iter().enumerate() {
        let color = COLORS[(COLORS.len() - 1 - i) % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                [(-0.5, *roof), (cases.len() as f64 - 0.5, *roof)],
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(format!("{label}: {roof:.1}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    let series: BTreeSet<(String, String)> = records
        .iter()
        .map(|r| (r.implementation.clone(), r.backend.clone()))
        .collect();
    for (i, (implementation, backend)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = records
            .iter()
            .filter(|r| &r.implementation == implementation && &r.backend == backend)
            .map(|r| {
                let x = cases
                    .iter()
                    .position(|c| c.0 == r.op && c.1 == r.case)
                    .unwrap_or(0) as f64;
                Circle::new((x, value(r)), 4, color.filled())
            });
        chart
            .draw_series(points)
            .map_err(|e| e.to_string())?
            .label(format!("{implementation} ({backend})"))
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}
