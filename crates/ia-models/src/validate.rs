//! Range checks on the numbers of a `config.json`, before any engine sizes a tensor from them.
//!
//! A config is data from outside: a head count of 0 divides by zero, a hidden size of 10^9
//! asks the allocator for petabytes, a patch larger than the image leaves nothing to embed.
//! Every count, dimension and size the engines read is checked here against a range, and the
//! error names the field (with its sub-config), the value and the range. Whether a valid model
//! fits in memory is [`crate::footprint`]'s question.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config.json: {0}")]
pub struct ConfigError(pub String);

/// (field, smallest, largest). Fields may hold an integer or a list of integers (CLAP's
/// per-stage head counts, Wav2Vec2's conv stack); absent and null fields are not checked.
const INTEGER_FIELDS: &[(&str, u64, u64)] = &[
    // widths
    ("hidden_size", 1, DIM),
    ("d_model", 1, DIM),
    ("n_embd", 1, DIM),
    ("intermediate_size", 1, DIM),
    ("d_ff", 1, DIM),
    ("d_kv", 1, DIM),
    ("ffn_dim", 1, DIM),
    ("encoder_ffn_dim", 1, DIM),
    ("decoder_ffn_dim", 1, DIM),
    ("head_dim", 1, DIM),
    ("projection_dim", 1, DIM),
    ("word_embed_proj_dim", 1, DIM),
    ("embedding_size", 1, DIM),
    ("hidden_sizes", 1, DIM),
    ("conv_dim", 1, DIM),
    ("patch_embeds_hidden_size", 1, DIM),
    // heads
    ("num_attention_heads", 1, HEADS),
    ("num_key_value_heads", 1, HEADS),
    ("num_heads", 1, HEADS),
    ("encoder_attention_heads", 1, HEADS),
    ("decoder_attention_heads", 1, HEADS),
    // depth
    ("num_hidden_layers", 1, LAYERS),
    ("num_layers", 1, LAYERS),
    ("num_decoder_layers", 1, LAYERS),
    ("encoder_layers", 1, LAYERS),
    ("decoder_layers", 1, LAYERS),
    ("depths", 1, LAYERS),
    // vocabularies and positions
    ("vocab_size", 1, VOCAB),
    ("type_vocab_size", 1, VOCAB),
    ("max_position_embeddings", 1, POSITIONS),
    ("max_source_positions", 1, POSITIONS),
    ("max_target_positions", 1, POSITIONS),
    ("n_positions", 1, POSITIONS),
    ("relative_attention_num_buckets", 1, 1 << 16),
    ("relative_attention_max_distance", 1, POSITIONS),
    // images, audio, detection
    ("image_size", 1, 1 << 14),
    ("patch_size", 1, 1 << 14),
    ("num_channels", 1, 64),
    ("num_mel_bins", 1, 4096),
    ("spec_size", 1, 1 << 14),
    ("window_size", 1, 1 << 14),
    ("num_queries", 1, 1 << 16),
    ("conv_kernel", 1, 1 << 16),
    ("conv_stride", 1, 1 << 16),
    ("num_conv_pos_embeddings", 1, 1 << 16),
    ("num_conv_pos_embedding_groups", 1, 1 << 16),
];

/// Widest layer (2^18: 60x the widest released transformer).
const DIM: u64 = 1 << 18;
const HEADS: u64 = 1 << 12;
const LAYERS: u64 = 1 << 12;
/// Largest vocabulary (2^22: 16x Gemma's 256k).
const VOCAB: u64 = 1 << 22;
/// Most positions (2^22: 4M tokens, 4x the longest released contexts).
const POSITIONS: u64 = 1 << 22;

/// Floating-point fields: (field, smallest, largest), ends included.
const FLOAT_FIELDS: &[(&str, f64, f64)] = &[
    ("layer_norm_eps", 0.0, 1.0),
    ("layer_norm_epsilon", 0.0, 1.0),
    ("rms_norm_eps", 0.0, 1.0),
    ("rope_theta", f64::MIN_POSITIVE, 1e12),
];

/// Checks `config` and every sub-config (`text_config`, `vision_config`, `audio_config`,
/// `backbone_config`, `rope_parameters`, ...).
pub fn check_config(config: &Value) -> Result<(), ConfigError> {
    check_object(config, "")
}

fn check_object(config: &Value, at: &str) -> Result<(), ConfigError> {
    let Some(obj) = config.as_object() else {
        return Ok(());
    };
    let name = |field: &str| format!("{at}{field}");
    for &(field, lo, hi) in INTEGER_FIELDS {
        let Some(v) = obj.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let values: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        if matches!(v, Value::Array(a) if a.is_empty()) {
            return Err(ConfigError(format!("{} is an empty list", name(field))));
        }
        for x in values {
            match x.as_u64() {
                Some(n) if (lo..=hi).contains(&n) => {}
                _ => {
                    return Err(ConfigError(format!(
                        "{} = {x} is outside {lo}..={hi}",
                        name(field)
                    )))
                }
            }
        }
    }
    for &(field, lo, hi) in FLOAT_FIELDS {
        let Some(v) = obj.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && x >= lo && x <= hi => {}
            _ => {
                return Err(ConfigError(format!(
                    "{} = {v} is outside {lo:e}..={hi:e}",
                    name(field)
                )))
            }
        }
    }
    check_relations(obj, at)?;
    for (key, sub) in obj {
        if sub.is_object() && (key.ends_with("_config") || key == "rope_parameters") {
            check_object(sub, &format!("{at}{key}."))?;
        }
    }
    Ok(())
}

