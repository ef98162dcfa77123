//! The elementwise parts of a decoder layer as one pass each way on the CPU, in f32: RMSNorm,
//! rope, the attention softmax and SwiGLU's `silu(gate) * up`. Composed from candle's basic
//! ops, each is 4 to 7 passes forward and more in backward, every pass single-threaded and
//! allocating its output; on two cores those passes took more of a training step than the
//! matmuls did (docs/benchmarks.md, "Fused elementwise passes"). Here every op is one pass
//! spread over rayon's pool (the one gemm uses), and its backward another.
//!
//! `Model` calls these for f32 tensors on the CPU (`fused::applies`); other devices and
//! dtypes keep the composed ops, which the tests below hold these to.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

/// Whether the fused ops serve `x`: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Elements per rayon task: below this, splitting costs more than it saves.
const TASK_ELEMENTS: usize = 16 * 1024;

/// The f32 values a contiguous layout covers.
pub(crate) fn values<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(all) = storage else {
        candle_core::bail!("{op}: f32 only, got {:?}", storage.dtype());
    };
    if !layout.is_contiguous() {
        candle_core::bail!("{op}: the input must be contiguous");
    }
    let start = layout.start_offset();
    Ok(&all[start..start + layout.shape().elem_count()])
}

/// The values of a frozen tensor captured by an op (weights, rope tables).
fn captured<'a>(storage: &'a Storage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(storage) => values(storage, layout, op),
        _ => candle_core::bail!("{op}: a captured tensor is not on the CPU"),
    }
}

fn last_dim(layout: &Layout) -> usize {
    *layout.dims().last().unwrap_or(&1)
}

/// Fills `out` row by row (rows of `width`), in parallel; `fill(row, out_row)`.
fn fill_rows(out: &mut [f32], width: usize, fill: impl Fn(usize, &mut [f32]) + Sync) {
    let width = width.max(1);
    let rows_per_task = (TASK_ELEMENTS / width).max(1);
    if out.len() <= rows_per_task * width {
        // One task: handing it to the pool would only add a wake-up (decoding steps).
        out.chunks_mut(width)
            .enumerate()
            .for_each(|(row, out)| fill(row, out));
        return;
    }
    out.par_chunks_mut(rows_per_task * width)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, row) in chunk.chunks_mut(width).enumerate() {
                fill(task * rows_per_task + i, row);
            }
        });
}

/// Fills `out` element by element in parallel; `fill(start, chunk)` for each chunk.
fn fill_elements(out: &mut [f32], fill: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() <= TASK_ELEMENTS {
        return fill(0, out);
    }
    out.par_chunks_mut(TASK_ELEMENTS)
        .enumerate()
        .for_each(|(task, chunk)| fill(task * TASK_ELEMENTS, chunk));
}

/// `e^x` in f32 from arithmetic and bit operations only (Cephes' `expf`: `x = n ln 2 + r`,
/// a degree-6 polynomial for `e^r`, `2^n` written into the exponent bits), within 2 ulp of
/// `f32::exp`. glibc's `expf` is a call per element; this inlines, so the loops of the
/// softmax, SwiGLU and loss passes run it on whole vector registers.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Rounds to the nearest integer by pushing the fraction out of the mantissa, which
    // vectorises where `round` would be a call per lane.
    const ROUNDER: f32 = 12_582_912.0; // 1.5 x 2^23: one unit in its last place
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Below this e^x is under f32's smallest normal; above, over f32::MAX.
    const LOWEST: f32 = -87.336_55;
    const HIGHEST: f32 = 88.0;
    let clamped = x.clamp(LOWEST, HIGHEST);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = clamped - n * LN2_HIGH - n * LN2_LOW;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // `shifted`'s low mantissa bits hold n (offset by the rounder's own bits); n + 127 in the
    // exponent field is 2^n.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    let two_to_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x < LOWEST {
        0.0
    } else {
        e_r * two_to_n
    }
}

/// Running sums and maxima kept per lane: one running value fixes the order of the
/// operations and keeps a loop scalar; eight independent ones let it vectorise.
const LANES: usize = 8;

/// The sum of `f(x)` over `xs`.
#[inline(always)]
fn sum_of(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder().iter().map(|&x| f(x)).sum::<f32>();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The largest of `xs` (`-inf` for none).
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    lanes.iter().copied().fold(rest, f32::max)
}

