//! What a model's work costs, from its config: parameters, floating-point operations and bytes
//! moved per call, and the memory of the call's activations and KV cache. The performance
//! predictor's prior is a roofline over these: a call takes at least `flops / peak FLOP/s`
//! and at least `bytes moved / memory bandwidth`.
//!
//! Conventions (those of the scaling-law literature, e.g. Kaplan et al. 2020): a multiply-add
//! is 2 FLOPs; a weight matrix of `p` parameters applied at one position costs `2 p`;
//! attention adds `4 * t_q * t_k * d` per layer (scores and weighted sum), `d` its width.
//! Embedding tables are looked up, not multiplied, except a tied language-model head.

use serde::Serialize;
use serde_json::Value;

/// Which part of the work a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// One pass over `positions` per row, every position attending to every other
    /// (encoders, vision and audio towers).
    Forward,
    /// A decoder's prompt of `positions` per row, filling the KV cache.
    Prefill,
    /// One new position per row against `cached` positions in the KV cache.
    Decode { cached: usize },
}

/// The cost of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cost {
    pub parameters: u64,
    pub flops: f64,
    /// Weights read: every weight once per call.
    pub weight_bytes: f64,
    /// KV cache written (prefill) or read (decode).
    pub kv_cache_bytes: f64,
    /// Hidden states written and read between layers, f32.
    pub activation_bytes: f64,
    /// Positions the call computes, over all its rows (a decode step computes one a row).
    pub positions: f64,
    /// Operations (kernels) the call dispatches, roughly: what a runtime pays per operation
    /// beyond the arithmetic is paid this many times.
    pub operations: f64,
    /// A decode step: the call a generation repeats for every token after the first, which
    /// a runtime may pay differently from a pass over a whole input (it feeds and returns the
    /// KV cache, and the host picks a token between steps).
    pub decode_step: bool,
}

/// Operations of one transformer layer in an exported graph: the projections and their
/// biases, the attention's reshapes, products, scale, mask and softmax, two norms, the MLP
/// and its activation, the residual adds (a plain transformers export of BERT has about 30
/// per layer; runtimes fuse some, rotary embeddings add some).
const OPERATIONS_PER_LAYER: f64 = 30.0;
/// What the cross-attention of an encoder-decoder's decoder layer adds.
const OPERATIONS_PER_CROSS_ATTENTION: f64 = 12.0;
/// Embeddings, the final norm and the head.
const OPERATIONS_OUTSIDE_LAYERS: f64 = 10.0;

impl Cost {
    pub fn bytes_moved(&self) -> f64 {
        self.weight_bytes + self.kv_cache_bytes + self.activation_bytes
    }

    /// FLOPs per byte moved: below a machine's FLOP/s over its bandwidth the call is bound by
    /// memory, above by compute.
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes_moved().max(1.0)
    }
}

/// What one picture costs a multimodal generator: the tiles its processor makes of it (LLaVA-NeXT's
/// base tile and grid, else 1), the positions its vision tower attends over per tile, and the
/// image tokens the prompt holds for it. Computed from the processed picture by
/// `ia_engine::inputs::image_work`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImageWork {
    pub tiles: usize,
    pub tower_positions: usize,
    pub tokens: usize,
}

/// The transformer dimensions of one tower of a config.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shape {
    pub hidden: u64,
    pub intermediate: u64,
    /// Encoder (or decoder-only) layers.
    pub layers: u64,
    /// Decoder layers of an encoder-decoder (self- and cross-attention each).
    pub decoder_layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub vocab: u64,
    /// Learned position embeddings (0 for rotary or relative positions).
    pub position_table: u64,
    /// Gated MLP (SwiGLU / GEGLU): three matrices instead of two.
    pub gated: bool,
    /// The language-model head is the token embedding table.
    pub tied_head: bool,
}

