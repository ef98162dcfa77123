//! An 8-bit copy of a frozen weight, for decoding on the CPU.
//!
//! Decoding one token per sequence reads every weight once per token and does little else,
//! so its speed is the bytes it reads: f32 weights are 4 bytes each, this copy 1.125 (a signed
//! byte per weight and an f32 scale per block of 32, symmetric, as GGML's Q8_0 but with an f32 scale).
//! Only the weights are rounded: activations stay f32 and are multiplied exactly, because
//! SmolLM2's activations have outliers in the hundreds, and quantizing them too (what
//! candle's quantized matmul does, in blocks of 32 or 256) took greedy answers off course in
//! our tests. The rounding moves a weight by at most half a step of its block's largest
//! magnitude / 127.
//!
//! Each output is accumulated in the same order whatever the number of rows in a call, so a
//! sequence decodes to the same tokens alone or in a batch of up to `MAX_ROWS`. Larger
//! decoding batches read the f32 weights: there gemm reuses each weight across the rows
//! better than widening 8-bit weights two rows at a time does.
//!
//! Unsafe code here: the AVX2 kernel's loads, and the thread pool's workers writing disjoint
//! columns of one output buffer; each place has a SAFETY note.
#![allow(unsafe_code)]

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Weights per scale.
const BLOCK: usize = 32;

/// The most rows a decoding step reads the 8-bit weights for. Measured with `lift bench
/// generate --temperature 0.2` on 2 cores (docs/benchmarks.md): 73 to 86 against 63 to 67
/// tokens/s at 16 rows, 85 against 109 at 32.
pub const MAX_ROWS: usize = 16;

/// Outputs per unit of work handed to candle's thread pool.
const OUTPUTS_PER_ITEM: usize = 16;

/// `[out, in]` weights as `i8` steps of a per-block scale.
#[derive(Clone)]
pub struct DecodeWeight {
    out_features: usize,
    in_features: usize,
    /// `[out, in]`, row-major.
    quants: std::sync::Arc<[i8]>,
    /// `[out, in / BLOCK]`.
    scales: std::sync::Arc<[f32]>,
}

impl std::fmt::Debug for DecodeWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DecodeWeight([{}, {}], 8-bit)",
            self.out_features, self.in_features
        )
    }
}

impl DecodeWeight {
    /// `None` where the weight cannot have one (not on the CPU, not f32, or rows that are not
    /// whole blocks of 32): the caller then decodes from the exact weight.
    pub fn quantize(weight: &Tensor) -> Result<Option<Self>> {
        let Ok((out_features, in_features)) = weight.dims2() else {
            return Ok(None);
        };
        let whole_blocks = in_features > 0 && in_features.is_multiple_of(BLOCK);
        if !weight.device().is_cpu() || weight.dtype() != DType::F32 || !whole_blocks {
            return Ok(None);
        }
        let values = weight.flatten_all()?.to_vec1::<f32>()?;
        let mut quants = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(values.len() / BLOCK);
        for block in values.chunks_exact(BLOCK) {
            let largest = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = largest / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            quants.extend(block.iter().map(|v| (v * inverse).round() as i8));
            scales.push(scale);
        }
        Ok(Some(Self {
            out_features,
            in_features,
            quants: quants.into(),
            scales: scales.into(),
        }))
    }

    /// `x [.., in] @ W^T`, without a gradient.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    fn row(&self, output: usize) -> (&[i8], &[f32]) {
        let blocks = self.in_features / BLOCK;
        (
            &self.quants[output * self.in_features..(output + 1) * self.in_features],
            &self.scales[output * blocks..(output + 1) * blocks],
        )
    }

    /// Every row of `x` (`rows * in`) against outputs `outputs`, into `dst` (`rows * out`).
    ///
    /// # Safety
    /// No other thread writes the elements of `dst` in `outputs`' columns.
    unsafe fn run(&self, x: &[f32], outputs: std::ops::Range<usize>, dst: *mut f32) {
        let k = self.in_features;
        let rows = x.len() / k;
        let x_row = |r: usize| &x[r * k..(r + 1) * k];
        for output in outputs {
            let (quants, scales) = self.row(output);
            let mut r = 0;
            while r < rows {
                // Two rows at a time keep their eight accumulators and the block's four
                // weight vectors in the sixteen AVX2 registers.
                let tile = (rows - r).min(2);
                let sums = if tile == 2 {
                    dot_rows(quants, scales, [x_row(r), x_row(r + 1)])
                } else {
                    let [one] = dot_rows(quants, scales, [x_row(r)]);
                    [one, 0.0]
                };
                for (i, sum) in sums.iter().take(tile).enumerate() {
                    // SAFETY: in bounds (`dst` holds rows * out), and this column is ours.
                    unsafe { *dst.add((r + i) * self.out_features + output) = *sum };
                }
                r += tile;
            }
        }
    }
}

