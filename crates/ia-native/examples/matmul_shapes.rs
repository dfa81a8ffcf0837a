//! Linear-layer products on the shapes of BERT-base's and MiniLM's projections: candle's
//! matmul against `ia_native::kernels::linear` with the weight as gemm takes it ([in, out],
//! threads split by output columns), with the weight as the engine packs it at load (on
//! AVX2-only CPUs, panels for our own kernel; elsewhere the same as the first) and, where the
//! CPU has AMX or AVX512-BF16, its bf16 products.
//! `cargo run --release -p ia-native --example matmul_shapes [ROWS ...]` (default 16, 128, 512,
//! 1024; ViT-base's batch of 8 is 1576).
use candle_core::{Device, Tensor};
use ia_native::kernels::{bf16, linear, Activation::Identity, Weight};
use std::time::Instant;

/// The fastest of `reps` calls: on a shared machine the others measure the neighbours.
fn time(
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!("threads: {}", rayon::current_num_threads());
    let mut row_counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("row counts"))
        .collect();
    if row_counts.is_empty() {
        row_counts = vec![16, 128, 512, 1024];
    }
    for rows in row_counts {
        for (k, n) in [
            (768usize, 2304usize),
            (768, 768),
            (768, 3072),
            (3072, 768),
            (384, 1152),
            (384, 1536),
            (1536, 384),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let wt = w.t()?;
            let reps = (40 * 128 / rows).max(8);
            let flop = 2.0 * (rows * k * n) as f64;
            let candle = time(reps, || x.matmul(&wt))?;
            let gemm_weight = Weight::Transposed(wt.contiguous()?);
            let gemm = time(reps, || linear(&x, &gemm_weight, None, Identity, None))?;
            let f32_weight = Weight::new(&w, false)?;
            let ours = time(reps, || linear(&x, &f32_weight, None, Identity, None))?;
            let bf16 = if bf16::available() {
                let bf16_weight = Weight::new(&w, true)?;
                let t = time(reps, || linear(&x, &bf16_weight, None, Identity, None))?;
                format!("{:>6.1}", flop / t / 1e9)
            } else {
                "     -".into()
            };
            println!(
                "{rows:>5} x {k:>4} x {n:>4}  candle {:>6.1}  gemm {:>6.1}  packed {:>6.1}  bf16 {bf16} GFLOP/s",
                flop / candle / 1e9,
                flop / gemm / 1e9,
                flop / ours / 1e9
            );
        }
    }
    Ok(())
}
