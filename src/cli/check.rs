//! `ocellus check`: validate the configuration and the model bundle without running anything.
//!
//! Every problem found is one line on stderr (`ocellus: ...`) and the exit code is 2; with none, a short
//! report goes to stdout and the exit code is 0. Checks that depend on a failed one are skipped (no model
//! checks without a readable manifest).

use std::path::PathBuf;

use ocellus::budget::MemoryPlan;
use ocellus::config::Config;
use ocellus::infer::{self, Engine};
use ocellus::manifest::Manifest;
use ocellus::prepare::Preparer;
use ocellus::prompts::TextEncoder;
use ocellus::source::SourceError;

use super::{init_logging, load_config, Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Configuration file (TOML); without it, the built-in default.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

pub fn check(args: CheckArgs, v: Verbosity) -> Result<(), Failure> {
    // An unreadable or invalid config stops here: everything else depends on it.
    let config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    let mut problems: Vec<String> = Vec::new();
    let mut ok: Vec<String> = Vec::new();

    check_prompts(&config, &mut problems, &mut ok);
    for (i, cam) in config.cameras.iter().enumerate() {
        match check_source(i, cam) {
            Ok(()) => ok.push(format!(
                "camera[{i}] {}: {} {} {}x{} deliverable",
                cam.name,
                cam.kind(),
                cam.format,
                cam.width,
                cam.height
            )),
            Err(e) => problems.push(format!(
                "config {}: camera[{i}] ({}): {e}",
                config.origin, cam.name
            )),
        }
    }

    let mut plan = None;
    match Manifest::load(&config.model.manifest) {
        Err(e) => problems.push(e.to_string()),
        Ok(manifest) => plan = check_model(&config, &manifest, &mut problems, &mut ok),
    }

    if problems.is_empty() {
        println!("config {}: ok", config.origin);
        for line in ok {
            println!("  ok: {line}");
        }
        if let Some(plan) = plan {
            println!("memory plan:");
            for line in plan.to_string().lines() {
                println!("  {line}");
            }
        }
        Ok(())
    } else {
        Err(Failure::config(problems.join("\n")))
    }
}

fn check_prompts(config: &Config, problems: &mut Vec<String>, ok: &mut Vec<String>) {
    match config.prompts.load(&config.origin) {
        Ok(p) => ok.push(format!("{} prompts", p.len())),
        Err(e) => problems.push(e.to_string()),
    }
}

/// Checks the model against the config; returns the memory plan when the models load.
fn check_model(
    config: &Config,
    manifest: &Manifest,
    problems: &mut Vec<String>,
    ok: &mut Vec<String>,
) -> Option<MemoryPlan> {
    let variant = config.model.variant;
    let estimate = MemoryPlan::estimate(config, manifest, true);
    if let Err(e) = estimate.check() {
        problems.push(e.to_string());
        return None;
    }
    if let Err(e) = infer::verify(manifest, variant) {
        problems.push(e.to_string());
        return None;
    }
    ok.push(format!(
        "model {} ({variant}) at {}: files, sha256 and shapes verified",
        manifest.name,
        config.model.manifest.display()
    ));
    for (i, cam) in config.cameras.iter().enumerate() {
        if let Err(e) = Preparer::new(&manifest.preprocess, cam.format, cam.width, cam.height) {
            problems.push(format!(
                "config {}: camera[{i}] ({}): cannot prepare {} {}x{} frames for the model: {e}",
                config.origin, cam.name, cam.format, cam.width, cam.height
            ));
        }
    }
    let engine = match Engine::load(manifest, variant, config.model.threads) {
        Ok(engine) => {
            ok.push("vision encoder and resampler load and plan".into());
            Some(engine)
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let mut plan = None;
    match TextEncoder::load(manifest, variant) {
        Ok(mut enc) => {
            if let Some(engine) = &engine {
                let p = MemoryPlan::with_engine(
                    config,
                    manifest,
                    true,
                    engine.memory(),
                    Some((enc.files(), enc.memory())),
                );
                match p.check() {
                    Ok(()) => {
                        ok.push(format!(
                            "memory plan fits: {:.1} of {} MiB (budgets.memory-mib)",
                            p.total_bytes() as f64 / (1 << 20) as f64,
                            config.budgets.memory_mib
                        ));
                        plan = Some(p);
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            if let Ok(labels) = config.prompts.load(&config.origin) {
                match enc.embed(&labels) {
                    Ok(set) => ok.push(format!("{} prompts embedded", set.len())),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    plan
}

/// Opens and starts the camera's source (which checks that it can deliver the configured format and size),
/// then stops it.
fn check_source(index: usize, cam: &ocellus::config::CameraConfig) -> Result<(), SourceError> {
    let mut source = ocellus::source::open(index, cam)?;
    source.start()?;
    source.stop();
    Ok(())
}
