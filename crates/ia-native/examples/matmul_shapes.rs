//! Linear-layer products on the shapes of BERT-base's and MiniLM's projections: candle's
//! matmul against `ia_native::kernels::linear` with the weight as gemm takes it ([in, out],
//! threads split by output columns), with the weight as the engine packs it at load (on
//! AVX2-only CPUs, panels for our own kernel; elsewhere the same as the first) and, where the
//! CPU has AMX or AVX512-BF16, its bf16 products.
//! Then wav2vec2-base's convolutions.
//! `cargo run --release -p ia-native --example matmul_shapes [ROWS ...] [conv] [cold]` (rows
//! default to 16, 128, 512 and 1024; ViT-base's batch of 8 is 1576; `conv` alone: the
//! convolutions only (f32 and, where the CPU runs it, bf16); `attention` alone: self-attention only, f32 and, where the CPU runs it,
//! bf16, then causal and cached (decoder) attention; `ffn` alone: bf16 feed-forward blocks as
//! two `linear` calls against `feed_forward`; `cold`: each call of the linear layers takes the next of enough copies of the weight
//! to pass 96 MiB, so it comes from memory as a model's does, not from the caches).
use candle_core::{Device, Tensor};
use ia_native::kernels::{
    attention, bf16, cached_attention, conv1d_frames, conv_weight, feed_forward, linear,
    Activation::{GeluErf, Identity},
    Weight,
};
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

/// [`time`] of `f` on each of `items` in turn: each call takes the next copy of its weights.
fn time_rotating<T>(
    reps: usize,
    items: &[T],
    mut f: impl FnMut(&T) -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    let mut next = 0;
    time(reps, || {
        next = (next + 1) % items.len();
        f(&items[next])
    })
}

