//! The element functions the kernels share, written to vectorise: `exp` for arguments <= 0,
//! erf, GELU and quick GELU, and row-wise softmax.

/// e^x for x <= 0 (Cody-Waite range reduction, degree-6 polynomial; relative error < 3e-7;
/// below -87 it returns 0). Exactly 0 rather than e^-87: a masked key's weight scaled by
/// softmax's 1/sum would be a subnormal, and every product that reads subnormals runs
/// through microcode assists on Intel (a causal head of 128 queries took 10x as long as an
/// unmasked one).
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    let underflows = x < -87.0;
    // As `x.max(-87.0)` (NaN included), without the NaN rule's compare and blend.
    let x = if x > -87.0 { x } else { -87.0 };
    let biased = x.mul_add(std::f32::consts::LOG2_E, ROUND_AND_BIAS);
    let n = biased - ROUND_AND_BIAS;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = EXP_POLY[0];
    for k in &EXP_POLY[1..] {
        p = p.mul_add(r, *k);
    }
    // 2^n: n + 127 (1..=127 here) shifted into the exponent; the constant's own bits shift
    // out.
    let scale = f32::from_bits(biased.to_bits() << 23);
    if underflows {
        0.0
    } else {
        p * scale
    }
}

/// [`exp_nonpositive`]'s constants, shared with the explicitly vectorised copy in bf16
/// attention: ln 2 in two parts (Cody-Waite), and 1.5 * 2^23 + 127, whose addition rounds x *
/// log2(e) to the nearest integer n and leaves n + 127 in the low mantissa bits (Rust's `as
/// i32` would do that too, but its saturating conversion does not vectorise on x86).
pub(super) const LN2_HI: f32 = 0.693_145_75;
pub(super) const LN2_LO: f32 = 1.428_606_8e-6;
pub(super) const ROUND_AND_BIAS: f32 = 12_582_912.0 + 127.0;

/// e^r's Taylor polynomial to degree 6, highest coefficient first, for Horner's rule.
pub(super) const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let mut poly = A[4];
    poly = poly.mul_add(t, A[3]);
    poly = poly.mul_add(t, A[2]);
    poly = poly.mul_add(t, A[1]);
    poly = poly.mul_add(t, A[0]);
    let y = 1.0 - poly * t * exp_nonpositive(-a * a);
    y.copysign(x)
}

/// GELU as transformers' "gelu" (the erf form): x/2 * (1 + erf(x / sqrt 2)).
#[inline(always)]
pub(super) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// CLIP's "quick_gelu": x * sigmoid(1.702 x), the sigmoid from e^-|z| so that the exponent
/// never overflows.
#[inline(always)]
pub(super) fn quick_gelu(x: f32) -> f32 {
    x * sigmoid(1.702 * x)
}

/// SiLU (swish): x * sigmoid(x), LLaMA's and Qwen's "silu".
#[inline(always)]
pub(super) fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// 1 / (1 + e^-z), from e^-|z| so that the exponent never overflows.
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    let e = exp_nonpositive(-z.abs());
    let positive = 1.0 / (1.0 + e);
    if z >= 0.0 {
        positive
    } else {
        e * positive
    }
}

/// Lanes of the partial sums in reductions: LLVM keeps float sums in order, so one
/// accumulator would not vectorise; 16 fill an AVX-512 register.
const LANES: usize = 16;

/// The largest element (the row is not empty).
#[inline(always)]
pub(super) fn max_of(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    // A comparison rather than `f32::max`, whose NaN rule costs a compare and a blend beside
    // each `maxps` (a NaN score makes its row NaN either way, through the exponentials).
    let larger = |a: f32, v: f32| if v > a { v } else { a };
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = larger(*a, v);
        }
    }
    let m = rest.iter().fold(f32::NEG_INFINITY, |m, &v| larger(m, v));
    acc.into_iter().fold(m, larger)
}

/// The sum of `f(v)` over the row, in [`LANES`] partial sums.
#[inline(always)]
pub(super) fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    rest.iter().map(|&v| f(v)).sum::<f32>() + acc.iter().sum::<f32>()
}

/// In place: `row = softmax(row)` (the row is not empty).
#[inline(always)]
pub(super) fn softmax_body(row: &mut [f32]) {
    let max = max_of(row);
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *v = exp_nonpositive(*v - max);
            *a += *v;
        }
    }
    // The last partial chunk through a whole one padded with -inf (whose exponentials are
    // 0), so it runs in vector lanes too: one element at a time, the last 5 of ViT's 197
    // keys cost a third of the row.
    let rest = chunks.into_remainder();
    let mut last = [f32::NEG_INFINITY; LANES];
    last[..rest.len()].copy_from_slice(rest);
    for (a, v) in acc.iter_mut().zip(last.iter_mut()) {
        *v = exp_nonpositive(*v - max);
        *a += *v;
    }
    rest.copy_from_slice(&last[..rest.len()]);
    let inv = 1.0 / acc.iter().sum::<f32>();
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_the_exact_function() {
        for i in 0..4000 {
            let x = -12.0 + i as f32 * 0.006;
            let v = x as f64;
            let want =
                0.5 * v * (1.0 + candle_core::cpu::erf::erf_f64(v / std::f64::consts::SQRT_2));
            let got = gelu_erf(x) as f64;
            assert!(
                (got - want).abs() <= 3e-7 * (1.0 + want.abs()),
                "gelu({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn quick_gelu_matches_the_exact_function() {
        for i in -400..=400 {
            let x = i as f32 * 0.05;
            let want = x as f64 / (1.0 + (-1.702 * x as f64).exp());
            let got = quick_gelu(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn exp_below_the_range_is_zero_not_subnormal() {
        for x in [-87.5f32, -100.0, -1e30, f32::MIN, f32::NEG_INFINITY] {
            assert_eq!(exp_nonpositive(x), 0.0, "{x}");
        }
        let mut row = [0.0f32, f32::MIN, -200.0, -3.0];
        softmax_body(&mut row);
        assert_eq!(&row[1..3], &[0.0, 0.0]);
    }

    #[test]
    fn silu_matches_the_exact_function() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.05;
            let want = x as f64 / (1.0 + (-x as f64).exp());
            let got = silu(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn exp_is_accurate_where_the_kernels_use_it() {
        // Down to -87, where the clamp starts.
        for i in 0..=1000 {
            let x = -(i as f32) * 0.087;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            assert!(
                (got - want).abs() <= 3e-7 * want + 1e-38,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_the_order() {
        for len in [1usize, 5, 16, 17, 128, 131] {
            let mut row: Vec<f32> = (0..len)
                .map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0)
                .collect();
            let want: Vec<f64> = {
                let m = row.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
                let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            };
            softmax_body(&mut row);
            for (got, want) in row.iter().zip(&want) {
                assert!((*got as f64 - want).abs() < 1e-6, "{len}: {got} vs {want}");
            }
        }
    }
}
