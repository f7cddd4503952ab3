//! `ocellus replay DIR`: a recording's frames through the pipeline, every frame's results compared with
//! the recorded ones: identical or not (and why not); top-1 agreement, embedding cosine, score differences
//! per prompt and the frames whose decision changed; as text, JSON (`--json`) and an SVG (`--plot`).

use std::fmt::Write as _;
use std::path::PathBuf;

use ocellus::recorder::compare::Comparison;
use ocellus::recorder::Recording;

use super::bench::svg::{escape, nice_step};
use super::{init_logging, load_config, Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The recording's directory (holds recording.json).
    pub dir: PathBuf,
    /// Configuration file (TOML): the model, variant and prompts to replay with. Its cameras must match the
    /// recording's; without it, the built-in default's model with the recording's cameras.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Write the comparison as JSON to this file (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG of the embedding cosine and the changed decisions over time.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Exit 1 unless every frame's results are bit-identical to the recorded ones.
    #[arg(long)]
    pub require_identical: bool,
}

pub fn replay(args: ReplayArgs, v: Verbosity) -> Result<(), Failure> {
    let config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    let recording = Recording::open(&args.dir).map_err(Failure::config)?;
    let interrupt = super::run::interrupt_flag()?;
    let c = ocellus::runtime::replay(&recording, &config, args.config.is_some(), &interrupt)?;
    print!("{}", report(&recording, &c));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&c)
            .map_err(|e| Failure::runtime(format!("cannot encode the comparison: {e}")))?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&recording, &c))
            .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))?;
    }
    if args.require_identical && !c.identical {
        return Err(Failure::runtime(format!(
            "the replay's results differ from the recording's (--require-identical): {}",
            c.why_not_identical.join("; ")
        )));
    }
    Ok(())
}

fn model_line(m: &ocellus::recorder::ModelIdentity) -> String {
    format!(
        "{} {} ({}, {} thread{}, {})",
        m.name,
        m.variant,
        m.engine,
        m.threads,
        if m.threads == 1 { "" } else { "s" },
        m.cpu
    )
}

/// The text report.
fn report(recording: &Recording, c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "replayed {} frames of {} ({} camera{})",
        c.frames,
        recording.dir.display(),
        c.cameras.len(),
        if c.cameras.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(s, "recorded with {}", model_line(&c.recorded_model));
    let _ = writeln!(s, "replayed with {}", model_line(&c.replayed_model));
    if c.identical {
        let _ = writeln!(
            s,
            "identical: every frame's embedding, latents and scores are bit-identical to the recording's"
        );
    } else {
        let _ = writeln!(
            s,
            "not identical: embeddings bit-identical in {} of {} frames, latents {}, scores {} of {} scored against the same labels",
            c.bit_exact.embeddings, c.frames, c.bit_exact.latents, c.bit_exact.scores, c.bit_exact.scores_compared
        );
        for why in &c.why_not_identical {
            let _ = writeln!(s, "  because {why}");
        }
    }
    if let Some(a) = c.top1_agreement {
        let _ = writeln!(
            s,
            "top-1 agreement {:.4} ({} of {} frames kept their top prompt)",
            a,
            c.top1_compared - c.changed.len(),
            c.top1_compared
        );
    }
    if let Some(e) = c.embedding_cosine {
        let _ = writeln!(
            s,
            "embedding cosine min {:.6} mean {:.6}; largest element difference {:.3e}",
            e.min, e.mean, c.embedding_max_abs
        );
    }
    if let Some(worst) = c
        .score_differences
        .iter()
        .max_by(|a, b| a.max_abs.total_cmp(&b.max_abs))
    {
        let _ = writeln!(
            s,
            "scores: largest |difference| {:.4} ('{}'); per prompt in the JSON report",
            worst.max_abs, worst.label
        );
    }
    if let Some(acc) = c.accuracy {
        let _ = writeln!(
            s,
            "top prompt = ground truth: recorded {:.4}, replayed {:.4} ({} labelled frames)",
            acc.recorded, acc.replayed, acc.labelled
        );
    }
    for ch in c.changed.iter().take(20) {
        let _ = writeln!(
            s,
            "changed: camera {} frame {} (seq {}): '{}' {:.3} -> '{}' {:.3}{}",
            ch.camera,
            ch.frame,
            ch.sequence,
            ch.recorded_top,
            ch.recorded_score,
            ch.replayed_top,
            ch.replayed_score,
            ch.truth
                .as_ref()
                .map(|t| format!(" (truth '{t}')"))
                .unwrap_or_default()
        );
    }
    if c.changed.len() > 20 {
        let _ = writeln!(s, "... {} more in the JSON report", c.changed.len() - 20);
    }
    s
}

