//! The native engine's matmul rate: candle's own product on the device, the kernels the
//! layers run on, timed by the shared protocol (`ia_engine::calibration`).

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
    let (a, b) = (tensor(0.5)?, tensor(-0.25)?);
    let (rate, samples) = time_products(n, || {
        let product = a.matmul(&b).map_err(rt)?;
        device.synchronize().map_err(rt)?;
        drop(product);
        Ok(())
    })?;
    Ok((n, rate, samples))
}