impl Shape {
    /// The shape of `config`, or of its sub-config `tower` ("vision_config", "text_config").
    pub fn of(config: &Value, tower: Option<&str>) -> Option<Self> {
        let c = match tower {
            Some(t) => config.get(t)?,
            None => config,
        };
        let int = |keys: &[&str]| -> u64 {
            keys.iter()
                .find_map(|k| c.get(*k).and_then(Value::as_u64))
                .unwrap_or(0)
        };
        let hidden = int(&["hidden_size", "d_model", "n_embd"]);
        if hidden == 0 {
            return None;
        }
        let heads = int(&[
            "num_attention_heads",
            "num_heads",
            "encoder_attention_heads",
        ])
        .max(1);
        let kv_heads = match int(&["num_key_value_heads"]) {
            0 => heads,
            kv => kv,
        };
        let head_dim = match int(&["head_dim", "d_kv"]) {
            0 => hidden / heads,
            d => d,
        };
        let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("");
        // Qwen's language models, the VL ones included (qwen2_vl, qwen3_vl_text, ...).
        let gated = matches!(model_type, "llama" | "mistral" | "gemma" | "phi3")
            || model_type.starts_with("qwen")
            || c.get("feed_forward_proj")
                .and_then(Value::as_str)
                .is_some_and(|p| p.starts_with("gated"));
        let rotary_or_relative = gated || model_type == "t5";
        let intermediate = match int(&["intermediate_size", "d_ff", "ffn_dim", "encoder_ffn_dim"]) {
            0 => hidden.saturating_mul(4),
            i => i,
        };
        Some(Self {
            hidden,
            intermediate,
            layers: int(&["num_hidden_layers", "num_layers", "encoder_layers"]),
            decoder_layers: int(&["num_decoder_layers", "decoder_layers"]),
            heads,
            kv_heads,
            head_dim,
            vocab: int(&["vocab_size"]),
            position_table: if rotary_or_relative {
                0
            } else {
                int(&["max_position_embeddings", "n_positions"])
            },
            gated,
            tied_head: c
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(!matches!(model_type, "llama" | "mistral")),
        })
    }

    /// The vision transformer of a Qwen-VL config (`vision_config`), whose keys differ by
    /// generation: Qwen2-VL's width is `embed_dim` (its `hidden_size` is the language model's)
    /// and its MLP `mlp_ratio` times wider; Qwen2.5-VL's and Qwen3-VL's width is `hidden_size`
    /// and their MLP `intermediate_size` (Qwen2.5-VL's gated). Defaults as transformers'.
    pub fn of_qwen_vl_vision(config: &Value) -> Option<Self> {
        let model_type = config.get("model_type").and_then(Value::as_str)?;
        let v = config.get("vision_config")?;
        let int = |k: &str| v.get(k).and_then(Value::as_u64);
        let (hidden, intermediate, gated, positions) = match model_type {
            "qwen2_vl" => {
                let width = int("embed_dim").unwrap_or(1280);
                let ratio = v.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
                (width, (width as f64 * ratio) as u64, false, 0)
            }
            "qwen2_5_vl" => (
                int("hidden_size").unwrap_or(1280),
                int("intermediate_size").unwrap_or(3420),
                true,
                0,
            ),
            "qwen3_vl" => (
                int("hidden_size").unwrap_or(1152),
                int("intermediate_size").unwrap_or(4304),
                false,
                int("num_position_embeddings").unwrap_or(2304),
            ),
            _ => return None,
        };
        let heads = int("num_heads").unwrap_or(16).max(1);
        Some(Self {
            hidden,
            intermediate,
            layers: int("depth").unwrap_or(32),
            decoder_layers: 0,
            heads,
            kv_heads: heads,
            head_dim: hidden / heads,
            vocab: 0,
            position_table: positions,
            gated,
            tied_head: false,
        })
    }

    /// Width of the attention projections: queries and output, keys and values.
    fn attention_widths(&self) -> (f64, f64) {
        let head_dim = self.head_dim as f64;
        (
            self.heads as f64 * head_dim,
            self.kv_heads as f64 * head_dim,
        )
    }