const W: f64 = 860.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 70.0;
const PANEL: f64 = 150.0;
const GAP: f64 = 50.0;

/// The picture: per camera, the embedding cosine of every frame over its capture time, and a red bar at
/// every frame whose top prompt changed.
fn plot(recording: &Recording, c: &Comparison) -> String {
    let height = TOP + (PANEL + GAP) * c.cameras.len().max(1) as f64 + 20.0;
    let plot_w = W - LEFT - RIGHT;
    let mut s = String::new();
    let title = format!(
        "replay of {}: {} -> {}",
        recording
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        c.recorded_model.variant,
        c.replayed_model.variant
    );
    let subtitle = match (c.identical, c.top1_agreement) {
        (true, _) => format!("{} frames, bit-identical", c.frames),
        (false, Some(a)) => format!(
            "{} frames, top-1 agreement {:.4}, {} changed decisions (red)",
            c.frames,
            a,
            c.changed.len()
        ),
        (false, None) => format!("{} frames, not identical", c.frames),
    };
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{W}" height="{height}" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>
<text x="{LEFT}" y="42" fill="#555">{}</text>"##,
        escape(&title),
        escape(&subtitle)
    );
    for (k, cam) in c.cameras.iter().enumerate() {
        let top = TOP + k as f64 * (PANEL + GAP);
        let t0 = cam.timeline.first().map_or(0, |t| t.0);
        let span = cam
            .timeline
            .last()
            .map_or(0.0, |t| t.0.saturating_sub(t0) as f64 / 1e9)
            .max(1e-3);
        let lo = cam
            .timeline
            .iter()
            .map(|t| t.1)
            .fold(1.0f64, f64::min)
            .min(0.999);
        let x_of = |ns: u64| LEFT + (ns.saturating_sub(t0) as f64 / 1e9) / span * plot_w;
        let y_of = |cos: f64| top + (1.0 - cos) / (1.0 - lo) * PANEL;
        let _ = writeln!(
            s,
            r##"<g id="camera-{k}"><text x="{LEFT}" y="{:.1}" font-weight="bold">camera {k} ({}): embedding cosine, recorded vs replayed</text>
<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{PANEL}" fill="none" stroke="#999"/>"##,
            top - 8.0,
            escape(&cam.name)
        );
        for &(ns, _, flipped) in &cam.timeline {
            if flipped {
                let x = x_of(ns);
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{:.1}" stroke="#d62728" stroke-width="2"/>"##,
                    top + PANEL
                );
            }
        }
        let points: Vec<String> = cam
            .timeline
            .iter()
            .map(|&(ns, cos, _)| format!("{:.1},{:.1}", x_of(ns), y_of(cos)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
            points.join(" ")
        );
        for (label, cos) in [(format!("{lo:.4}"), lo), ("1".to_string(), 1.0)] {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{label}</text>"##,
                LEFT - 6.0,
                y_of(cos) + 4.0
            );
        }
        let step = nice_step(span / 8.0);
        let mut t = 0.0;
        while t <= span + 1e-9 {
            let x = LEFT + t / span * plot_w;
            let _ = writeln!(
                s,
                r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{t:.1} s</text>"##,
                top + PANEL + 16.0
            );
            t += step;
        }
        let _ = writeln!(s, "</g>");
    }
    s.push_str("</svg>\n");
    s
}
