//! Training on the native engine: a real optimiser step (forward, loss, backward, AdamW) with
//! candle's autograd, for `bench --mode training`.
//!
//! The inference models in [`crate::models`] run on our own kernels, which have no backward
//! pass; the training models here are built from candle's differentiable operations only (no
//! fused softmax or norm: candle implements no backward for those). Each architecture's file
//! reads the same `config.json` through the inference model's `Config` and the same tensor
//! names, with its training head (masked-LM, image classification, causal LM,
//! conditional generation) named as transformers names it, so the parameters after N steps
//! can be compared with PyTorch's by name.
//!
//! Every tensor the model reads becomes a trainable f32 [`Var`], updated in place by
//! [`adamw`] with PyTorch's AdamW arithmetic. A head the checkpoint lacks
//! (BERT's masked-LM head on a `BertModel` checkpoint) is initialised from the seeded random
//! values, as transformers initialises a missing head. Dropout is not applied, so a step is
//! deterministic and comparable with PyTorch's.

mod adamw;
mod bert;
mod decoder;
mod layers;
mod opt;
mod t5;
mod vit;

use crate::{candle_message, device_for};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use ia_engine::training::{Trainer, TrainingMemory, TrainingOptions};
use ia_engine::{inputs, EngineError, InputSpec, Inputs, Placement, SessionInfo};
use ia_models::{Modality, Model, ModelClass, ModelSource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use layers::Ctx;

/// A labelled batch, as the training step consumes it. Labels of -100 are ignored by the loss
/// (transformers' convention).
#[derive(Debug, Clone)]
pub enum Batch {
    /// Token rows [batch, seq]: masked-LM labels per position, or a causal LM's inputs (which
    /// are its labels, shifted by the model).
    Tokens {
        batch: usize,
        seq_len: usize,
        input_ids: Vec<u32>,
        labels: Vec<i64>,
    },
    /// Images (NCHW) with one class label each.
    Pixels {
        shape: [usize; 4],
        pixel_values: Vec<f32>,
        labels: Vec<i64>,
    },
    /// Encoder token rows [batch, seq_len] and the target rows [batch, target_len].
    Seq2Seq {
        batch: usize,
        seq_len: usize,
        input_ids: Vec<u32>,
        target_len: usize,
        labels: Vec<i64>,
    },
}

impl Batch {
    /// Samples in the batch and the tokens they hold (text models).
    pub fn items(&self) -> (usize, Option<usize>) {
        match self {
            Batch::Tokens { batch, seq_len, .. } => (*batch, Some(batch * seq_len)),
            Batch::Pixels { shape, .. } => (shape[0], None),
            Batch::Seq2Seq {
                batch,
                seq_len,
                target_len,
                ..
            } => (*batch, Some(batch * (seq_len + target_len))),
        }
    }
}

/// A token batch as the text models read it.
pub(crate) struct TokenRows<'a> {
    /// [batch, seq_len] token ids.
    pub ids: Tensor,
    pub labels: &'a [i64],
    pub batch: usize,
    pub seq_len: usize,
}

impl Batch {
    /// The token rows of a `Tokens` batch on `device`; `model` names who refuses another kind.
    pub(crate) fn token_rows(
        &self,
        device: &Device,
        model: &str,
    ) -> candle_core::Result<TokenRows<'_>> {
        let Batch::Tokens {
            batch,
            seq_len,
            input_ids,
            labels,
        } = self
        else {
            candle_core::bail!("{model} trains on token batches");
        };
        Ok(TokenRows {
            ids: Tensor::from_slice(input_ids, (*batch, *seq_len), device)?,
            labels,
            batch: *batch,
            seq_len: *seq_len,
        })
    }
}

/// A training model: the loss of a batch, as a scalar tensor candle can differentiate.
pub(crate) trait TrainingModel: Send {
    fn loss(&self, batch: &Batch, ctx: &Ctx) -> candle_core::Result<Tensor>;
}

/// The model's trainable parameters by checkpoint name, in the order the model read them.
#[derive(Default)]
pub(crate) struct Params {
    vars: Mutex<Vec<(String, Var)>>,
    /// Tensors the checkpoint did not have, initialised from the seeded random values.
    initialised: Mutex<Vec<String>>,
}