fn output(values: Vec<f32>, layout: &Layout) -> (CpuStorage, Shape) {
    (CpuStorage::F32(values), layout.shape().clone())
}

// ---------------------------------------------------------------------------------------
// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, with w frozen.

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

/// `1 / sqrt(mean(x^2) + eps)` of one row.
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let mean_square = sum_of(x, |v| v * v) / x.len().max(1) as f32;
    1.0 / (mean_square + eps).sqrt()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(storage, layout, self.name())?;
        let (guard, weight_layout) = self.weight.storage_and_layout();
        let weight = captured(&guard, weight_layout, self.name())?;
        let width = last_dim(layout);
        if weight.len() != width {
            candle_core::bail!(
                "fused-rms-norm: weight {} for rows of {width}",
                weight.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        fill_rows(&mut y, width, |row, out| {
            let x = &x[row * width..(row + 1) * width];
            let scale = inverse_rms(x, self.eps);
            for ((o, x), w) in out.iter_mut().zip(x).zip(weight) {
                *o = x * scale * w;
            }
        });
        Ok(output(y, layout))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        let backward = RmsNormBackward {
            weight: self.weight.clone(),
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&grad_y.contiguous()?, &backward)?))
    }
}

/// `dx = r (g w - n mean(g w n))` with `r` the row's inverse RMS and `n = x r`.
struct RmsNormBackward {
    weight: Tensor,
    eps: f32,
}

impl CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = values(x, x_layout, self.name())?;
        let grad = values(grad, grad_layout, self.name())?;
        let (guard, weight_layout) = self.weight.storage_and_layout();
        let weight = captured(&guard, weight_layout, self.name())?;
        let width = last_dim(x_layout);
        let mut dx = vec![0f32; x.len()];
        fill_rows(&mut dx, width, |row, out| {
            let span = row * width..(row + 1) * width;
            let (x, grad) = (&x[span.clone()], &grad[span]);
            let r = inverse_rms(x, self.eps);
            let mean = x
                .iter()
                .zip(grad)
                .zip(weight)
                .map(|((x, g), w)| g * w * x * r)
                .sum::<f32>()
                / width as f32;
            for (((o, x), g), w) in out.iter_mut().zip(x).zip(grad).zip(weight) {
                *o = r * (g * w - x * r * mean);
            }
        });
        Ok(output(dx, x_layout))
    }
}

/// RMSNorm over the last dimension with a frozen weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNorm {
        weight: weight.contiguous()?,
        eps: eps as f32,
    })
}

// ---------------------------------------------------------------------------------------
// Rope: y = x * cos + swap_halves(x) * sin, tables `[b, 1, t, d]` over `x` `[b, h, t, d]`.

struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The transposed rotation, `dx_j = g_j cos_j + g_p(j) sin_p(j)` with `p` the swap of
    /// halves: the backward of the rotation, whose own backward is the rotation again.
    transposed: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(storage, layout, self.name())?;
        let (cos_guard, cos_layout) = self.cos.storage_and_layout();
        let (sin_guard, sin_layout) = self.sin.storage_and_layout();
        let cos = captured(&cos_guard, cos_layout, self.name())?;
        let sin = captured(&sin_guard, sin_layout, self.name())?;
        let [b, heads, t, d] = layout.dims() else {
            candle_core::bail!(
                "fused-rope: expected [b, heads, t, d], got {:?}",
                layout.dims()
            );
        };
        let (b, heads, t, d) = (*b, *heads, *t, *d);
        if cos.len() != b * t * d || sin.len() != cos.len() || d % 2 != 0 {
            candle_core::bail!("fused-rope: tables do not fit [{b}, {heads}, {t}, {d}]");
        }
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        fill_rows(&mut y, d, |row, out| {
            let (batch, position) = (row / (heads * t), row % t);
            let table = (batch * t + position) * d;
            let (cos, sin) = (&cos[table..table + d], &sin[table..table + d]);
            let x = &x[row * d..(row + 1) * d];
            for j in 0..d {
                let partner = if j < half { j + half } else { j - half };
                out[j] = if self.transposed {
                    x[j] * cos[j] + x[partner] * sin[partner]
                } else {
                    x[j] * cos[j] + x[partner] * sin[j]
                };
            }
        });
        Ok(output(y, layout))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        let transposed = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            transposed: !self.transposed,
        };
        Ok(Some(grad_y.contiguous()?.apply_op1(transposed)?))
    }
}

