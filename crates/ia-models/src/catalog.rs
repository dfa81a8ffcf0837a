//! The model catalog: the 13 Hugging Face classes the framework covers.

use serde::Serialize;

/// The 13 key model classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelClass {
    Bert,
    T5,
    Llama,
    Clip,
    Vit,
    Clap,
    Whisper,
    Wav2vec2,
    Llava,
    LlavaNext,
    Xclip,
    Qwen,
    Detr,
}

impl ModelClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelClass::Bert => "bert",
            ModelClass::T5 => "t5",
            ModelClass::Llama => "llama",
            ModelClass::Clip => "clip",
            ModelClass::Vit => "vit",
            ModelClass::Clap => "clap",
            ModelClass::Whisper => "whisper",
            ModelClass::Wav2vec2 => "wav2vec2",
            ModelClass::Llava => "llava",
            ModelClass::LlavaNext => "llava_next",
            ModelClass::Xclip => "xclip",
            ModelClass::Qwen => "qwen",
            ModelClass::Detr => "detr",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Text,
    Vision,
    Audio,
    Multimodal,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Vision => "vision",
            Modality::Audio => "audio",
            Modality::Multimodal => "multimodal",
        }
    }
}

/// One catalog model.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    /// Short name used on the command line (`--models bert,vit`).
    pub key: &'static str,
    pub hf_id: &'static str,
    pub class: ModelClass,
    /// The seeds' family grouping: embedding, text_generation, text2text, vision, audio, multimodal.
    pub family: &'static str,
    /// Hugging Face pipeline task.
    pub task: &'static str,
    pub modality: Modality,
    /// What `--small-models` uses instead.
    pub small_hf_id: &'static str,
    /// The HF `config.json` of the canonical model, for `--random-weights` without a checkpoint.
    #[serde(skip)]
    pub config: Option<&'static str>,
    /// The HF `config.json` of the small variant.
    #[serde(skip)]
    pub small_config: Option<&'static str>,
}

impl CatalogEntry {
    pub fn id(&self, small: bool) -> &'static str {
        if small {
            self.small_hf_id
        } else {
            self.hf_id
        }
    }

    /// Whether `name` spells this entry's small variant (then `--small-models` is implied).
    pub fn names_small_variant(&self, name: &str) -> bool {
        self.small_hf_id.eq_ignore_ascii_case(name.trim())
    }

    pub fn builtin_config(&self, small: bool) -> Option<&'static str> {
        if small {
            self.small_config
        } else {
            self.config
        }
    }
}

macro_rules! entry {
    ($key:literal, $hf:literal, $class:ident, $family:literal, $task:literal, $modality:ident, $small:literal, $cfg:expr, $small_cfg:expr) => {
        CatalogEntry {
            key: $key,
            hf_id: $hf,
            class: ModelClass::$class,
            family: $family,
            task: $task,
            modality: Modality::$modality,
            small_hf_id: $small,
            config: $cfg,
            small_config: $small_cfg,
        }
    };
}

