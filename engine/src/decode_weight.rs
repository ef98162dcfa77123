//! An 8-bit copy of a frozen weight, for decoding on the CPU.
//!
//! Decoding one token per sequence reads every weight once per token and does little else,
//! so its speed is the bytes it reads: f32 weights are 4 bytes each, this copy 1.125 (a signed
//! byte per weight and an f32 scale per block of 32, symmetric, as GGML's Q8_0 but with an f32 scale).
//! The rounding moves a weight by at most half a step of its block's largest magnitude / 127.
//!
//! Activations are rounded far more finely: to 16-bit steps of their block's largest
//! magnitude, so a block's products are integer multiply-adds (`madd`), 16 per instruction,
//! instead of widening every weight to f32. Rounding them to 8 bits, as candle's quantized
//! matmul and llama.cpp do, took SmolLM2's greedy answers off course in our tests: its
//! activations have outliers in the hundreds, and 8 bits of a block holding one leave the
//! other values a few steps. At 16 bits a value moves by at most half of 1/32767 of its block's
//! largest, 1/258 of what the weights' rounding moves it.
//!
//! Each output is accumulated in the same order whatever the number of rows in a call, and a
//! row's activations are rounded by themselves, so a sequence decodes to the same tokens alone
//! or in a batch of up to `MAX_ROWS`. Larger decoding batches read the f32 weights: there gemm
//! reuses each weight across the rows better than this kernel does two rows at a time.
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
        let (quants, scales) = round_blocks(&values, WEIGHT_STEPS, |step| step as i8);
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

    /// Every row of `x` against outputs `outputs`, into `dst` (`rows * out`).
    ///
    /// # Safety
    /// No other thread writes the elements of `dst` in `outputs`' columns.
    unsafe fn run(&self, x: &RoundedRows, outputs: std::ops::Range<usize>, dst: *mut f32) {
        let rows = x.rows();
        for output in outputs {
            let (quants, scales) = self.row(output);
            let mut r = 0;
            while r < rows {
                // Two rows at a time share the block's widened weights in registers.
                let tile = (rows - r).min(2);
                let sums = if tile == 2 {
                    dot_rows(quants, scales, [x.row(r), x.row(r + 1)])
                } else {
                    let [one] = dot_rows(quants, scales, [x.row(r)]);
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

/// Input rows as 16-bit steps of an f32 scale per block of `BLOCK` values.
struct RoundedRows {
    width: usize,
    /// `[rows, width]`, row-major.
    values: Vec<i16>,
    /// `[rows, width / BLOCK]`.
    scales: Vec<f32>,
}

/// The most a rounded weight may be, in steps of its block's scale.
const WEIGHT_STEPS: f32 = 127.0;

/// Every block of `BLOCK` values as whole steps of its largest magnitude / `steps`
/// (symmetric, so `-steps..=steps`), and each block's step size.
fn round_blocks<T>(values: &[f32], steps: f32, to_step: impl Fn(f32) -> T) -> (Vec<T>, Vec<f32>) {
    let mut rounded = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / BLOCK);
    for block in values.chunks_exact(BLOCK) {
        let largest = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = largest / steps;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        rounded.extend(block.iter().map(|v| to_step((v * inverse).round())));
        scales.push(scale);
    }
    (rounded, scales)
}

/// The most a rounded activation may be: products with 8-bit weights, four to an `i32` lane
/// (127 * 32767 * 4 < 2^24), stay exact in the f32 they are converted to.
const ACTIVATION_STEPS: f32 = 32767.0;

impl RoundedRows {
    fn new(x: &[f32], width: usize) -> Self {
        let (values, scales) = round_blocks(x, ACTIVATION_STEPS, |step| step as i16);
        Self {
            width,
            values,
            scales,
        }
    }

    fn rows(&self) -> usize {
        self.values.len() / self.width
    }

    fn row(&self, r: usize) -> Row<'_> {
        let blocks = self.width / BLOCK;
        Row {
            values: &self.values[r * self.width..(r + 1) * self.width],
            scales: &self.scales[r * blocks..(r + 1) * blocks],
        }
    }
}

#[derive(Clone, Copy)]
struct Row<'a> {
    values: &'a [i16],
    scales: &'a [f32],
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
        let x = RoundedRows::new(x, self.in_features);
        let x = &x;
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
fn dot_rows<const R: usize>(quants: &[i8], scales: &[f32], xs: [Row<'_>; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features.
        return unsafe { avx2::dot_rows(quants, scales, xs) };
    }
    dot_rows_portable(quants, scales, xs)
}

fn dot_rows_portable<const R: usize>(quants: &[i8], scales: &[f32], xs: [Row<'_>; R]) -> [f32; R] {
    let mut sums = [0f32; R];
    for (b, (block, scale)) in quants.chunks_exact(BLOCK).zip(scales).enumerate() {
        for (sum, x) in sums.iter_mut().zip(&xs) {
            let values = &x.values[b * BLOCK..(b + 1) * BLOCK];
            let dot: i32 = block
                .iter()
                .zip(values)
                .map(|(&q, &v)| i32::from(q) * i32::from(v))
                .sum();
            *sum += dot as f32 * (scale * x.scales[b]);
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Row, BLOCK};

    /// One weight row against one or two input rows. Each block's 32 weights are widened to
    /// 16 bits once; `madd` multiplies them with a row's 16-bit activations and adds pairs,
    /// giving eight `i32` lanes of four products each, which are converted and scaled into
    /// one f32 accumulator per row. A row's sum is formed in the same order whether or not it
    /// has a partner.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows<const R: usize>(
        quants: &[i8],
        scales: &[f32],
        xs: [Row<'_>; R],
    ) -> [f32; R] {
        assert!(R == 1 || R == 2, "one or two rows at a time");
        assert!(
            quants.len() == scales.len() * BLOCK
                && xs
                    .iter()
                    .all(|x| x.values.len() == quants.len() && x.scales.len() == scales.len())
        );
        let (first, last) = (xs[0], xs[R - 1]);
        let mut a = _mm256_setzero_ps();
        let mut b = _mm256_setzero_ps();
        for (block, &scale) in scales.iter().enumerate() {
            let at = block * BLOCK;
            // SAFETY: each load reads 16 bytes of weights or 16 activations within the
            // block's 32, whose bounds the asserts above establish.
            unsafe {
                let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(quants[at..].as_ptr().cast()));
                let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(quants[at + 16..].as_ptr().cast()));
                a = accumulate(
                    w0,
                    w1,
                    &first.values[at..at + BLOCK],
                    scale * first.scales[block],
                    a,
                );
                if R == 2 {
                    b = accumulate(
                        w0,
                        w1,
                        &last.values[at..at + BLOCK],
                        scale * last.scales[block],
                        b,
                    );
                }
            }
        }
        let mut sums = [0f32; R];
        sums[0] = sum_lanes(a);
        if R == 2 {
            sums[R - 1] = sum_lanes(b);
        }
        sums
    }

    /// `acc + scale * (w . x)` lane-wise, for one block of 32 widened weights and 32
    /// activations.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate(w0: __m256i, w1: __m256i, x: &[i16], scale: f32, acc: __m256) -> __m256 {
        // SAFETY: `x` holds 32 values; each load reads 16 of them.
        let (x0, x1) = unsafe {
            (
                _mm256_loadu_si256(x.as_ptr().cast()),
                _mm256_loadu_si256(x[16..].as_ptr().cast()),
            )
        };
        let products = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(products), _mm256_set1_ps(scale), acc)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sum_lanes(a: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{dot_rows, dot_rows_portable, DecodeWeight, RoundedRows, BLOCK};
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
        let mut x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
        x[5] = 300.0;
        let rows = RoundedRows::new(&x, 128);
        let ours = dot_rows(&quants, &scales, [rows.row(0), rows.row(1)]);
        let portable = dot_rows_portable(&quants, &scales, [rows.row(0), rows.row(1)]);
        for (a, b) in ours.iter().zip(portable) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} against {b}");
        }
    }

    #[test]
    fn activations_round_to_a_32767th_of_their_blocks_largest() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.61).cos()).collect();
        x[3] = -300.0;
        let rows = RoundedRows::new(&x, 64);
        let row = rows.row(0);
        for (i, &v) in x.iter().enumerate() {
            let step = row.scales[i / BLOCK];
            let back = f32::from(row.values[i]) * step;
            assert!(
                (back - v).abs() <= 0.5 * step * 1.0001,
                "{i}: {v} came back as {back}"
            );
        }
        assert_eq!(row.values[3], -32767);
        assert!((row.scales[0] - 300.0 / 32767.0).abs() < 1e-9);
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