/// `x * cos + swap_halves(x) * sin` for `x` `[b, heads, t, d]` and tables `[b, 1, t, d]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        transposed: false,
    })
}

// ---------------------------------------------------------------------------------------
// Softmax over the last dimension.

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(storage, layout, self.name())?;
        let width = last_dim(layout);
        let mut y = vec![0f32; x.len()];
        fill_rows(&mut y, width, |row, out| {
            let x = &x[row * width..(row + 1) * width];
            let max = max_of(x);
            for (o, x) in out.iter_mut().zip(x) {
                *o = exp(x - max);
            }
            let inverse = 1.0 / sum_of(out, |o| o);
            out.iter_mut().for_each(|o| *o *= inverse);
        });
        Ok(output(y, layout))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(
            &grad_y.contiguous()?,
            &SoftmaxBackward,
        )?))
    }
}

/// `dx = y (g - sum(g y))` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        y_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = values(y, y_layout, self.name())?;
        let grad = values(grad, grad_layout, self.name())?;
        let width = last_dim(y_layout);
        let mut dx = vec![0f32; y.len()];
        fill_rows(&mut dx, width, |row, out| {
            let span = row * width..(row + 1) * width;
            let (y, grad) = (&y[span.clone()], &grad[span]);
            let dot = y.iter().zip(grad).map(|(y, g)| y * g).sum::<f32>();
            for ((o, y), g) in out.iter_mut().zip(y).zip(grad) {
                *o = y * (g - dot);
            }
        });
        Ok(output(dx, y_layout))
    }
}

/// Softmax over the last dimension (rows of -inf only are not expected: every query sees
/// itself).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

// ---------------------------------------------------------------------------------------
// SwiGLU: y = silu(gate) * up.

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = values(gate, gate_layout, self.name())?;
        let up = values(up, up_layout, self.name())?;
        if gate_layout.dims() != up_layout.dims() {
            candle_core::bail!(
                "fused-silu-mul: gate {:?} and up {:?} differ",
                gate_layout.dims(),
                up_layout.dims()
            );
        }
        let mut y = vec![0f32; gate.len()];
        fill_elements(&mut y, |start, out| {
            let span = start..start + out.len();
            for ((o, g), u) in out.iter_mut().zip(&gate[span.clone()]).zip(&up[span]) {
                *o = g * sigmoid(*g) * u;
            }
        });
        Ok(output(y, gate_layout))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_y = grad_y.contiguous()?;
        let both = gate.apply_op3_no_bwd(up, &grad_y, &SiluMulBackward)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// SwiGLU's two input gradients from one pass, stacked as `[2, ..gate's shape]`:
/// `d gate = g up s (1 + gate (1 - s))` with `s = sigmoid(gate)`, `d up = g silu(gate)`.
struct SiluMulBackward;

impl CustomOp3 for SiluMulBackward {
    fn name(&self) -> &'static str {
        "fused-silu-mul-backward"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = values(gate, gate_layout, self.name())?;
        let up = values(up, up_layout, self.name())?;
        let grad = values(grad, grad_layout, self.name())?;
        let n = gate.len();
        let mut both = vec![0f32; 2 * n];
        let (d_gate, d_up) = both.split_at_mut(n);
        let fill = |start: usize, d_gate: &mut [f32], d_up: &mut [f32]| {
            let span = start..start + d_gate.len();
            let inputs = gate[span.clone()]
                .iter()
                .zip(&up[span.clone()])
                .zip(&grad[span]);
            for ((dg, du), ((g, u), d)) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(inputs) {
                let s = sigmoid(*g);
                *dg = d * u * s * (1.0 + g * (1.0 - s));
                *du = d * g * s;
            }
        };
        if n <= TASK_ELEMENTS {
            fill(0, d_gate, d_up);
        } else {
            d_gate
                .par_chunks_mut(TASK_ELEMENTS)
                .zip(d_up.par_chunks_mut(TASK_ELEMENTS))
                .enumerate()
                .for_each(|(task, (d_gate, d_up))| fill(task * TASK_ELEMENTS, d_gate, d_up));
        }
        let mut dims = vec![2];
        dims.extend_from_slice(gate_layout.dims());
        Ok((CpuStorage::F32(both), Shape::from(dims)))
    }
}