pub static CATALOG: &[CatalogEntry] = &[
    entry!(
        "bert",
        "bert-base-uncased",
        Bert,
        "embedding",
        "feature-extraction",
        Text,
        "sentence-transformers/all-MiniLM-L6-v2",
        Some(include_str!("configs/bert-base-uncased.json")),
        Some(include_str!("configs/all-MiniLM-L6-v2.json"))
    ),
    entry!(
        "t5",
        "t5-small",
        T5,
        "text2text",
        "text2text-generation",
        Text,
        "google/t5-efficient-tiny",
        Some(include_str!("configs/t5-small.json")),
        None
    ),
    entry!(
        "opt",
        "facebook/opt-125m",
        Llama,
        "text_generation",
        "text-generation",
        Text,
        "facebook/opt-125m",
        Some(include_str!("configs/opt-125m.json")),
        Some(include_str!("configs/opt-125m.json"))
    ),
    entry!(
        "clip",
        "openai/clip-vit-base-patch32",
        Clip,
        "multimodal",
        "zero-shot-image-classification",
        Multimodal,
        "openai/clip-vit-base-patch32",
        Some(include_str!("configs/clip-vit-base-patch32.json")),
        Some(include_str!("configs/clip-vit-base-patch32.json"))
    ),
    entry!(
        "vit",
        "google/vit-base-patch16-224",
        Vit,
        "vision",
        "image-classification",
        Vision,
        "WinKawaks/vit-tiny-patch16-224",
        Some(include_str!("configs/vit-base-patch16-224.json")),
        Some(include_str!("configs/vit-tiny-patch16-224.json"))
    ),
    entry!(
        "clap",
        "laion/clap-htsat-unfused",
        Clap,
        "audio",
        "zero-shot-audio-classification",
        Audio,
        "laion/clap-htsat-unfused",
        Some(include_str!("configs/clap-htsat-unfused.json")),
        Some(include_str!("configs/clap-htsat-unfused.json"))
    ),
    entry!(
        "whisper",
        "openai/whisper-tiny",
        Whisper,
        "audio",
        "automatic-speech-recognition",
        Audio,
        "openai/whisper-tiny.en",
        Some(include_str!("configs/whisper-tiny.json")),
        Some(include_str!("configs/whisper-tiny.en.json"))
    ),
    entry!(
        "wav2vec2",
        "facebook/wav2vec2-base",
        Wav2vec2,
        "audio",
        "automatic-speech-recognition",
        Audio,
        "facebook/wav2vec2-base",
        Some(include_str!("configs/wav2vec2-base.json")),
        Some(include_str!("configs/wav2vec2-base.json"))
    ),
    entry!(
        "llava",
        "llava-hf/llava-1.5-7b-hf",
        Llava,
        "multimodal",
        "image-text-to-text",
        Multimodal,
        "llava-hf/llava-interleave-qwen-0.5b-hf",
        Some(include_str!("configs/llava-1.5-7b-hf.json")),
        None
    ),
    entry!(
        "llava-next",
        "llava-hf/llava-v1.6-mistral-7b-hf",
        LlavaNext,
        "multimodal",
        "image-text-to-text",
        Multimodal,
        "llava-hf/llava-v1.6-mistral-7b-hf",
        Some(include_str!("configs/llava-v1.6-mistral-7b-hf.json")),
        Some(include_str!("configs/llava-v1.6-mistral-7b-hf.json"))
    ),
    entry!(
        "xclip",
        "microsoft/xclip-base-patch32",
        Xclip,
        "multimodal",
        "zero-shot-video-classification",
        Multimodal,
        "microsoft/xclip-base-patch32",
        // transformers' XCLIPConfig defaults, which are xclip-base-patch32's architecture.
        Some(include_str!("configs/xclip-base-patch32.json")),
        Some(include_str!("configs/xclip-base-patch32.json"))
    ),
    entry!(
        "qwen2",
        "Qwen/Qwen2-0.5B",
        Qwen,
        "text_generation",
        "text-generation",
        Text,
        "Qwen/Qwen2-0.5B",
        Some(include_str!("configs/Qwen2-0.5B.json")),
        Some(include_str!("configs/Qwen2-0.5B.json"))
    ),
    entry!(
        "qwen2-vl",
        "Qwen/Qwen2-VL-2B-Instruct",
        Qwen,
        "multimodal",
        "image-text-to-text",
        Multimodal,
        "Qwen/Qwen2-VL-2B-Instruct",
        Some(include_str!("configs/Qwen2-VL-2B-Instruct.json")),
        Some(include_str!("configs/Qwen2-VL-2B-Instruct.json"))
    ),
    entry!(
        "qwen2.5-vl",
        "Qwen/Qwen2.5-VL-3B-Instruct",
        Qwen,
        "multimodal",
        "image-text-to-text",
        Multimodal,
        "Qwen/Qwen2.5-VL-3B-Instruct",
        Some(include_str!("configs/Qwen2.5-VL-3B-Instruct.json")),
        Some(include_str!("configs/Qwen2.5-VL-3B-Instruct.json"))
    ),
    entry!(
        "qwen3-vl",
        "Qwen/Qwen3-VL-2B-Instruct",
        Qwen,
        "multimodal",
        "image-text-to-text",
        Multimodal,
        "Qwen/Qwen3-VL-2B-Instruct",
        Some(include_str!("configs/Qwen3-VL-2B-Instruct.json")),
        Some(include_str!("configs/Qwen3-VL-2B-Instruct.json"))
    ),
    entry!(
        "qwen3",
        "Qwen/Qwen3-0.6B",
        Qwen,
        "text_generation",
        "text-generation",
        Text,
        "Qwen/Qwen3-0.6B",
        Some(include_str!("configs/Qwen3-0.6B.json")),
        Some(include_str!("configs/Qwen3-0.6B.json"))
    ),
    entry!(
        "detr",
        "facebook/detr-resnet-50",
        Detr,
        "vision",
        "object-detection",
        Vision,
        "facebook/detr-resnet-50",
        Some(include_str!("configs/detr-resnet-50.json")),
        Some(include_str!("configs/detr-resnet-50.json"))
    ),
];

/// Finds a catalog entry by short key, canonical id or small-variant id.
pub fn lookup(name: &str) -> Option<&'static CatalogEntry> {
    let n = name.trim();
    CATALOG.iter().find(|e| {
        e.key.eq_ignore_ascii_case(n)
            || e.hf_id.eq_ignore_ascii_case(n)
            || e.small_hf_id.eq_ignore_ascii_case(n)
            || e.hf_id
                .rsplit('/')
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case(n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_hub_id_names_the_small_variant() {
        let e = lookup("openai/whisper-tiny.en").unwrap();
        assert!(e.names_small_variant("openai/whisper-tiny.en"));
        assert!(!e.names_small_variant("whisper"));
    }

    #[test]
    fn covers_all_thirteen_classes() {
        let mut classes: Vec<_> = CATALOG.iter().map(|e| e.class.as_str()).collect();
        classes.sort();
        classes.dedup();
        assert_eq!(classes.len(), 13);
    }

    #[test]
    fn builtin_configs_classify_to_their_entry() {
        for e in CATALOG {
            for cfg in [e.config, e.small_config].into_iter().flatten() {
                let v: serde_json::Value = serde_json::from_str(cfg).unwrap();
                let c = crate::classify_config(&v).unwrap();
                assert_eq!(c.class, e.class, "{}", e.key);
            }
        }
    }

    #[test]
    fn lookup_by_key_id_or_small_id() {
        assert_eq!(lookup("bert").unwrap().hf_id, "bert-base-uncased");
        assert_eq!(lookup("google/vit-base-patch16-224").unwrap().key, "vit");
        assert_eq!(
            lookup("sentence-transformers/all-MiniLM-L6-v2")
                .unwrap()
                .key,
            "bert"
        );
        assert!(lookup("no-such-model").is_none());
    }
}
