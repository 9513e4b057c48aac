//! `bertkit plot RUN_DIR`: the curves of a run's `metrics.jsonl` as one SVG, for users without
//! TensorBoard. One panel per split (`train`: the loss; `eval`: every metric), each series a
//! line against the step, with axes, ticks, a legend and the values' range. Plain SVG text: any
//! browser shows it, no fonts or plotting library needed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Series of one panel: name -> (step, value) points in step order.
pub type Panel = BTreeMap<String, Vec<(f64, f64)>>;

/// Values of a record that are bookkeeping, not curves.
const NOT_CURVES: [&str; 2] = ["step", "split"];
/// Train values plotted (the rest of a train record, e.g. lr or throughput, is left out).
const TRAIN_CURVES: [&str; 1] = ["loss"];

/// The panels of `metrics.jsonl` (split name -> series); errors name the file and line.
pub fn read_panels(path: &Path) -> Result<BTreeMap<String, Panel>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut panels: BTreeMap<String, Panel> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))?;
        let step = record["step"]
            .as_f64()
            .with_context(|| format!("{}: line {}: no \"step\"", path.display(), i + 1))?;
        let split = record["split"].as_str().unwrap_or("train").to_string();
        let Some(fields) = record.as_object() else {
            continue;
        };
        for (name, value) in fields {
            let keep = !NOT_CURVES.contains(&name.as_str())
                && (split != "train" || TRAIN_CURVES.contains(&name.as_str()))
                && name != "epoch";
            if let (true, Some(v)) = (keep, value.as_f64().filter(|v| v.is_finite())) {
                panels
                    .entry(split.clone())
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .push((step, v));
            }
        }
    }
    if panels.is_empty() {
        bail!("{}: no metrics to plot", path.display());
    }
    for panel in panels.values_mut() {
        for points in panel.values_mut() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    Ok(panels)
}

const WIDTH: f64 = 820.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN: [f64; 4] = [40.0, 250.0, 45.0, 70.0]; // top, right, bottom, left
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Round tick positions covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG of `panels` under `title`.
pub fn svg(title: &str, panels: &BTreeMap<String, Panel>) -> String {
    // train first, then the other splits.
    let mut order: Vec<&String> = panels.keys().collect();
    order.sort_by_key(|k| (k.as_str() != "train", k.as_str()));
    let height = PANEL_HEIGHT * order.len() as f64 + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="15">{}</text>
"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (p, split) in order.iter().enumerate() {
        let panel = &panels[*split];
        let top = 30.0 + PANEL_HEIGHT * p as f64;
        let (x0, x1) = (MARGIN[3], WIDTH - MARGIN[1]);
        let (y0, y1) = (top + MARGIN[0], top + PANEL_HEIGHT - MARGIN[2]);
        let all = panel.values().flatten();
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            (xmin, xmax, ymin, ymax) = (xmin.min(x), xmax.max(x), ymin.min(y), ymax.max(y));
        }
        if xmax <= xmin {
            (xmin, xmax) = (xmin - 1.0, xmax + 1.0);
        }
        if ymax <= ymin {
            (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
        }
        let pad = (ymax - ymin) * 0.05;
        let (ymin, ymax) = (ymin - pad, ymax + pad);
        let sx = |x: f64| x0 + (x - xmin) / (xmax - xmin) * (x1 - x0);
        let sy = |y: f64| y1 - (y - ymin) / (ymax - ymin) * (y1 - y0);
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#,
            y0 - 10.0,
            escape(split)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
            x1 - x0,
            y1 - y0
        );
        for t in ticks(xmin, xmax) {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{y0}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                y1 + 15.0,
                label(t)
            );
        }
        for t in ticks(ymin, ymax) {
            let y = sy(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 5.0,
                y + 4.0,
                label(t)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
            (x0 + x1) / 2.0,
            y1 + 32.0
        );
        for (i, (name, points)) in panel.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let coords: Vec<String> = points
                .iter()
                .map(|&(x, y)| format!("{:.2},{:.2}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline data-series="{}" fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                escape(name),
                coords.join(" ")
            );
            if points.len() == 1 {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.2}" cy="{:.2}" r="3" fill="{color}"/>"#,
                    sx(points[0].0),
                    sy(points[0].1)
                );
            }
            let ly = y0 + 14.0 + 18.0 * i as f64;
            let last = points.last().map(|p| label(p.1)).unwrap_or_default();
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{} ({last})</text>"#,
                x1 + 10.0,
                ly - 4.0,
                x1 + 28.0,
                ly - 4.0,
                x1 + 32.0,
                ly,
                escape(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.31, 0.72);
        assert!(
            t.first().unwrap() >= &0.31 && t.last().unwrap() <= &0.72,
            "{t:?}"
        );
        assert!(t.len() >= 3, "{t:?}");
    }

    #[test]
    fn panels_keep_train_loss_and_every_eval_metric() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"step\":2,\"split\":\"train\",\"loss\":0.5,\"lr\":1e-4}\n\
             {\"step\":1,\"split\":\"train\",\"loss\":0.9,\"lr\":1e-4}\n\
             {\"step\":2,\"split\":\"eval\",\"accuracy\":0.7,\"f1\":0.6,\"epoch\":1}\n",
        )
        .unwrap();
        let panels = read_panels(&path).unwrap();
        assert_eq!(panels["train"]["loss"], vec![(1.0, 0.9), (2.0, 0.5)]);
        assert!(!panels["train"].contains_key("lr"));
        assert_eq!(
            panels["eval"].keys().collect::<Vec<_>>(),
            ["accuracy", "f1"]
        );
        let svg = svg("run <1>", &panels);
        assert!(svg.contains("run &lt;1&gt;") && svg.matches("<polyline").count() == 3);
        std::fs::write(&path, "{\"step\":1,\"loss\":\n").unwrap();
        let err = read_panels(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