/// `silu(gate) * up`, elementwise, for two tensors of one shape.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

// ---------------------------------------------------------------------------------------
// Cross-entropy's part per row: log p(target) = logit[target] - logsumexp(logits).

struct TargetLogProbs;

/// The u32 values of a contiguous layout.
fn indices<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [u32]> {
    let CpuStorage::U32(all) = storage else {
        candle_core::bail!("{op}: targets must be u32, got {:?}", storage.dtype());
    };
    if !layout.is_contiguous() {
        candle_core::bail!("{op}: the targets must be contiguous");
    }
    let start = layout.start_offset();
    Ok(&all[start..start + layout.shape().elem_count()])
}

/// The max and `log(sum(exp(x - max)))` of one row.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = max_of(row);
    let sum = sum_of(row, |x| exp(x - max));
    (max, sum.ln())
}

/// Rows of `logits` `[n, vocab]` with their targets `[n]`, checked against each other.
fn rows_and_targets<'a>(
    logits: (&'a CpuStorage, &Layout),
    targets: (&'a CpuStorage, &Layout),
    op: &str,
) -> Result<(&'a [f32], &'a [u32], usize)> {
    let (values_, targets) = (
        values(logits.0, logits.1, op)?,
        indices(targets.0, targets.1, op)?,
    );
    let vocab = last_dim(logits.1);
    if values_.len() != targets.len() * vocab {
        candle_core::bail!(
            "{op}: {} targets for logits {:?}",
            targets.len(),
            logits.1.dims()
        );
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("{op}: target {bad} is outside the vocabulary of {vocab}");
    }
    Ok((values_, targets, vocab))
}

impl CustomOp2 for TargetLogProbs {
    fn name(&self) -> &'static str {
        "fused-target-log-probs"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (logits, targets, vocab) = rows_and_targets(
            (logits, logits_layout),
            (targets, targets_layout),
            self.name(),
        )?;
        let mut out = vec![0f32; targets.len()];
        out.par_iter_mut().enumerate().for_each(|(row, o)| {
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            let (max, log_sum) = log_sum_exp(row_logits);
            *o = row_logits[targets[row] as usize] - max - log_sum;
        });
        Ok((CpuStorage::F32(out), Shape::from((targets.len(), 1))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _log_probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_logits = logits.apply_op3_no_bwd(targets, &grad, &TargetLogProbsBackward)?;
        Ok((Some(grad_logits), None))
    }
}

/// `d logits = g (onehot(target) - softmax(logits))` per row.
struct TargetLogProbsBackward;

impl CustomOp3 for TargetLogProbsBackward {
    fn name(&self) -> &'static str {
        "fused-target-log-probs-backward"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (logits, targets, vocab) = rows_and_targets(
            (logits, logits_layout),
            (targets, targets_layout),
            self.name(),
        )?;
        let grad = values(grad, grad_layout, self.name())?;
        let mut out = vec![0f32; logits.len()];
        fill_rows(&mut out, vocab, |row, out| {
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            let (max, log_sum) = log_sum_exp(row_logits);
            let g = grad[row];
            for (o, x) in out.iter_mut().zip(row_logits) {
                *o = -g * exp(x - max - log_sum);
            }
            out[targets[row] as usize] += g;
        });
        Ok(output(out, logits_layout))
    }
}

/// `[n, 1]`: the log-probability of each row's target under `logits` `[n, vocab]`.
pub fn target_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, TargetLogProbs)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var, D};

    use super::*;
    use crate::ops::swap_halves;
    use crate::testing::max_abs_diff;

    #[test]
    fn exp_is_within_two_ulp_of_the_library_exp_and_zero_below_the_normals() {
        let mut worst = 0f32;
        // -87.3 to 88: where e^x is a normal f32.
        for i in -992_000..=1_000_000 {
            let x = i as f32 * 8.8e-5;
            let (ours, library) = (exp(x), x.exp());
            worst = worst.max((ours - library).abs() / library);
        }
        assert!(worst < 2.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(87.9).is_finite() && exp(1e6).is_finite());
    }

    /// The op's output and its inputs' gradients against the composed reference, under a
    /// random upstream gradient.
    fn check(
        inputs: &[Var],
        fused: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let (ours, theirs) = (fused(&tensors), reference(&tensors));
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-5, "forward differs by {diff}");
        let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &Device::Cpu).unwrap();
        let grads = |y: &Tensor| {
            (y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (ours_grads, theirs_grads) = (grads(&ours), grads(&theirs));
        for (index, input) in tensors.iter().enumerate() {
            let diff = max_abs_diff(
                ours_grads.get(input).unwrap(),
                theirs_grads.get(input).unwrap(),
            );
            assert!(diff < 1e-4, "gradient of input {index} differs by {diff}");
        }
    }

    fn random_var(dims: &[usize], scale: f64) -> Var {
        Var::from_tensor(&Tensor::randn(0f32, scale as f32, dims, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn rms_norm_matches_the_composed_ops() {
        // Rows wider than one task and more rows than one task, so the split is exercised.
        let weight = Tensor::randn(0f32, 1.0, 576, &Device::Cpu).unwrap();
        check(
            &[random_var(&[3, 40, 576], 2.0)],
            |x| rms_norm(&x[0], &weight, 1e-5).unwrap(),
            |x| {
                let mean_square = x[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let inverse = ((mean_square + 1e-5).unwrap().sqrt().unwrap())
                    .recip()
                    .unwrap();
                x[0].broadcast_mul(&inverse)
                    .unwrap()
                    .broadcast_mul(&weight)
                    .unwrap()
            },
        );
    }

    #[test]
    fn rope_matches_the_composed_ops_both_ways() {
        let (b, heads, t, d) = (2, 3, 5, 8);
        let cos = Tensor::randn(0f32, 1.0, (b, 1, t, d), &Device::Cpu).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (b, 1, t, d), &Device::Cpu).unwrap();
        check(
            &[random_var(&[b, heads, t, d], 1.0)],
            |x| rope(&x[0], &cos, &sin).unwrap(),
            |x| {
                (x[0].broadcast_mul(&cos).unwrap()
                    + swap_halves(&x[0]).unwrap().broadcast_mul(&sin).unwrap())
                .unwrap()
            },
        );
    }

    #[test]
    fn softmax_matches_the_composed_ops_with_masked_entries() {
        let mask: Vec<f32> = (0..7 * 9)
            .map(|i| {
                if i % 9 > i / 9 + 1 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (7, 9), &Device::Cpu).unwrap();
        check(
            &[random_var(&[2, 7, 9], 3.0)],
            |x| softmax_last_dim(&x[0].broadcast_add(&mask).unwrap()).unwrap(),
            |x| crate::model::softmax_last_dim(&x[0].broadcast_add(&mask).unwrap()).unwrap(),
        );
    }

    #[test]
    fn silu_mul_matches_the_composed_ops() {
        check(
            &[random_var(&[5, 9000], 3.0), random_var(&[5, 9000], 1.0)],
            |x| silu_mul(&x[0], &x[1]).unwrap(),
            |x| (x[0].silu().unwrap() * &x[1]).unwrap(),
        );
    }

    #[test]
    fn target_log_probs_match_the_composed_ops() {
        let targets = Tensor::new(&[3u32, 0, 999, 42], &Device::Cpu).unwrap();
        check(
            &[random_var(&[4, 1000], 4.0)],
            |x| target_log_probs(&x[0], &targets).unwrap(),
            |x| crate::train::composed_target_log_probs(&x[0], &targets).unwrap(),
        );
        let outside = Tensor::new(&[3u32, 0, 1000, 42], &Device::Cpu).unwrap();
        let logits = Tensor::zeros((4, 1000), DType::F32, &Device::Cpu).unwrap();
        assert!(target_log_probs(&logits, &outside).is_err());
    }

    #[test]
    fn other_dtypes_are_refused() {
        let x = Tensor::zeros((2, 4), DType::F64, &Device::Cpu).unwrap();
        assert!(!applies(&x));
        assert!(softmax_last_dim(&x).is_err());
    }
}
