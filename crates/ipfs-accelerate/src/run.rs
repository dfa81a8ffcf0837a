//! `ipfs-accelerate run`: one input through one model, the task's result printed.

use crate::target::{Engines, ModelOnTarget};
use ia_engine::TranscribeOptions;
use ia_tasks::{Input, Pipeline, TaskOptions, TaskOutput};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: ModelOnTarget,
    /// Text, or a PNG/JPEG image or WAV file (repeat for several; texts for an embedding
    /// model run as one padded batch, as sentence-transformers' encode does)
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Candidate labels for zero-shot classification (CLIP images, CLAP audio), comma-separated
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Zero-shot prompt; {} is replaced by each label [default: "This is a photo of {}." for
    /// images, "This is a sound of {}." for audio]
    #[arg(long)]
    hypothesis_template: Option<String>,
    /// Minimum score of a reported detection (DETR)
    #[arg(long, default_value_t = 0.5, value_parser = crate::limits::unit_interval)]
    threshold: f32,
    /// Labels to print for classifiers
    #[arg(long, default_value_t = 5, value_parser = crate::limits::count(crate::limits::TOP_K))]
    top_k: usize,
    /// Beam width for Whisper (1 = greedy)
    #[arg(long, default_value_t = 1, value_parser = crate::limits::count(crate::limits::BEAMS))]
    beams: usize,
    /// Language of the speech, for multilingual Whisper checkpoints (e.g. en, de)
    #[arg(long)]
    language: Option<String>,
    /// Generate text from this prompt about the --input images (image-text models such as
    /// LLaVA; the image token marks where each goes), as `generate --image` does
    #[arg(long)]
    prompt: Option<String>,
    /// Print the results as JSON (one object per input, in a list)
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(prompt) = args.prompt {
        let images = args.input.iter().map(std::path::PathBuf::from).collect();
        return crate::generate::run(crate::generate::Args::for_prompt(
            args.target,
            prompt,
            images,
            args.json,
        ));
    }
    let inputs = args
        .input
        .iter()
        .map(|i| Input::detect(i))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = args.target.resolve()?;
    let engines = Engines::new();
    // The browser is not among the in-process engines; `run` takes one inference per page
    // from it.
    let web = args.target.web_engine();
    let engine = engines
        .get(args.target.hardware.engine)
        .unwrap_or(&web as &dyn ia_engine::Engine);
    let mut pipeline = Pipeline::load(engine, plan, args.target.placement())?;
    let opts = TaskOptions {
        labels: args.labels.iter().map(|l| l.trim().to_string()).collect(),
        hypothesis_template: args.hypothesis_template,
        top_k: args.top_k,
        threshold: args.threshold,
        transcribe: TranscribeOptions {
            num_beams: args.beams,
            max_new_tokens: None,
            language: args.language,
        },
    };
    let info = pipeline.info().clone();
    let mut results = Vec::new();
    let outputs = pipeline.run_batch(&inputs, &opts)?;
    for (arg, r) in args.input.iter().zip(outputs) {
        if args.json {
            results.push(serde_json::json!({"input": arg, "result": r}));
        } else {
            print_human(arg, &r.output);
            eprintln!(
                "  ({}: preprocess {:.1} ms, inference {:.1} ms{})",
                r.task,
                r.timings.preprocess_ms,
                r.timings.inference_ms,
                if r.batch_size > 1 {
                    format!(", for the batch of {}", r.batch_size)
                } else {
                    String::new()
                }
            );
        }
    }
    if args.json {
        let out = serde_json::json!({
            "model": pipeline.model().name,
            "task": pipeline.task(),
            "provenance": info,
            "load_ms": pipeline.load_ms,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        eprintln!(
            "{} on {} ({} {}, {}, {} weights), loaded in {:.0} ms",
            pipeline.model().name,
            info.device,
            info.engine,
            info.engine_version,
            info.precision,
            info.weights.as_str(),
            pipeline.load_ms
        );
    }
    Ok(())
}

fn print_human(input: &str, output: &TaskOutput) {
    println!("{input}");
    match output {
        TaskOutput::Embedding {
            of,
            dim,
            norm,
            values,
        } => {
            let head: Vec<String> = values.iter().take(6).map(|v| format!("{v:.4}")).collect();
            println!(
                "  {of} embedding: dim {dim}, L2 norm {norm:.4}, [{} ...]",
                head.join(", ")
            );
        }
        TaskOutput::Labels { labels } => {
            for l in labels {
                println!("  {:>7.4}  {}", l.score, l.label);
            }
        }
        TaskOutput::Detections { detections } => {
            if detections.is_empty() {
                println!("  no detections above the threshold");
            }
            for d in detections {
                let [x0, y0, x1, y1] = d.bbox;
                println!(
                    "  {:>7.4}  {:<16} [{x0:.1}, {y0:.1}, {x1:.1}, {y1:.1}]",
                    d.score, d.label
                );
            }
        }
        TaskOutput::Transcript {
            text,
            audio_seconds,
            ..
        } => println!("  transcript ({audio_seconds:.2} s of audio): {text}"),
    }
}