    /// Weights of one self-attention block (projections with biases) and one MLP. In f64, like
    /// every count here, so that absurd configs saturate instead of overflowing.
    fn layer_parameters(&self) -> (f64, f64) {
        let (h, i) = (self.hidden as f64, self.intermediate as f64);
        let (q, kv) = self.attention_widths();
        let attention = 2.0 * h * q + 2.0 * h * kv + 2.0 * q + 2.0 * kv;
        let matrices = if self.gated { 3.0 } else { 2.0 };
        (attention, matrices * h * i + i + h)
    }

    /// Weights of one layer (self-attention, MLP, norms); a decoder layer of an
    /// encoder-decoder adds its cross-attention.
    pub fn layer_weights(&self, decoder: bool) -> f64 {
        let (attention, mlp) = self.layer_parameters();
        let layer = attention + mlp + 4.0 * self.hidden as f64;
        if decoder {
            layer + attention
        } else {
            layer
        }
    }

    /// Weights of the layers: encoder (or decoder-only) layers, and decoder layers with their
    /// cross-attention; layer norms included.
    fn layer_total(&self) -> f64 {
        self.layers as f64 * self.layer_weights(false)
            + self.decoder_layers as f64 * self.layer_weights(true)
    }

    fn vocabulary_matrix(&self) -> f64 {
        self.vocab as f64 * self.hidden as f64
    }

    /// Weights multiplied at every position: the layers, and the language-model head of a
    /// text generator (a tied head is the embedding table itself).
    pub fn matmul_parameters(&self, generates_text: bool) -> f64 {
        let head = if generates_text {
            self.vocabulary_matrix()
        } else {
            0.0
        };
        self.layer_total() + head
    }

    /// Every weight: the layers, the embedding tables, and an untied head.
    pub fn parameters(&self, generates_text: bool) -> u64 {
        let positions = self.position_table as f64 * self.hidden as f64;
        let untied_head = if generates_text && !self.tied_head {
            self.vocabulary_matrix()
        } else {
            0.0
        };
        // A float-to-integer cast saturates.
        (self.layer_total() + self.vocabulary_matrix() + positions + untied_head) as u64
    }

    /// Weights one call reads: the layers, all of a text generator's language-model head,
    /// and of the embedding tables only the rows it looks up (`tokens` token rows, `positions`
    /// position rows). An encoder of a large vocabulary reads a few rows of its biggest table:
    /// MiniLM's token table is half of its weights, and a sequence of 16 reads 16 of its
    /// 30,522 rows.
    pub fn weights_read(&self, generates_text: bool, tokens: f64, positions: f64) -> f64 {
        let h = self.hidden as f64;
        let head = if generates_text {
            self.vocabulary_matrix()
        } else {
            0.0
        };
        // A tied head has read the whole token table already.
        let token_rows = if generates_text && self.tied_head {
            0.0
        } else {
            tokens.min(self.vocab as f64) * h
        };
        let position_rows = positions.min(self.position_table as f64) * h;
        self.layer_total() + head + token_rows + position_rows
    }

    /// Bytes of the KV cache per row and cached position.
    pub fn kv_bytes_per_position(&self, bytes_per_element: f64) -> f64 {
        let (_, kv) = self.attention_widths();
        let layers = self.layers.max(self.decoder_layers) as f64;
        2.0 * layers * kv * bytes_per_element
    }

