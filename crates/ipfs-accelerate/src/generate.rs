//! `ipfs-accelerate generate`: text generation with a KV cache, streamed token by token.

use crate::target::{Engines, ModelOnTarget};
use anyhow::{bail, Context};
use ia_engine::generation::{generate, GenerateOptions, Sampling};
use std::io::Write;
use std::ops::ControlFlow;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: ModelOnTarget,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64, value_parser = crate::limits::count(crate::limits::NEW_TOKENS))]
    max_new_tokens: usize,
    /// Print each piece of text as soon as its token is chosen
    #[arg(long)]
    stream: bool,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0, value_parser = crate::limits::temperature)]
    temperature: f32,
    #[arg(long, value_parser = crate::limits::count(crate::limits::TOP_K))]
    top_k: Option<usize>,
    #[arg(long, value_parser = crate::limits::top_p)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 1.0, value_parser = crate::limits::repetition_penalty)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Token ids that end generation, besides the model's EOS
    #[arg(long, value_delimiter = ',')]
    stop_token_ids: Vec<u32>,
    /// Generate exactly --max-new-tokens, through EOS
    #[arg(long)]
    ignore_eos: bool,
    /// Print the result and timings as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let plan = args.target.resolve()?;
    let tokenizer = ia_engine::tokenizer::of(&plan.source)?.with_context(|| {
        format!(
            "{}: no tokenizer.json, cannot turn text into tokens",
            plan.name
        )
    })?;
    let engines = Engines::new();
    // In the browser, T5 decodes over its export kept in a page (one WebDriver call per step);
    // the engine refuses other classes there with the reason.
    let web = args.target.web_engine();
    let engine = engines
        .get(args.target.hardware.engine)
        .unwrap_or(&web as &dyn ia_engine::Engine);
    let prompt = tokenizer
        .encode(args.prompt.as_str(), true)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?
        .get_ids()
        .to_vec();
    if prompt.is_empty() {
        bail!("the tokenizer produced no tokens for the prompt");
    }
    ia_engine::inputs::check_token_ids(plan.source.config(), &prompt)?;
    let mut model = engine.load_generator(&plan, args.target.placement())?;
    // The cache grows to the prompt plus the new tokens, never past the context.
    let cached = prompt
        .len()
        .saturating_add(args.max_new_tokens)
        .min(model.max_context());
    ia_engine::memory::check_fits(
        &plan.source,
        args.target.precision,
        ia_models::footprint::Workload {
            batch: 1,
            positions: prompt.len(),
            cached_positions: cached,
            beams: 1,
        },
    )?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        stop_tokens: args.stop_token_ids.clone(),
        ignore_eos: args.ignore_eos,
    };

    let mut streamed: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let mut stdout = std::io::stdout().lock();
    let stream = args.stream && !args.json;
    let (tokens, stats) = generate(model.as_mut(), &prompt, &opts, |t| {
        if !stream {
            return ControlFlow::Continue(());
        }
        streamed.push(t);
        // Decode the whole continuation and print what is new: a character can span tokens.
        if let Ok(text) = tokenizer.decode(&streamed, true) {
            if let Some(new) = text.strip_prefix(printed.as_str()) {
                let _ = write!(stdout, "{new}");
                let _ = stdout.flush();
                printed = text;
            }
        }
        ControlFlow::Continue(())
    })?;
    let text = tokenizer
        .decode(&tokens, true)
        .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
    if args.json {
        let v = serde_json::json!({
            "model": plan.name,
            "weights": plan.source.weights_kind().as_str(),
            "engine": model.info().engine,
            "engine_version": model.info().engine_version,
            "device": model.info().device,
            "precision": model.info().precision,
            "prompt_tokens": stats.prompt_tokens,
            "token_ids": tokens,
            "text": text,
            "stop_reason": stats.stop_reason,
            "time_to_first_token_ms": stats.time_to_first_token_ms,
            "prefill_tokens_per_s": stats.prefill_tokens_per_s(),
            "decode_tokens_per_s": stats.decode_tokens_per_s(),
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        if stream {
            if let Some(rest) = text.strip_prefix(printed.as_str()) {
                write!(stdout, "{rest}")?;
            }
            writeln!(stdout)?;
        } else {
            writeln!(stdout, "{text}")?;
        }
        eprintln!(
            "[{} prompt + {} new tokens, TTFT {:.1} ms, prefill {:.0} tok/s, decode {} tok/s, stop: {:?}]",
            stats.prompt_tokens,
            stats.new_tokens,
            stats.time_to_first_token_ms,
            stats.prefill_tokens_per_s(),
            stats
                .decode_tokens_per_s()
                .map(|t| format!("{t:.1}"))
                .unwrap_or_else(|| "-".into()),
            stats.stop_reason
        );
    }
    Ok(())
}