impl Params {
    fn vars(&self) -> Vec<(String, Var)> {
        self.vars.lock().expect("params lock").clone()
    }
}

/// Reads each tensor once from the checkpoint (or the seeded random values) into a [`Var`].
/// `bert.embeddings.*` falls back to `embeddings.*` (a `BertModel` checkpoint under a task
/// head's prefix); a tensor found under neither name is initialised randomly.
struct TrainableBackend {
    source: Box<dyn SimpleBackend>,
    /// Present for a checkpoint: the random values of the tensors it lacks.
    missing: Option<Box<dyn SimpleBackend>>,
    params: Arc<Params>,
}

impl SimpleBackend for TrainableBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        _dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some((_, v)) = self
            .params
            .vars
            .lock()
            .expect("params lock")
            .iter()
            .find(|(n, _)| n == name)
        {
            return Ok(v.as_tensor().clone());
        }
        let t = match &self.missing {
            None => self.source.get(s, name, h, DType::F32, dev)?,
            Some(random) => {
                let unprefixed = name.split_once('.').map(|(_, rest)| rest);
                if self.source.contains_tensor(name) {
                    self.source.get(s, name, h, DType::F32, dev)?
                } else if let Some(rest) = unprefixed.filter(|r| self.source.contains_tensor(r)) {
                    self.source.get(s, rest, h, DType::F32, dev)?
                } else {
                    self.params
                        .initialised
                        .lock()
                        .expect("params lock")
                        .push(name.to_string());
                    random.get(s, name, h, DType::F32, dev)?
                }
            }
        };
        let var = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
        let tensor = var.as_tensor().clone();
        self.params
            .vars
            .lock()
            .expect("params lock")
            .push((name.to_string(), var));
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.source.get_unchecked(name, DType::F32, dev)?;
        self.get(t.shape().clone(), name, Init::Const(0.0), DType::F32, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source.contains_tensor(name)
    }
}

/// A model loaded for training on one batch: each step is forward, loss, backward and one
/// AdamW update of every parameter.
pub struct TrainingSession {
    info: SessionInfo,
    model: Box<dyn TrainingModel>,
    params: Vec<(String, Var)>,
    optimizer: adamw::AdamW,
    batch: Batch,
    ctx: Ctx,
    gradient_bytes: u64,
    /// Parameters the checkpoint lacked, initialised randomly (a new task head).
    pub initialised: Vec<String>,
    _heap: crate::heap::RetainedHeap,
}

impl TrainingSession {
    /// Loads `model` for training with `options` on the synthetic batch for its task.
    pub fn load(
        model: &Model,
        at: Placement,
        options: &TrainingOptions,
    ) -> Result<Self, EngineError> {
        trainable(model)?;
        let batch = synthetic_batch(model, options)?;
        Self::load_with_batch(model, at, options, batch)
    }

