//! `bertkit plot RUN_DIR`: a pretraining or fine-tuning run's curves as an SVG.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bertkit_train::logger::METRICS_FILE;
use bertkit_train::plot;
use clap::Args;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// A run folder (with metrics.jsonl), or a metrics.jsonl file.
    pub run: PathBuf,
    /// The SVG to write [default: RUN_DIR/curves.svg].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &PlotArgs) -> Result<()> {
    let (dir, file) = if args.run.is_dir() {
        (args.run.clone(), args.run.join(METRICS_FILE))
    } else {
        let dir = args.run.parent().map(PathBuf::from).unwrap_or_default();
        (dir, args.run.clone())
    };
    let panels = plot::read_panels(&file).with_context(|| {
        format!(
            "(metrics.jsonl is written with --report-to jsonl, the default) {}",
            file.display()
        )
    })?;
    let title = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let out = args.out.clone().unwrap_or_else(|| dir.join("curves.svg"));
    bertkit_model::fs::write_atomic(&out, plot::svg(&title, &panels).as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    let series: usize = panels.values().map(|p| p.len()).sum();
    println!(
        "{series} curves of {} written to {}",
        file.display(),
        out.display()
    );
    Ok(())
}
