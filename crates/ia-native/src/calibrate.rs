//! The native engine's matmul rate on the product its layers run, timed by the shared
//! protocol (`ia_engine::calibration`): on the CPU our linear-layer kernel (f32 through gemm,
//! bf16 on AMX), elsewhere candle's matmul.

use crate::kernels;
use candle_core::{DType, Device, Tensor};
use ia_engine::calibration::{operand, time_products, MATMUL_SIZE};
use ia_engine::EngineError;

/// (n, median FLOP/s, products timed).
pub fn matmul(device: &Device, dtype: DType) -> Result<(usize, f64, usize), EngineError> {
    let rt = |e: candle_core::Error| EngineError::Runtime(crate::candle_message(&e));
    let n = MATMUL_SIZE;
    let tensor = |offset: f32| -> Result<Tensor, EngineError> {
        Tensor::from_vec(operand(n, offset), (n, n), device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(rt)
    };
    let (rate, samples) = if device.is_cpu() && matches!(dtype, DType::F32 | DType::BF16) {
        let f32_operand =
            |offset: f32| Tensor::from_vec(operand(n, offset), (n, n), device).map_err(rt);
        let a = f32_operand(0.5)?;
        // The layer's weight is [out, in]; the product is a . weight^T.
        let weight =
            kernels::Weight::new(&f32_operand(-0.25)?, dtype == DType::BF16).map_err(rt)?;
        time_products(n, || {
            kernels::linear(&a, &weight, None, kernels::Activation::Identity, None)
                .map_err(rt)
                .map(drop)
        })?
    } else {
        let (a, b) = (tensor(0.5)?, tensor(-0.25)?);
        time_products(n, || {
            let product = a.matmul(&b).map_err(rt)?;
            device.synchronize().map_err(rt)?;
            drop(product);
            Ok(())
        })?
    };
    Ok((n, rate, samples))
}