    /// Loads `model` for training on a given batch (the parity test's).
    pub fn load_with_batch(
        model: &Model,
        at: Placement,
        options: &TrainingOptions,
        batch: Batch,
    ) -> Result<Self, EngineError> {
        let (device, device_name) = device_for(at.platform)?;
        let source = &model.source;
        let missing: Option<Box<dyn SimpleBackend>> = match source {
            ModelSource::Checkpoint(_) => {
                Some(Box::new(crate::weights::random_backend(source.config(), 0)))
            }
            ModelSource::RandomInit { .. } => None,
        };
        let params = Arc::new(Params::default());
        let backend = TrainableBackend {
            source: crate::weights::source_backend(source)?,
            missing,
            params: params.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let ctx = Ctx::new(options, params.clone());
        let built = build(model, vb, &ctx);
        let model_impl = built.map_err(|e| match e {
            Built::Engine(e) => e,
            Built::Candle(e) => EngineError::InvalidModel(format!(
                "cannot build {} for training: {}",
                model.class.as_str(),
                candle_message(&e)
            )),
        })?;
        let vars = params.vars();
        let parameter_count = vars.iter().map(|(_, v)| v.elem_count() as u64).sum();
        let optimizer = adamw::AdamW::new(
            vars.iter().map(|(_, v)| v.clone()).collect(),
            options.optimizer,
        )
        .map_err(|e| EngineError::Runtime(candle_message(&e)))?;
        let initialised = params.initialised.lock().expect("params lock").clone();
        let info = SessionInfo {
            engine: "native".into(),
            engine_version: format!("candle {}", crate::CANDLE_VERSION),
            platform: at.platform,
            device: device_name,
            precision: at.precision,
            weights: source.weights_kind(),
            parameter_count,
            output_names: vec!["loss".into()],
        };
        Ok(Self {
            info,
            model: model_impl,
            params: vars,
            optimizer,
            batch,
            ctx,
            gradient_bytes: 0,
            initialised,
            _heap: crate::heap::RetainedHeap::new(),
        })
    }

    /// One optimiser step; returns the loss before the update.
    pub fn step(&mut self) -> Result<f32, EngineError> {
        let mut run = || -> candle_core::Result<f32> {
            let loss = self.model.loss(&self.batch, &self.ctx)?;
            let mut grads = loss.backward()?;
            self.ctx
                .add_recomputed_gradients(&self.params, &mut grads)?;
            self.gradient_bytes = self
                .params
                .iter()
                .filter_map(|(_, v)| grads.get(v))
                .map(|g| (g.elem_count() * g.dtype().size_in_bytes()) as u64)
                .sum();
            self.optimizer.step(&grads)?;
            loss.to_scalar::<f32>()
        };
        run().map_err(|e| EngineError::Runtime(candle_message(&e)))
    }

    /// Every parameter by checkpoint name, as it is now.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }
}

impl Trainer for TrainingSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn step(&mut self) -> Result<f32, EngineError> {
        TrainingSession::step(self)
    }

    fn memory(&self) -> TrainingMemory {
        let weights: u64 = self
            .params
            .iter()
            .map(|(_, v)| (v.elem_count() * v.dtype().size_in_bytes()) as u64)
            .sum();
        TrainingMemory {
            weights,
            gradients: self.gradient_bytes,
            // AdamW keeps two moments of every parameter, in the parameter's dtype.
            optimizer_state: 2 * weights,
        }
    }

    fn items(&self) -> (usize, Option<usize>) {
        self.batch.items()
    }
}

