//! transformers' defaults for what abbreviated configs leave out. The llava-hf checkpoints keep
//! only what differs from `LlamaConfig`'s (or `MistralConfig`'s) defaults in their `text_config`
//! (a LLaVA 1.5 7B text config has no hidden size or layer count); transformers fills the rest
//! from the class. Filled
//! here once, when a model is resolved, so that every reader (the engines, the memory check, the
//! cost model) sees the whole config.

use serde_json::{json, Value};

/// `LlamaConfig()`'s values for the keys a LLaVA text_config may omit.
fn llama_defaults() -> [(&'static str, Value); 7] {
    [
        ("vocab_size", json!(32000)),
        ("hidden_size", json!(4096)),
        ("intermediate_size", json!(11008)),
        ("num_hidden_layers", json!(32)),
        ("num_attention_heads", json!(32)),
        ("max_position_embeddings", json!(2048)),
        ("rms_norm_eps", json!(1e-6)),
    ]
}

/// `MistralConfig()`'s values for the keys a LLaVA-NeXT text_config may omit
/// (llava-v1.6-mistral-7b-hf's names only what differs from them).
fn mistral_defaults() -> [(&'static str, Value); 9] {
    [
        ("vocab_size", json!(32000)),
        ("hidden_size", json!(4096)),
        ("intermediate_size", json!(14336)),
        ("num_hidden_layers", json!(32)),
        ("num_attention_heads", json!(32)),
        ("num_key_value_heads", json!(8)),
        ("max_position_embeddings", json!(131072)),
        ("rms_norm_eps", json!(1e-6)),
        ("sliding_window", json!(4096)),
    ]
}

/// Frames of a video model's clip: `vision_config.num_frames`, else XCLIPVisionConfig's 8.
pub fn video_frames(config: &Value) -> usize {
    config
        .pointer("/vision_config/num_frames")
        .and_then(Value::as_u64)
        .unwrap_or(8) as usize
}

/// Fills the defaults of LLaVA's `text_config` (a LLaMA unless it says otherwise, or a Mistral).
pub fn complete(config: &mut Value) {
    let llava = matches!(
        config.get("model_type").and_then(Value::as_str),
        Some("llava" | "llava_next")
    );
    if !llava {
        return;
    }
    let Some(obj) = config.as_object_mut() else {
        return;
    };
    let text = obj
        .entry("text_config")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(text) = text.as_object_mut() else {
        return;
    };
    let defaults = match text
        .entry("model_type")
        .or_insert_with(|| "llama".into())
        .as_str()
    {
        Some("llama") => llama_defaults().to_vec(),
        Some("mistral") => mistral_defaults().to_vec(),
        _ => return,
    };
    for (key, value) in defaults {
        text.entry(key).or_insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_text_configs_get_llama_defaults_and_keep_their_own() {
        let mut c = json!({"model_type": "llava", "text_config": {"vocab_size": 32064}});
        complete(&mut c);
        assert_eq!(c["text_config"]["hidden_size"], 4096);
        assert_eq!(c["text_config"]["vocab_size"], 32064);
        assert_eq!(c["text_config"]["rms_norm_eps"], 1e-6);
        let mut q = json!({"model_type": "llava", "text_config": {"model_type": "qwen2"}});
        complete(&mut q);
        assert!(q["text_config"].get("hidden_size").is_none());
        // A null sliding_window is the checkpoint's own (no window), kept as it is.
        let mut m = json!({"model_type": "llava_next",
            "text_config": {"model_type": "mistral", "sliding_window": null}});
        complete(&mut m);
        assert_eq!(m["text_config"]["num_key_value_heads"], 8);
        assert_eq!(m["text_config"]["hidden_size"], 4096);
        assert!(m["text_config"]["sliding_window"].is_null());
        let mut b = json!({"model_type": "bert"});
        complete(&mut b);
        assert_eq!(b, json!({"model_type": "bert"}));
    }
}