    /// The cost of one call of `phase` for `batch` rows of `positions` each, weights and cache
    /// at `bytes_per_weight` (4 for f32, 2 for f16/bf16, about 1.06 for q8_0).
    pub fn cost(
        &self,
        phase: Phase,
        generates_text: bool,
        batch: usize,
        positions: usize,
        bytes_per_weight: f64,
    ) -> Cost {
        let (rows, t) = (batch as f64, positions as f64);
        let (q, _) = self.attention_widths();
        let attention_layers = self.layers as f64 + 2.0 * self.decoder_layers as f64;
        let matmul = self.matmul_parameters(generates_text);
        // Positions computed per row, and positions each of them attends to.
        let (new, attended) = match phase {
            Phase::Forward | Phase::Prefill => (t, t),
            Phase::Decode { cached } => (1.0, cached as f64 + 1.0),
        };
        let flops = rows * (2.0 * matmul * new + 4.0 * attention_layers * new * attended * q);
        let kv_per_position = self.kv_bytes_per_position(bytes_per_weight);
        let kv_cache_bytes = match phase {
            Phase::Forward => 0.0,
            Phase::Prefill => rows * t * kv_per_position,
            Phase::Decode { cached } => rows * (cached as f64 + 1.0) * kv_per_position,
        };
        let layers = self.layers as f64 + self.decoder_layers as f64;
        // Each layer writes and reads its input and its MLP expansion once, in f32.
        let activation_bytes =
            rows * new * layers * 2.0 * 4.0 * (self.hidden as f64 * 4.0 + self.intermediate as f64);
        let parameters = self.parameters(generates_text);
        let operations = OPERATIONS_OUTSIDE_LAYERS
            + layers * OPERATIONS_PER_LAYER
            + self.decoder_layers as f64 * OPERATIONS_PER_CROSS_ATTENTION;
        Cost {
            parameters,
            flops,
            weight_bytes: self.weights_read(generates_text, rows * new, new) * bytes_per_weight,
            kv_cache_bytes,
            activation_bytes,
            positions: rows * new,
            operations,
            decode_step: matches!(phase, Phase::Decode { .. }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bert_base() -> Value {
        json!({"model_type": "bert", "hidden_size": 768, "intermediate_size": 3072,
               "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 30522,
               "max_position_embeddings": 512})
    }

    fn llama_7b() -> Value {
        json!({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
               "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32000,
               "max_position_embeddings": 4096})
    }

    /// Qwen2-VL's vision transformer is the 675M-parameter ViT of its paper (the layers here,
    /// about 630M, without the merger's 34M and the patch embedding); Qwen3-VL-2B's tower is
    /// read from its own keys.
    #[test]
    fn qwen_vl_towers_are_read_from_their_own_keys() {
        let qwen2 = json!({"model_type": "qwen2_vl", "hidden_size": 1536,
            "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4,
                              "num_heads": 16}});
        let s = Shape::of_qwen_vl_vision(&qwen2).unwrap();
        assert_eq!(
            (s.hidden, s.intermediate, s.layers, s.gated),
            (1280, 5120, 32, false)
        );
        let p = s.parameters(false);
        assert!((620_000_000..640_000_000).contains(&p), "{p}");
        let qwen3 = json!({"model_type": "qwen3_vl", "vision_config": {"depth": 24,
            "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16}});
        let s = Shape::of_qwen_vl_vision(&qwen3).unwrap();
        assert_eq!((s.hidden, s.head_dim, s.position_table), (1024, 64, 2304));
        assert!(Shape::of_qwen_vl_vision(&json!({"model_type": "llava"})).is_none());
    }

    #[test]
    fn an_encoder_reads_only_the_embedding_rows_it_looks_up() {
        let shape = Shape::of(&bert_base(), None).unwrap();
        let h = shape.hidden as f64;
        let layers = shape.parameters(false) as f64 - (shape.vocab as f64 + 512.0) * h;
        let c = shape.cost(Phase::Forward, false, 2, 16, 4.0);
        // 32 token rows and 16 position rows.
        assert!((c.weight_bytes - 4.0 * (layers + 48.0 * h)).abs() < 1.0);
    }

    #[test]
    fn bert_base_has_about_110m_parameters() {
        let p = Shape::of(&bert_base(), None).unwrap().parameters(false) as f64;
        // transformers counts 109.48M (BertModel, pooler included: 0.59M more than ours).
        assert!((p - 109.48e6).abs() / 109.48e6 < 0.01, "{p}");
    }

    #[test]
    fn llama_7b_has_its_parameters_and_decodes_at_two_flops_per_parameter() {
        let shape = Shape::of(&llama_7b(), None).unwrap();
        let p = shape.parameters(true) as f64;
        // 6.74B for LLaMA-7B (Touvron et al. 2023).
        assert!((p - 6.74e9).abs() / 6.74e9 < 0.01, "{p}");
        // One token on a short cache: 2 FLOPs per parameter, less the embedding lookup.
        let c = shape.cost(Phase::Decode { cached: 16 }, true, 1, 1, 2.0);
        let per_param = c.flops / p;
        assert!((1.9..=2.05).contains(&per_param), "{per_param}");
        // Decoding one token reads every weight but one row of the token table: memory bound
        // on any machine.
        let table = (shape.vocab * shape.hidden) as f64;
        assert!((c.weight_bytes - 2.0 * (p - table + shape.hidden as f64)).abs() < 1.0);
        assert!(c.intensity() < 2.0, "{}", c.intensity());
        // The cache: 2 (keys, values) x 32 layers x 4096 x 2 bytes per position.
        assert_eq!(shape.kv_bytes_per_position(2.0), 524_288.0);
    }

    #[test]
    fn prefill_grows_with_positions_and_attention_quadratically() {
        let shape = Shape::of(&llama_7b(), None).unwrap();
        let short = shape.cost(Phase::Prefill, true, 1, 512, 2.0);
        let long = shape.cost(Phase::Prefill, true, 1, 1024, 2.0);
        let ratio = long.flops / short.flops;
        assert!(ratio > 2.0 && ratio < 2.2, "{ratio}");
        assert!(short.intensity() > 100.0, "prefill is compute bound");
        let batch = shape.cost(Phase::Prefill, true, 4, 512, 2.0);
        assert!((batch.flops / short.flops - 4.0).abs() < 1e-9);
        // Weights are read once a call; only the token rows looked up grow with the rows.
        let rows = 3.0 * 512.0 * shape.hidden as f64 * 2.0;
        assert_eq!(
            batch.weight_bytes,
            short.weight_bytes + rows,
            "weights read once"
        );
    }

    #[test]
    fn absurd_configs_saturate() {
        let huge = json!({"hidden_size": u64::MAX, "num_hidden_layers": u64::MAX,
                          "vocab_size": u64::MAX, "num_attention_heads": 1});
        let shape = Shape::of(&huge, None).unwrap();
        assert_eq!(shape.parameters(true), u64::MAX);
        let c = shape.cost(
            Phase::Decode { cached: usize::MAX },
            true,
            usize::MAX,
            1,
            4.0,
        );
        assert!(c.flops.is_infinite() || c.flops > 1e30);
    }

    #[test]
    fn towers_and_encoder_decoders() {
        let clip = json!({"model_type": "clip",
            "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                            "num_attention_heads": 8, "vocab_size": 49408, "max_position_embeddings": 77},
            "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                              "num_attention_heads": 12, "image_size": 224, "patch_size": 32}});
        assert!(Shape::of(&clip, None).is_none(), "no top-level tower");
        let vision = Shape::of(&clip, Some("vision_config")).unwrap();
        // ViT-B/32: 85M in the layers.
        let layers = vision.matmul_parameters(false);
        assert!((layers - 85.05e6).abs() / 85.05e6 < 0.01, "{layers}");
        let t5 = json!({"model_type": "t5", "d_model": 512, "d_ff": 2048, "num_layers": 6,
                        "num_decoder_layers": 6, "num_heads": 8, "d_kv": 64, "vocab_size": 32128});
        let shape = Shape::of(&t5, None).unwrap();
        // t5-small: 60.5M (tied head, relative positions).
        let p = shape.parameters(true) as f64;
        assert!((p - 60.5e6).abs() / 60.5e6 < 0.03, "{p}");
    }
}