#[global_allocator]
static ALLOCATOR: ia_native::LargeBlocksOnCacheLines = ia_native::LargeBlocksOnCacheLines;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!("threads: {}", rayon::current_num_threads());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let convs_only = args.iter().any(|a| a == "conv");
    let attention_only = args.iter().any(|a| a == "attention");
    let cold = args.iter().any(|a| a == "cold");
    if args.iter().any(|a| a == "ffn") {
        return feed_forward_blocks(&dev);
    }
    let mut row_counts: Vec<usize> = args
        .iter()
        .filter(|a| !["conv", "cold", "attention", "ffn"].contains(&a.as_str()))
        .map(|a| a.parse().expect("row counts"))
        .collect();
    if row_counts.is_empty() && !convs_only && !attention_only {
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
            let copies = if cold {
                (96usize << 20).div_ceil(4 * k * n)
            } else {
                1
            };
            let ws = (0..copies)
                .map(|_| Tensor::randn(0f32, 1.0, (n, k), &dev))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let reps = (40 * 128 / rows).max(8).max(copies);
            let flop = 2.0 * (rows * k * n) as f64;
            let rotating = |weights: &[Weight]| {
                time_rotating(reps, weights, |w| linear(&x, w, None, Identity, None))
            };
            let wts = ws
                .iter()
                .map(|w| w.t())
                .collect::<candle_core::Result<Vec<_>>>()?;
            let candle = time_rotating(reps, &wts, |wt| x.matmul(wt))?;
            let gemm = rotating(
                &wts.iter()
                    .map(|wt| Ok(Weight::Transposed(wt.contiguous()?)))
                    .collect::<candle_core::Result<Vec<_>>>()?,
            )?;
            let ours = rotating(
                &ws.iter()
                    .map(|w| Weight::new(w, false))
                    .collect::<candle_core::Result<Vec<_>>>()?,
            )?;
            let bf16 = if bf16::available() {
                let t = rotating(
                    &ws.iter()
                        .map(|w| Weight::new(w, true))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                )?;
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
    // Self-attention: Whisper's encoder, BERT-base at b=1 and b=8, ViT-base (batch, tokens,
    // hidden, heads).
    for (b, s, h, heads) in [
        (1usize, 1500usize, 384usize, 6usize),
        (1, 128, 768, 12),
        (8, 128, 768, 12),
        (1, 197, 768, 12),
        (8, 197, 768, 12),
        (1, 512, 768, 12),
    ] {
        let qkv = Tensor::randn(0f32, 1.0, (b, s, 3 * h), &dev)?;
        let flop = 4.0 * (b * s * s * h) as f64;
        let t = time(8, || attention(&qkv, heads, None, false, false))?;
        let bf16 = if bf16::available() {
            let t = time(8, || attention(&qkv, heads, None, false, true))?;
            format!("{:>6.1}", flop / t / 1e9)
        } else {
            "     -".into()
        };
        println!(
            "attention {b} x {s:>4} x {h} / {heads:>2} heads: {:>7.2} ms {:>6.1} GFLOP/s, bf16 {bf16} GFLOP/s",
            t * 1e3,
            flop / t / 1e9
        );
    }
    // Causal attention: CLIP's text tower kernel path at 128 tokens, and a decoder's prefill
    // over its cache (Qwen2-0.5B: 14 query heads over 2 key/value heads of 64), 128 and 1,024
    // positions, and one decode step over 128.
    let qkv = Tensor::randn(0f32, 1.0, (1, 128, 3 * 896), &dev)?;
    let t = time(8, || attention(&qkv, 14, None, true, false))?;
    println!(
        "causal attention 1 x  128 x 896 / 14 heads: {:>7.2} ms",
        t * 1e3
    );
    for (m, n) in [(128usize, 128usize), (1024, 1024), (1, 128)] {
        let q = Tensor::randn(0f32, 1.0, (m, 14, 64), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (n, 2, 64), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (n, 2, 64), &dev)?;
        let t = time(8, || cached_attention(&q, &k, &v))?;
        println!(
            "cached attention {m:>4} queries over {n:>4} keys, 14 / 2 heads: {:>7.3} ms",
            t * 1e3
        );
    }
    if attention_only {
        return Ok(());
    }
    // wav2vec2-base's feature encoder on 3.44 s of audio (55,040 samples): frames, channels in,
    // channels out, kernel, stride; and one of the 16 groups of its positional convolution.
    for (frames, cin, cout, kernel, stride) in [
        (55040usize, 1usize, 512usize, 10usize, 5usize),
        (11007, 512, 512, 3, 2),
        (5503, 512, 512, 3, 2),
        (2751, 512, 512, 3, 2),
        (1375, 512, 512, 3, 2),
        (687, 512, 512, 2, 2),
        (343, 512, 512, 2, 2),
        (171 + 128, 48, 48, 128, 1),
    ] {
        let x = Tensor::randn(0f32, 1.0, (frames, cin), &dev)?;
        let weight = Tensor::randn(0f32, 1.0, (cout, cin, kernel), &dev)?;
        let w = conv_weight(&weight, false)?;
        let out_frames = (frames - kernel) / stride + 1;
        let flop = 2.0 * (out_frames * cin * kernel * cout) as f64;
        let t = time(8, || conv1d_frames(&x, &w, None, kernel, stride, Identity))?;
        let bf16 = if bf16::available() {
            let w = conv_weight(&weight, true)?;
            let t = time(8, || conv1d_frames(&x, &w, None, kernel, stride, Identity))?;
            format!("{:>6.1}", flop / t / 1e9)
        } else {
            "     -".into()
        };
        println!(
            "conv {frames:>5} frames x {cin:>3} -> {cout:>3}, kernel {kernel:>3} / {stride}: {:>7.2} ms {:>6.1} GFLOP/s, bf16 {bf16} GFLOP/s",
            t * 1e3,
            flop / t / 1e9
        );
    }
    Ok(())
}

/// The feed-forward blocks of ViT-base and BERT-base (b=8) and MiniLM in bf16: two `linear`
/// calls against `feed_forward` (on AMX its inner rows stay in bf16 tiles), alternated in
/// rounds, the best of each call's rounds.
fn feed_forward_blocks(dev: &Device) -> candle_core::Result<()> {
    if !bf16::available() {
        println!("bf16 does not run here: {}", bf16::unavailable_reason());
        return Ok(());
    }
    for (rows, h, inner) in [
        (1576usize, 768usize, 3072usize),
        (1024, 768, 3072),
        (1024, 384, 1536),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, h), dev)?;
        let r = Tensor::randn(0f32, 1.0, (rows, h), dev)?;
        let (b1, b2) = (
            Tensor::randn(0f32, 1.0, inner, dev)?,
            Tensor::randn(0f32, 1.0, h, dev)?,
        );
        let w1 = Weight::new(&Tensor::randn(0f32, 0.05, (inner, h), dev)?, true)?;
        let w2 = Weight::new(&Tensor::randn(0f32, 0.05, (h, inner), dev)?, true)?;
        let (mut two, mut one) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            two = two.min(time(6, || {
                let inner = linear(&x, &w1, Some(&b1), GeluErf, None)?;
                linear(&inner, &w2, Some(&b2), Identity, Some(&r))
            })?);
            one = one.min(time(6, || {
                feed_forward(&x, (&w1, Some(&b1)), GeluErf, (&w2, Some(&b2)), Some(&r))
            })?);
        }
        let flop = 4.0 * (rows * h * inner) as f64;
        println!(
            "feed-forward {rows:>5} x {h:>4} x {inner:>4} bf16: two layers {:>7.2} ms ({:>6.1} GFLOP/s), feed_forward {:>7.2} ms ({:>6.1} GFLOP/s)",
            two * 1e3,
            flop / two / 1e9,
            one * 1e3,
            flop / one / 1e9
        );
    }
    Ok(())
}
