//! Benchmark JSON (the schema `tilefuse bench --json` writes and the GPU bundle's peer
//! script writes too) and the side-by-side summary of several such files.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use tilefuse::harness::BenchRecord;

use crate::table::Table;

pub const SCHEMA: &str = "tilefuse-bench/1";

/// The JSON document for `records`.
pub fn to_json(records: &[BenchRecord], devices: &BTreeMap<String, String>) -> Value {
    let results: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "op": r.op, "case": r.case, "backend": r.backend,
                "implementation": r.implementation, "device": r.device,
                "median_us": r.median_us, "min_us": r.min_us, "samples": r.samples,
                "bytes": r.bytes, "flops": r.flops, "gbps": r.gbps(), "tflops": r.tflops(),
            })
        })
        .collect();
    json!({
        "schema": SCHEMA,
        "tool": concat!("tilefuse ", env!("CARGO_PKG_VERSION")),
        "devices": devices,
        "results": results,
    })
}

/// Reads the records of one JSON file, checking its schema.
pub fn read(path: &Path) -> Result<Vec<BenchRecord>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    if doc["schema"] != SCHEMA {
        return Err(format!(
            "{}: expected schema {SCHEMA:?}, got {}",
            path.display(),
            doc["schema"]
        ));
    }
    let results = doc["results"]
        .as_array()
        .ok_or_else(|| format!("{}: no \"results\" array", path.display()))?;
    results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            record(r)
                .ok_or_else(|| format!("{}: result {i} is missing a field: {r}", path.display()))
        })
        .collect()
}

fn record(r: &Value) -> Option<BenchRecord> {
    let text = |key: &str| r[key].as_str().map(str::to_string);
    Some(BenchRecord {
        op: text("op")?,
        case: text("case")?,
        backend: text("backend")?,
        implementation: text("implementation")?,
        device: text("device").unwrap_or_default(),
        median_us: r["median_us"].as_f64()?,
        min_us: r["min_us"].as_f64().unwrap_or(f64::NAN),
        samples: r["samples"].as_u64().unwrap_or(0) as usize,
        bytes: r["bytes"].as_u64().unwrap_or(0),
        flops: r["flops"].as_u64().unwrap_or(0),
    })
}

/// One table over all records, grouped by op and case. `vs tilefuse` is the time of the row
/// over the time of tilefuse on CUDA (or, without it, on the row's own backend) for the same
/// case: above 1 means slower than tilefuse. `% copy` is the row's bandwidth over the copy
/// bandwidth measured on the same backend (by the same implementation where it has one);
/// `% mma peak` the TFLOP/s of a CUDA attention row over the `peak` entry's mma.sync rate.
pub fn summary(records: &[BenchRecord]) -> String {
    summary_table(records).render()
}