impl CustomOp1 for DecodeWeight {
    fn name(&self) -> &'static str {
        "decode-weight-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        if dims.last() != Some(&self.in_features) || !layout.is_contiguous() {
            candle_core::bail!(
                "decode weight: input {dims:?} is not contiguous [.., {}]",
                self.in_features
            );
        }
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("decode weight: the input must be f32");
        };
        let start = layout.start_offset();
        let x = &values[start..start + layout.shape().elem_count()];
        let rows = x.len() / self.in_features;
        let mut dst = vec![0f32; rows * self.out_features];
        let dst_address = dst.as_mut_ptr() as usize;
        let items = self.out_features.div_ceil(OUTPUTS_PER_ITEM);
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            let first = range.start * OUTPUTS_PER_ITEM;
            let end = (range.end * OUTPUTS_PER_ITEM).min(self.out_features);
            // SAFETY: the pool hands out disjoint ranges of items, hence of output columns.
            unsafe { self.run(x, first..end, dst_address as *mut f32) };
        });
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = self.out_features;
        Ok((CpuStorage::F32(dst), Shape::from(out_dims)))
    }
}

/// One weight row against `R` input rows.
fn dot_rows<const R: usize>(quants: &[i8], scales: &[f32], xs: [&[f32]; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features.
        return unsafe { avx2::dot_rows(quants, scales, xs) };
    }
    dot_rows_portable(quants, scales, xs)
}

