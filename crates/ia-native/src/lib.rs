//! The native engine: models written against candle, running in-process with no runtime to
//! install. It is the default engine of `ipfs-accelerate bench`.
//!
//! One file per architecture under [`models`]; each deserialises the Hugging Face
//! `config.json` as is and loads tensors under the checkpoint's own names.

mod calibrate;
mod heap;
pub mod kernels;
pub mod models;
pub mod training;
mod weights;

use candle_core::{DType, Device, Tensor};
use ia_engine::{
    Bandwidth, Capability, DispatchCost, Engine, EngineError, MatmulRate, OutputTensor, Placement,
    Precision, Session, SpeechRecognizer, TextGenerator,
};
use ia_hardware::Platform;
use ia_models::{Model, ModelClass};

pub use heap::LargeBlocksOnCacheLines;
pub use weights::load_var_builder;

// The unit tests run the kernels on buffers aligned as the binaries' are.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: LargeBlocksOnCacheLines = LargeBlocksOnCacheLines;

/// Fixes the number of threads of rayon's pool, which candle's matrix products and our
/// kernels share, to the physical cores that the process may use: candle's count (the logical
/// CPUs available to the process) capped by the machine's physical cores. Hyper-threads of
/// one core share its vector units, so a product gains nothing from the second one and every
/// barrier waits for it; PyTorch and llama.cpp also default to physical cores. Setting the
/// variable also spares candle 0.11 working its count out again on every matrix product
/// (reading /proc/cpuinfo each time: about 0.1 ms, more than a small product costs). A
/// count the user set is left alone.
///
/// Call it first thing in `main`, before any other thread exists: it sets an environment
/// variable of the process, and gives every thread glibc's main arena (`heap::one_arena`).
pub fn settle_thread_count() {
    heap::one_arena();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let available = candle_core::utils::get_num_threads();
        let threads = ia_hardware::physical_core_count()
            .map_or(available, |cores| available.min(cores))
            .max(1);
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// The candle version this engine was built with, recorded with every result.
pub const CANDLE_VERSION: &str = "0.11.1";

#[derive(Debug, Default)]
pub struct NativeEngine;

impl NativeEngine {
    pub fn new() -> Self {
        Self
    }
}

/// candle 0.11's CPU backend has no bf16 matmul: refused before anything is loaded.
fn check_dtype(platform: Platform, dtype: DType) -> Result<(), EngineError> {
    if dtype == DType::BF16 && platform == Platform::Cpu {
        return Err(EngineError::Unsupported(
            "bf16 on the CPU runs BERT, ViT, CLIP, X-CLIP, CLAP, DETR, Wav2Vec2, Whisper and LLaMA, Mistral, Qwen2, Qwen3, OPT, T5, LLaVA and Qwen-VL generation only (on AMX or AVX512-BF16): candle's CPU backend has no bf16 matmul (use f32, f16, or the openvino engine)".into(),
        ));
    }
    Ok(())
}

fn device_for(platform: Platform) -> Result<(Device, String), EngineError> {
    match platform {
        Platform::Cpu => Ok((Device::Cpu, "cpu".into())),
        #[cfg(feature = "cuda")]
        Platform::Cuda => Device::new_cuda(0)
            .map(|d| (d, "cuda:0".to_string()))
            .map_err(|e| EngineError::Runtime(format!("CUDA device 0: {e}"))),
        #[cfg(not(feature = "cuda"))]
        Platform::Cuda => Err(EngineError::Unsupported(
            "this build of the native engine has no CUDA support (build ia-native with --features cuda)".into(),
        )),
        other => Err(EngineError::Unsupported(format!(
            "the native engine does not run on {other}"
        ))),
    }
}

fn dtype_for(precision: Precision) -> Result<DType, EngineError> {
    match precision {
        Precision::F32 => Ok(DType::F32),
        Precision::F16 => Ok(DType::F16),
        Precision::Bf16 => Ok(DType::BF16),
        other => Err(EngineError::Unsupported(format!(
            "precision {other} is not available for this model on the native engine"
        ))),
    }
}

/// The dtype of a floating-point matmul calibration at `at`, or why the engine has none.
fn matmul_dtype(at: Placement) -> Result<DType, EngineError> {
    let dtype = dtype_for(at.precision).map_err(|_| {
        EngineError::Unsupported(format!(
            "the native engine has no {} matmul: it computes in f32, f16 or bf16, and \
             multiplies 8-bit integers in the products of its q8_0 and q4_k weights",
            at.precision
        ))
    })?;
    if at.platform == Platform::Cpu && dtype == DType::BF16 {
        if !kernels::bf16::available() {
            return Err(EngineError::Unsupported(format!(
                "bf16 on the CPU runs on AMX or AVX512-BF16, and {}",
                kernels::bf16::unavailable_reason()
            )));
        }
    } else {
        check_dtype(at.platform, dtype)?;
    }
    Ok(dtype)
}

impl Engine for NativeEngine {
    fn name(&self) -> &'static str {
        "native"
    }

    fn version(&self) -> String {
        format!("candle {CANDLE_VERSION}")
    }

    fn supports(&self, class: ModelClass, on: Platform, to: Capability) -> Result<(), EngineError> {
        let (platform, capability) = (on, to);
        device_for_check(platform)?;
        use ModelClass as C;
        let name = class.as_str();
        let refusal = match capability {
            Capability::Run
                if matches!(
                    class,
                    C::Bert
                        | C::Vit
                        | C::Clip
                        | C::Clap
                        | C::Detr
                        | C::Whisper
                        | C::Wav2vec2
                        | C::Xclip
                ) =>
            {
                return Ok(())
            }
            Capability::Generate
                if matches!(class, C::Llama | C::Qwen | C::T5 | C::Llava | C::LlavaNext) =>
            {
                return Ok(())
            }
            Capability::Transcribe if matches!(class, C::Whisper | C::Wav2vec2) => return Ok(()),
            Capability::Run => format!("the native engine has no {name} implementation yet"),
            Capability::Generate => {
                format!("the native engine does not generate text with {name} models")
            }
            Capability::Transcribe => {
                format!("the native engine does not transcribe speech with {name} models")
            }
        };
        Err(EngineError::Unsupported(refusal))
    }

    fn load_trainer(
        &self,
        model: &Model,
        at: Placement,
        options: &ia_engine::TrainingOptions,
    ) -> Result<Box<dyn ia_engine::Trainer>, EngineError> {
        if at.platform != Platform::Cpu {
            return Err(EngineError::Unsupported(format!(
                "the native engine trains on the CPU only (gradient checkpointing's recompute \
                 is a CPU operation), not on {}",
                at.platform
            )));
        }
        Ok(Box::new(training::TrainingSession::load(
            model, at, options,
        )?))
    }

    fn calibrate_matmul(&self, at: Placement) -> Result<MatmulRate, EngineError> {
        let (device, name) = device_for(at.platform)?;
        let (size, flops_per_s, samples) = match kernels::quant::Format::of(at.precision) {
            Some(_) if !device.is_cpu() => {
                return Err(EngineError::Unsupported(format!(
                    "{} products run on the CPU only",
                    at.precision
                )));
            }
            Some(format) => calibrate::quantised_matmul(format)?,
            None => calibrate::matmul(&device, matmul_dtype(at)?)?,
        };
        Ok(MatmulRate {
            device: name,
            size,
            flops_per_s,
            samples,
        })
    }

    fn calibrate_dispatch(&self, at: Placement) -> Result<DispatchCost, EngineError> {
        let (device, name) = device_for(at.platform)?;
        calibrate::dispatch(&device, name)
    }

    /// Off the CPU only: the CPU's memory is the host's, whose STREAM triad the calibration
    /// measures on every core.
    fn calibrate_bandwidth(&self, at: Placement) -> Result<Bandwidth, EngineError> {
        let (device, name) = device_for(at.platform)?;
        if device.is_cpu() {
            return Err(EngineError::Unsupported(
                "the CPU's memory is the host's: the STREAM triad measures it".into(),
            ));
        }
        calibrate::bandwidth(&device, name)
    }

    fn load(&self, model: &Model, at: Placement) -> Result<Box<dyn Session>, EngineError> {
        let ctx = self.context(model, at, Capability::Run)?;
        let session: Box<dyn Session> = match model.class {
            ModelClass::Bert => models::bert::BertSession::load(ctx)?,
            ModelClass::Vit => models::vit::VitSession::load(ctx)?,
            ModelClass::Clip => models::clip::ClipSession::load(ctx)?,
            ModelClass::Detr => models::detr::DetrSession::load(ctx)?,
            ModelClass::Clap => models::clap::ClapSession::load(ctx)?,
            ModelClass::Whisper => Box::new(models::whisper::load(ctx)?),
            ModelClass::Wav2vec2 => Box::new(models::wav2vec2::Wav2Vec2Session::load(ctx)?),
            ModelClass::Xclip => models::xclip::XclipSession::load(ctx)?,
            _ => unreachable!("checked by supports()"),
        };
        Ok(Box::new(heap::Retained::new(session)))
    }

    fn load_generator(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<Box<dyn TextGenerator>, EngineError> {
        let ctx = self.context(model, at, Capability::Generate)?;
        let generator = match model.class {
            ModelClass::Qwen if models::qwen2_vl::is_qwen_vl(model.source.config()) => {
                models::qwen2_vl::Qwen2Vl::load(ctx)
            }
            ModelClass::Llama | ModelClass::Qwen => models::causal_lm::CausalLm::load(ctx),
            ModelClass::T5 => models::t5::T5Generator::load(ctx),
            ModelClass::Llava | ModelClass::LlavaNext => models::llava::Llava::load(ctx),
            _ => unreachable!("checked by supports()"),
        }?;
        Ok(Box::new(heap::OnPool(generator)))
    }

    fn load_speech_recognizer(
        &self,
        model: &Model,
        at: Placement,
    ) -> Result<Box<dyn SpeechRecognizer>, EngineError> {
        let ctx = self.context(model, at, Capability::Transcribe)?;
        let recognizer: Box<dyn SpeechRecognizer> = match model.class {
            ModelClass::Whisper => Box::new(models::whisper::load(ctx)?),
            ModelClass::Wav2vec2 => Box::new(ia_engine::ctc::CtcRecognizer::new(
                Box::new(models::wav2vec2::Wav2Vec2Session::load(ctx)?),
                model,
            )?),
            _ => unreachable!("checked by supports()"),
        };
        Ok(Box::new(heap::Retained::new(recognizer)))
    }
}

impl NativeEngine {
    /// Checks that this engine can do `capability` with the model at the placement, then
    /// gives what every architecture loads from: the source, device, dtype and session info.
    fn context<'a>(
        &self,
        model: &'a Model,
        at: Placement,
        capability: Capability,
    ) -> Result<models::LoadContext<'a>, EngineError> {
        let (
            source,
            Placement {
                platform,
                precision,
            },
        ) = (&model.source, at);
        self.supports(model.class, platform, capability)?;
        // Quantised LLaMA/Qwen weights run with f32 activations; nothing else is quantised
        // (Qwen-VL neither: its q8_0 would otherwise run, and be recorded, as f32).
        let quantised_decoder = capability == Capability::Generate
            && matches!(model.class, ModelClass::Llama | ModelClass::Qwen)
            && !models::qwen2_vl::is_qwen_vl(source.config())
            && models::quantized::ggml_dtype(precision).is_some();
        // bf16 on the CPU, for BERT, ViT, CLIP, X-CLIP and CLAP (their towers), DETR (its
        // backbone's convolutions too), Wav2Vec2 and Whisper (their linear layers and
        // convolutions), the LLaMA-family decoder, OPT, T5,
        // and LLaVA and Qwen-VL (their vision towers and decoders): f32 weights and
        // activations, bf16 products on AMX or AVX512-BF16.
        let bf16_products = precision == Precision::Bf16
            && platform == Platform::Cpu
            && match capability {
                Capability::Run | Capability::Transcribe => matches!(
                    model.class,
                    ModelClass::Bert
                        | ModelClass::Vit
                        | ModelClass::Clip
                        | ModelClass::Xclip
                        | ModelClass::Clap
                        | ModelClass::Detr
                        | ModelClass::Wav2vec2
                        | ModelClass::Whisper
                ),
                Capability::Generate => {
                    matches!(
                        model.class,
                        ModelClass::Llava | ModelClass::LlavaNext | ModelClass::T5
                    ) || matches!(model.class, ModelClass::Llama | ModelClass::Qwen)
                        && (models::qwen2_vl::is_qwen_vl(source.config())
                            || models::decoder::runs(source.config())
                            || models::opt::runs(source.config()))
                }
            };
        if bf16_products && !kernels::bf16::available() {
            return Err(EngineError::Unsupported(format!(
                "bf16 on the CPU runs on AMX or AVX512-BF16, and {} (use f32, or the openvino engine)",
                kernels::bf16::unavailable_reason()
            )));
        }
        let dtype = if quantised_decoder || bf16_products {
            DType::F32
        } else {
            dtype_for(precision)?
        };
        check_dtype(platform, dtype)?;
        // Weights and position tables must fit before candle allocates them: a failed
        // allocation aborts the process.
        ia_engine::memory::check_fits(
            source,
            precision,
            ia_models::footprint::Workload {
                batch: 1,
                positions: 0,
                cached_positions: 0,
                beams: 1,
            },
        )?;
        let (device, device_name) = device_for(platform)?;
        Ok(models::LoadContext {
            source,
            device,
            dtype,
            products: if bf16_products {
                models::encoder::Products::Bf16
            } else {
                models::encoder::Products::AsLoaded
            },
            info: ia_engine::SessionInfo {
                engine: self.name().into(),
                engine_version: self.version(),
                platform,
                device: device_name,
                precision,
                weights: source.weights_kind(),
                parameter_count: 0,
                output_names: vec![],
            },
        })
    }
}

