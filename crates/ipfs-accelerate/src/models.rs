//! `ipfs-accelerate models [list|classify]`

use anyhow::Context;
use ia_models::{checkpoint::Checkpoint, classify_config, CATALOG};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Option<ModelsCommand>,
    /// Print JSON
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum ModelsCommand {
    /// List the catalog (the default)
    List,
    /// Map a checkpoint folder or config.json to its class, family and task
    Classify {
        /// A checkpoint folder or a config.json file
        path: PathBuf,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command.unwrap_or(ModelsCommand::List) {
        ModelsCommand::List => list(args.json),
        ModelsCommand::Classify { path } => classify(&path, args.json),
    }
}

fn list(json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(CATALOG)?);
        return Ok(());
    }
    println!(
        "{:<11} {:<34} {:<11} {:<16} {:<31} {:<11} SMALL VARIANT",
        "KEY", "HF ID", "CLASS", "FAMILY", "TASK", "MODALITY"
    );
    for e in CATALOG {
        println!(
            "{:<11} {:<34} {:<11} {:<16} {:<31} {:<11} {}",
            e.key,
            e.hf_id,
            e.class.as_str(),
            e.family,
            e.task,
            e.modality.as_str(),
            e.small_hf_id
        );
    }
    Ok(())
}

fn classify(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!("{}: no such file or folder", path.display());
    }
    let ckpt = Checkpoint::open(path)?;
    let c = classify_config(&ckpt.config)
        .with_context(|| format!("{}", ckpt.dir.join("config.json").display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        println!(
            "model_type={} architecture={} class={} family={} task={} modality={}",
            c.model_type,
            c.architecture.as_deref().unwrap_or("-"),
            c.class.as_str(),
            c.family,
            c.task,
            c.modality.as_str()
        );
    }
    Ok(())
}