fn dot_rows_portable<const R: usize>(quants: &[i8], scales: &[f32], xs: [&[f32]; R]) -> [f32; R] {
    let mut sums = [0f32; R];
    for (b, (block, scale)) in quants.chunks_exact(BLOCK).zip(scales).enumerate() {
        for (sum, x) in sums.iter_mut().zip(&xs) {
            let x = &x[b * BLOCK..(b + 1) * BLOCK];
            let dot: f32 = block.iter().zip(x).map(|(&q, &v)| f32::from(q) * v).sum();
            *sum += scale * dot;
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// One weight row against one or two input rows. Each block's 32 weights are widened to
    /// f32 and scaled, then multiplied into four accumulators per row (one per eight lanes
    /// of the block): independent chains of fused multiply-adds, all in registers. A row's
    /// sum is formed in the same order whether or not it has a partner.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows<const R: usize>(
        quants: &[i8],
        scales: &[f32],
        xs: [&[f32]; R],
    ) -> [f32; R] {
        assert!(R == 1 || R == 2, "one or two rows at a time");
        assert!(quants.len() == scales.len() * BLOCK && xs.iter().all(|x| x.len() == quants.len()));
        let zero = _mm256_setzero_ps();
        let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
        let (mut b0, mut b1, mut b2, mut b3) = (zero, zero, zero, zero);
        let blocks = quants
            .chunks_exact(BLOCK)
            .zip(xs[0].chunks_exact(BLOCK))
            .zip(xs[R - 1].chunks_exact(BLOCK))
            .zip(scales);
        for (((q, x0), x1), &scale) in blocks {
            // SAFETY: each load reads 8 values of a 32-value chunk, at offsets 0 to 24.
            unsafe {
                let scale = _mm256_set1_ps(scale);
                let w0 = widen(q[..8].as_ptr(), scale);
                let w1 = widen(q[8..16].as_ptr(), scale);
                let w2 = widen(q[16..24].as_ptr(), scale);
                let w3 = widen(q[24..].as_ptr(), scale);
                a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0[..8].as_ptr()), a0);
                a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x0[8..16].as_ptr()), a1);
                a2 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x0[16..24].as_ptr()), a2);
                a3 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x0[24..].as_ptr()), a3);
                if R == 2 {
                    b0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x1[..8].as_ptr()), b0);
                    b1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1[8..16].as_ptr()), b1);
                    b2 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x1[16..24].as_ptr()), b2);
                    b3 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x1[24..].as_ptr()), b3);
                }
            }
        }
        let mut sums = [0f32; R];
        sums[0] = sum_lanes(a0, a1, a2, a3);
        if R == 2 {
            sums[R - 1] = sum_lanes(b0, b1, b2, b3);
        }
        sums
    }

    /// Eight `i8` weights at `q`, as f32 times `scale`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn widen(q: *const i8, scale: __m256) -> __m256 {
        // SAFETY: the caller passes 8 readable bytes.
        let bytes = unsafe { _mm_loadl_epi64(q as *const __m128i) };
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), scale)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sum_lanes(a0: __m256, a1: __m256, a2: __m256, a3: __m256) -> f32 {
        let a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        let halves = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{dot_rows, dot_rows_portable, DecodeWeight};
    use crate::testing::max_abs_diff;

    /// Activations with an outlier of 300 in every row, as SmolLM2's have.
    fn activations(rows: usize, width: usize) -> Tensor {
        let mut values: Vec<f32> = Tensor::randn(0f32, 1.0, rows * width, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        for row in 0..rows {
            values[row * width + 7] = 300.0;
        }
        Tensor::from_vec(values, (1, rows, width), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_product_is_within_the_weight_rounding_whatever_the_activations() {
        let w = Tensor::randn(0f32, 0.05, (50, 96), &Device::Cpu).unwrap();
        let x = activations(7, 96);
        let exact = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let decode = DecodeWeight::quantize(&w)
            .unwrap()
            .expect("96 is three blocks");
        let ours = decode.forward(&x).unwrap();
        assert_eq!(ours.dims(), exact.dims());
        // A weight moves by at most 0.5 / 127 of its block's largest (about 0.15 here), so an
        // output by at most 96 * 0.0006 * |x|; the outlier alone contributes 300 * 0.0006.
        let diff = max_abs_diff(&ours, &exact);
        assert!(diff > 0.0 && diff < 0.25, "differs by {diff}");
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_as_in_any_batch() {
        let w = Tensor::randn(0f32, 0.05, (37, 64), &Device::Cpu).unwrap();
        let decode = DecodeWeight::quantize(&w).unwrap().unwrap();
        let x = activations(7, 64);
        let together = decode.forward(&x).unwrap();
        for row in 0..7 {
            let alone = decode.forward(&x.narrow(1, row, 1).unwrap()).unwrap();
            let same = together.narrow(1, row, 1).unwrap();
            assert_eq!(max_abs_diff(&alone, &same), 0.0, "row {row}");
        }
    }

    #[test]
    fn the_vector_kernel_matches_the_portable_one() {
        let quants: Vec<i8> = (0..128).map(|i| ((i * 37) % 255) as i8).collect();
        let scales = [0.01f32, 0.02, 0.003, 0.5];
        let x: Vec<Vec<f32>> = (0..2)
            .map(|r| (0..128).map(|i| ((i + r) as f32 * 0.37).sin()).collect())
            .collect();
        let ours = dot_rows(&quants, &scales, [&x[0], &x[1]]);
        let portable = dot_rows_portable(&quants, &scales, [&x[0], &x[1]]);
        for (a, b) in ours.iter().zip(portable) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} against {b}");
        }
    }

    #[test]
    fn weights_that_are_not_whole_blocks_or_not_f32_stay_exact() {
        let ragged = Tensor::randn(0f32, 1.0, (4, 40), &Device::Cpu).unwrap();
        assert!(DecodeWeight::quantize(&ragged).unwrap().is_none());
        let half = Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::BF16)
            .unwrap();
        assert!(DecodeWeight::quantize(&half).unwrap().is_none());
    }
}
