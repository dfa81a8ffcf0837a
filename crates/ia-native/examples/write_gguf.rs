//! Writes the GGUF file of a LLaMA, Qwen2 or Qwen3 safetensors checkpoint, quantised with
//! ggml's own quantisers (candle's) in llama.cpp's layout, next to a copy of its config and
//! tokenizer, so that the folder loads as a `.gguf` checkpoint:
//! `cargo run --release -p ia-native --example write_gguf -- CHECKPOINT q8_0|q4_k OUT_DIR`
use ia_engine::Precision;
use ia_models::{Checkpoint, Model, ModelSource};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [checkpoint, precision, out] = args.as_slice() else {
        anyhow::bail!("usage: write_gguf CHECKPOINT q8_0|q4_k OUT_DIR");
    };
    let precision: Precision = precision.parse().map_err(anyhow::Error::msg)?;
    let source = ModelSource::Checkpoint(Checkpoint::open(std::path::Path::new(checkpoint))?);
    let model = Model::resolve(checkpoint, source)?;
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "weights_provenance.json",
    ] {
        let from = std::path::Path::new(checkpoint).join(f);
        if from.exists() {
            std::fs::copy(&from, out.join(f))?;
        }
    }
    let path = out.join(format!("model-{precision}.gguf"));
    let formats = ia_native::models::quantized::write_gguf(&model.source, precision, &path)?;
    println!("{}: tensors per format {formats:?}", path.display());
    Ok(())
}
