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
    /// The prompt; for an image-text model with --image, the image token marks where each
    /// image goes, as in the model's own prompt format (LLaVA: `<image>`; Qwen2-VL:
    /// `<|vision_start|><|image_pad|><|vision_end|>`)
    #[arg(long)]
    prompt: String,
    /// A PNG/JPEG image for an image-text model (repeat for several, in prompt order)
    #[arg(long)]
    image: Vec<std::path::PathBuf>,
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

impl Args {
    /// `run --prompt`: greedy generation of up to 64 tokens from `prompt` with `images`.
    pub fn for_prompt(
        target: ModelOnTarget,
        prompt: String,
        images: Vec<std::path::PathBuf>,
        json: bool,
    ) -> Self {
        Self {
            target,
            prompt,
            image: images,
            max_new_tokens: 64,
            stream: false,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            json,
        }
    }
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
    let mut model = engine.load_generator(&plan, args.target.placement())?;
    let (prompt, images) = attach_images(model.as_mut(), &plan, &tokenizer, prompt, &args.image)?;
    ia_engine::inputs::check_token_ids(plan.source.config(), &prompt)?;
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
            "image_tokens": images.as_ref().map(|i| i.tokens),
            "vision_encode_ms": images.as_ref().map(|i| i.encode_ms),
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
        if let Some(i) = &images {
            eprintln!(
                "[{} image(s): {} image tokens, vision encode {:.1} ms]",
                args.image.len(),
                i.tokens,
                i.encode_ms
            );
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

/// What the images of an image-text prompt became.
pub struct AttachedImages {
    /// Image tokens in the expanded prompt.
    pub tokens: usize,
    /// Time to encode the images through the vision tower and projector.
    pub encode_ms: f64,
}

/// For an image-text generator: `images` through the model's image processor and vision
/// encoder (their features wait for the next prefill), and the prompt with each image token
/// expanded as the model's processor does. A text-only model takes the prompt as it is and
/// refuses images.
pub fn attach_images(
    model: &mut dyn ia_engine::TextGenerator,
    plan: &ia_models::Model,
    tokenizer: &tokenizers::Tokenizer,
    prompt: Vec<u32>,
    images: &[std::path::PathBuf],
) -> anyhow::Result<(Vec<u32>, Option<AttachedImages>)> {
    let Some(image_token) = model.image_token() else {
        if !images.is_empty() {
            bail!(
                "{} is not an image-text model: it takes no --image",
                plan.name
            );
        }
        return Ok((prompt, None));
    };
    let token = || {
        tokenizer
            .id_to_token(image_token)
            .unwrap_or_else(|| format!("token {image_token}"))
    };
    // One image token per image, checked before any image is encoded.
    ia_engine::generation::expand_image_tokens(&prompt, image_token, &vec![1; images.len()])
        .with_context(|| format!("write {} in the prompt where each image goes", token()))?;
    if images.is_empty() {
        return Ok((prompt, None));
    }
    let pictures = images
        .iter()
        .map(|p| {
            ia_preprocess::image::RgbImage::open(p).with_context(|| format!("{}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let batch =
        ia_engine::inputs::image_batch(&ia_engine::inputs::image_processor(plan)?, &pictures)?;
    let start = std::time::Instant::now();
    let tokens = model.attach_images(&batch)?;
    let encode_ms = start.elapsed().as_secs_f64() * 1e3;
    let prompt = ia_engine::generation::expand_image_tokens(&prompt, image_token, &tokens)?;
    Ok((
        prompt,
        Some(AttachedImages {
            tokens: tokens.iter().sum(),
            encode_ms,
        }),
    ))
}