enum Built {
    Engine(EngineError),
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for Built {
    fn from(e: candle_core::Error) -> Self {
        Built::Candle(e)
    }
}

impl From<EngineError> for Built {
    fn from(e: EngineError) -> Self {
        Built::Engine(e)
    }
}

/// Refuses the classes the native engine has no training model of.
pub fn trainable(model: &Model) -> Result<(), EngineError> {
    match model.class {
        ModelClass::Bert | ModelClass::Vit | ModelClass::T5 => Ok(()),
        ModelClass::Llama | ModelClass::Qwen
            if !crate::models::qwen2_vl::is_qwen_vl(model.source.config()) =>
        {
            Ok(())
        }
        other => Err(EngineError::Unsupported(format!(
            "the native engine trains BERT, ViT, LLaMA/Mistral/Qwen2/Qwen3, OPT and T5 models, \
             not {}",
            other.as_str()
        ))),
    }
}

/// The training model of `model`'s architecture.
fn build(model: &Model, vb: VarBuilder, ctx: &Ctx) -> Result<Box<dyn TrainingModel>, Built> {
    let source = &model.source;
    Ok(match model.class {
        ModelClass::Bert => Box::new(bert::BertForMaskedLm::load(
            vb,
            &crate::models::parse_config(source, "BERT")?,
            ctx,
        )?),
        ModelClass::Vit => Box::new(vit::VitForImageClassification::load(
            vb,
            &crate::models::parse_config(source, "ViT")?,
            num_labels(source.config()),
            ctx,
        )?),
        ModelClass::Llama if model.model_type == "opt" => Box::new(opt::OptForCausalLm::load(
            vb,
            &crate::models::parse_config(source, "OPT")?,
            ctx,
        )?),
        ModelClass::Llama | ModelClass::Qwen
            if !crate::models::qwen2_vl::is_qwen_vl(source.config()) =>
        {
            Box::new(decoder::DecoderForCausalLm::load(
                vb,
                &crate::models::decoder::Config::from_json(source.config())?,
                ctx,
            )?)
        }
        ModelClass::T5 => Box::new(t5::T5ForConditionalGeneration::load(
            vb,
            &crate::models::parse_config(source, "T5")?,
            ctx,
        )?),
        _ => {
            return Err(Built::Engine(trainable(model).err().unwrap_or_else(|| {
                EngineError::Unsupported(format!("no training model of {}", model.class.as_str()))
            })))
        }
    })
}

/// Labels of an image classifier: `id2label`'s size, or transformers' default of 2.
fn num_labels(config: &serde_json::Value) -> usize {
    config
        .get("id2label")
        .and_then(|m| m.as_object())
        .map(|m| m.len())
        .filter(|&n| n > 0)
        .or_else(|| {
            config
                .get("num_labels")
                .and_then(|n| n.as_u64())
                .map(|n| n as usize)
        })
        .unwrap_or(2)
}

/// The synthetic labelled batch of a model's task: the benchmark's own inputs (tokenised
/// text, the test pictures) with labels made from them. Masked LM: every 7th token (about
/// transformers' 15 %) replaced by the mask token and predicted; causal LM: the tokens
/// themselves; T5: the sequence predicts itself reversed; images: classes in turn.
pub fn synthetic_batch(model: &Model, options: &TrainingOptions) -> Result<Batch, EngineError> {
    let (b, s) = (options.batch_size, options.seq_len);
    let text = || -> Result<Vec<u32>, EngineError> {
        match inputs::generate(model, Modality::Text, InputSpec::new(b, s))? {
            Inputs::Text { input_ids, .. } => Ok(input_ids),
            _ => Err(EngineError::InvalidInput("text inputs expected".into())),
        }
    };
    Ok(match model.class {
        ModelClass::Vit => {
            let Inputs::Image {
                shape,
                pixel_values,
            } = inputs::generate(model, Modality::Vision, InputSpec::new(b, s))?
            else {
                return Err(EngineError::InvalidInput("image inputs expected".into()));
            };
            let classes = num_labels(model.source.config()) as i64;
            Batch::Pixels {
                shape,
                pixel_values,
                labels: (0..b as i64).map(|i| i % classes).collect(),
            }
        }
        ModelClass::Bert => {
            let mask = mask_token(model);
            let mut input_ids = text()?;
            let mut labels = vec![-100i64; input_ids.len()];
            for (i, id) in input_ids.iter_mut().enumerate() {
                // Not the [CLS] that opens each row.
                if i % s != 0 && i % 7 == 3 {
                    labels[i] = *id as i64;
                    *id = mask;
                }
            }
            Batch::Tokens {
                batch: b,
                seq_len: s,
                input_ids,
                labels,
            }
        }
        ModelClass::T5 => {
            let input_ids = text()?;
            let labels = input_ids
                .chunks(s)
                .flat_map(|row| row.iter().rev().map(|&t| t as i64))
                .collect();
            Batch::Seq2Seq {
                batch: b,
                seq_len: s,
                input_ids,
                target_len: s,
                labels,
            }
        }
        _ => {
            let input_ids = text()?;
            let labels = input_ids.iter().map(|&t| t as i64).collect();
            Batch::Tokens {
                batch: b,
                seq_len: s,
                input_ids,
                labels,
            }
        }
    })
}

/// BERT's mask token: `[MASK]` in the tokenizer, else bert-base-uncased's id where the
/// vocabulary has it.
fn mask_token(model: &Model) -> u32 {
    let vocab = model
        .source
        .config()
        .get("vocab_size")
        .and_then(|v| v.as_u64())
        .unwrap_or(1) as u32;
    ia_engine::tokenizer::of(&model.source)
        .ok()
        .flatten()
        .and_then(|t| t.token_to_id("[MASK]"))
        .unwrap_or(103)
        .min(vocab.saturating_sub(1))
}

/// Gradients that recomputed layers (gradient checkpointing) add to the main backward's.
#[derive(Default)]
pub(crate) struct RecomputedGradients {
    by_param: Mutex<HashMap<candle_core::TensorId, Tensor>>,
}

impl RecomputedGradients {
    fn add(&self, params: &[(String, Var)], grads: &GradStore) -> candle_core::Result<()> {
        let mut acc = self.by_param.lock().expect("gradient lock");
        for (_, v) in params {
            if let Some(g) = grads.get(v) {
                let total = match acc.remove(&v.id()) {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                };
                acc.insert(v.id(), total);
            }
        }
        Ok(())
    }
}