/// The table of [`summary`].
pub fn summary_table(records: &[BenchRecord]) -> Table {
    let mut groups: BTreeMap<(&str, &str), Vec<&BenchRecord>> = BTreeMap::new();
    for r in records {
        groups.entry((&r.op, &r.case)).or_default().push(r);
    }
    let copy_gbps = |r: &BenchRecord| {
        let copies = || {
            records
                .iter()
                .filter(|c| c.op == "copy" && c.backend == r.backend)
        };
        let mut same = copies().filter(|c| c.implementation == r.implementation);
        let mut ours = copies().filter(|c| c.implementation == "tilefuse");
        same.next().or_else(|| ours.next()).map(BenchRecord::gbps)
    };
    let mma_peak = records
        .iter()
        .filter(|r| r.op == "peak" && r.backend == "cuda" && r.flops > 0)
        .map(BenchRecord::tflops)
        .reduce(f64::max);
    let mut table = Table::new([
        "op",
        "case",
        "implementation",
        "backend",
        "median µs",
        "GB/s",
        "TFLOP/s",
        "% copy",
        "% mma peak",
        "vs tilefuse",
    ]);
    for ((op, case), mut rows) in groups {
        rows.sort_by(|a, b| a.median_us.total_cmp(&b.median_us));
        let ours = |backend: &str| {
            rows.iter()
                .find(|r| r.implementation == "tilefuse" && r.backend == backend)
                .copied()
        };
        for r in &rows {
            let base = ours("cuda").or_else(|| ours(&r.backend));
            table.row([
                op.to_string(),
                case.to_string(),
                r.implementation.clone(),
                r.backend.clone(),
                format!("{:.1}", r.median_us),
                number(r.bytes > 0, r.gbps(), 1),
                number(r.flops > 0, r.tflops(), 2),
                match copy_gbps(r) {
                    Some(copy) if r.bytes > 0 && op != "copy" => {
                        format!("{:.0}%", 100.0 * r.gbps() / copy)
                    }
                    _ => "-".into(),
                },
                match mma_peak {
                    Some(peak) if r.flops > 0 && op == "attention" && r.backend == "cuda" => {
                        format!("{:.0}%", 100.0 * r.tflops() / peak)
                    }
                    _ => "-".into(),
                },
                base.map_or("-".into(), |b| format!("{:.2}x", r.median_us / b.median_us)),
            ]);
        }
    }
    table
}

fn number(present: bool, value: f64, decimals: usize) -> String {
    if present {
        format!("{value:.decimals$}")
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: &str, implementation: &str, median_us: f64, bytes: u64) -> BenchRecord {
        BenchRecord {
            op: op.into(),
            case: "c".into(),
            backend: "cuda".into(),
            implementation: implementation.into(),
            device: "gpu".into(),
            median_us,
            min_us: median_us,
            samples: 1,
            bytes,
            flops: 0,
        }
    }

    #[test]
    fn json_round_trip() {
        let records = vec![
            record("copy", "tilefuse", 10.0, 1000),
            record("scan", "jax", 20.0, 500),
        ];
        let doc = to_json(&records, &BTreeMap::new());
        let dir = std::env::temp_dir().join(format!("tilefuse-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bench.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        assert_eq!(read(&path).unwrap(), records);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn summary_compares_with_tilefuse_and_copy() {
        let records = vec![
            record("copy", "tilefuse", 10.0, 1000),
            record("scan", "tilefuse", 20.0, 1000),
            record("scan", "jax", 80.0, 1000),
        ];
        let text = summary(&records);
        let jax = text.lines().find(|l| l.contains("jax")).unwrap();
        assert!(jax.contains("4.00x"), "{text}");
        let ours = text
            .lines()
            .find(|l| l.starts_with("scan") && l.contains("tilefuse"))
            .unwrap();
        assert!(ours.contains("50%") && ours.contains("1.00x"), "{text}");
    }

    #[test]
    fn attention_rows_show_their_share_of_the_measured_mma_peak() {
        let with_flops = |op: &str, implementation: &str, us: f64, flops: u64| BenchRecord {
            flops,
            ..record(op, implementation, us, 0)
        };
        let records = vec![
            with_flops("peak", "tilefuse", 1.0, 400_000_000),
            with_flops("attention", "tilefuse", 1.0, 100_000_000),
            with_flops("attention", "flex_attention", 0.5, 100_000_000),
            with_flops("smoke", "tilefuse", 1.0, 100_000_000),
        ];
        let text = summary(&records);
        let row = |op: &str, implementation: &str| {
            let mut rows = text.lines().filter(|l| l.starts_with(op));
            rows.find(|l| l.contains(implementation))
                .unwrap()
                .to_string()
        };
        assert!(row("attention", "tilefuse").contains("25%"), "{text}");
        assert!(row("attention", "flex_attention").contains("50%"), "{text}");
        assert!(!row("peak", "tilefuse").contains('%'), "{text}");
        assert!(!row("smoke", "tilefuse").contains('%'), "{text}");
    }
}