/// Platform check without creating a device (creating a CUDA context is slow).
fn device_for_check(platform: Platform) -> Result<(), EngineError> {
    match platform {
        Platform::Cpu => Ok(()),
        Platform::Cuda if cfg!(feature = "cuda") => Ok(()),
        _ => device_for(platform).map(|_| ()),
    }
}

/// A candle tensor handed out as an engine output.
pub(crate) struct CandleOutput(pub Tensor);

impl OutputTensor for CandleOutput {
    fn shape(&self) -> Vec<usize> {
        self.0.dims().to_vec()
    }

    fn to_f32_vec(&self) -> Result<Vec<f32>, EngineError> {
        self.0
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(rt)
    }
}

pub(crate) fn rt(e: candle_core::Error) -> EngineError {
    EngineError::Runtime(candle_message(&e))
}

/// candle attaches a backtrace to its errors when RUST_BACKTRACE is set; users get the message.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The native engine answers per capability: it generates with LLaMA but has no forward
    /// pass for it; it transcribes with Whisper but not with BERT.
    #[test]
    fn supports_answers_per_capability() {
        let e = NativeEngine::new();
        let ok = |class, cap| e.supports(class, Platform::Cpu, cap).is_ok();
        assert!(ok(ModelClass::Llama, Capability::Generate));
        assert!(!ok(ModelClass::Llama, Capability::Run));
        assert!(ok(ModelClass::T5, Capability::Generate));
        assert!(ok(ModelClass::Whisper, Capability::Transcribe));
        assert!(ok(ModelClass::Whisper, Capability::Run));
        assert!(ok(ModelClass::Bert, Capability::Run));
        let why = e
            .supports(ModelClass::Bert, Platform::Cpu, Capability::Transcribe)
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("does not transcribe speech with bert"),
            "{why}"
        );
        assert!(!ok(ModelClass::Clip, Capability::Generate));
    }
}