fn uint(obj: &serde_json::Map<String, Value>, key: &str) -> Option<u64> {
    obj.get(key).and_then(Value::as_u64)
}

/// Relations between fields that the engines divide or index by.
fn check_relations(obj: &serde_json::Map<String, Value>, at: &str) -> Result<(), ConfigError> {
    let err = |m: String| Err(ConfigError(format!("{at}{m}")));
    let width = uint(obj, "hidden_size").or_else(|| uint(obj, "d_model"));
    // Heads split the width unless each head's size is given.
    if obj.get("head_dim").is_none_or(Value::is_null) && uint(obj, "d_kv").is_none() {
        for heads_key in [
            "num_attention_heads",
            "encoder_attention_heads",
            "decoder_attention_heads",
        ] {
            if let (Some(w), Some(h)) = (width, uint(obj, heads_key)) {
                if w % h != 0 {
                    return err(format!(
                        "the width {w} does not split into {heads_key} = {h} heads"
                    ));
                }
            }
        }
    }
    if let (Some(h), Some(kv)) = (
        uint(obj, "num_attention_heads"),
        uint(obj, "num_key_value_heads"),
    ) {
        if h % kv != 0 {
            return err(format!(
                "num_attention_heads = {h} is not a multiple of num_key_value_heads = {kv}"
            ));
        }
    }
    if let (Some(image), Some(patch)) = (uint(obj, "image_size"), uint(obj, "patch_size")) {
        if patch > image {
            return err(format!(
                "patch_size = {patch} is larger than image_size = {image}"
            ));
        }
    }
    let lens = |k: &str| obj.get(k).and_then(Value::as_array).map(Vec::len);
    if let (Some(a), Some(b), Some(c)) =
        (lens("conv_dim"), lens("conv_kernel"), lens("conv_stride"))
    {
        if a != b || b != c {
            return err(format!(
                "conv_dim, conv_kernel and conv_stride have {a}, {b} and {c} entries; they describe one layer each"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bert() -> Value {
        json!({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4,
               "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 113,
               "max_position_embeddings": 64, "layer_norm_eps": 1e-12})
    }

    fn with(mut c: Value, k: &str, v: Value) -> Value {
        c[k] = v;
        c
    }

    #[test]
    fn real_shapes_pass() {
        check_config(&bert()).unwrap();
        check_config(&json!({"model_type": "clap", "audio_config": {
            "num_attention_heads": [2, 4], "depths": [2, 2], "hidden_size": 32}}))
        .unwrap();
        check_config(&json!({"num_attention_heads": 4, "hidden_size": 30, "head_dim": 8})).unwrap();
    }

    #[test]
    fn zero_negative_fractional_and_huge_values_are_named() {
        for (k, v) in [
            ("num_attention_heads", json!(0)),
            ("vocab_size", json!(0)),
            ("hidden_size", json!(1_000_000_000u64)),
            ("num_hidden_layers", json!(-1)),
            ("intermediate_size", json!(64.5)),
            ("max_position_embeddings", json!(1e30)),
            ("layer_norm_eps", json!(-1.0)),
        ] {
            let e = check_config(&with(bert(), k, v.clone())).unwrap_err().0;
            assert!(e.contains(k) && e.contains("outside"), "{k}={v}: {e}");
        }
    }

    #[test]
    fn sub_configs_and_lists_are_checked() {
        let c = json!({"vision_config": {"image_size": 32, "patch_size": 0}});
        let e = check_config(&c).unwrap_err().0;
        assert!(e.contains("vision_config.patch_size"), "{e}");
        let c = json!({"audio_config": {"num_attention_heads": [2, 0]}});
        assert!(check_config(&c).is_err());
        let c = json!({"rope_parameters": {"rope_theta": 0.0}});
        assert!(check_config(&c).unwrap_err().0.contains("rope_theta"));
    }

    #[test]
    fn relations_are_checked() {
        let e = check_config(&with(bert(), "num_attention_heads", json!(5)))
            .unwrap_err()
            .0;
        assert!(e.contains("does not split"), "{e}");
        let c = json!({"num_attention_heads": 4, "num_key_value_heads": 3, "head_dim": 8});
        assert!(check_config(&c).unwrap_err().0.contains("multiple"));
        let c = json!({"image_size": 8, "patch_size": 16});
        assert!(check_config(&c).unwrap_err().0.contains("larger"));
        let c = json!({"conv_dim": [1, 2], "conv_kernel": [3], "conv_stride": [1, 1]});
        assert!(check_config(&c).unwrap_err().0.contains("one layer each"));
    }
}
