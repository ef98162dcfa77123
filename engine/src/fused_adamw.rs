//! AdamW's update on the CPU in place: one pass over the flat gradient for its norm, one
//! each for the two moments, one per variable for its values. Composed from candle's ops the
//! update allocates about fifteen buffers the size of every trainable parameter (156 MB each
//! for SmolLM2 at rank 128), which set a rank-128 step's peak memory
//! (docs/benchmarks.md, "Fused elementwise passes"). GPUs keep the composed update, which a
//! CUDA graph can replay.

use candle_core::{CpuStorage, CustomOp1, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fused::values;

/// Elements per rayon task.
const TASK_ELEMENTS: usize = 64 * 1024;

/// The contiguous f32 values of a destination layout, mutably.
fn values_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(all) = storage else {
        candle_core::bail!("{op}: f32 only");
    };
    if !layout.is_contiguous() {
        candle_core::bail!("{op}: the destination must be contiguous");
    }
    let start = layout.start_offset();
    Ok(&mut all[start..start + layout.shape().elem_count()])
}

/// `sqrt(sum(x^2))` as a scalar tensor, summed in f64.
struct Norm;

impl CustomOp1 for Norm {
    fn name(&self) -> &'static str {
        "fused-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(storage, layout, self.name())?;
        let sum: f64 = x
            .par_chunks(TASK_ELEMENTS)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|v| f64::from(*v) * f64::from(*v))
                    .sum::<f64>()
            })
            .sum();
        Ok((CpuStorage::F32(vec![sum.sqrt() as f32]), Shape::from(())))
    }
}

/// The L2 norm of an f32 CPU tensor.
pub fn norm(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Norm)
}

/// A moment's running average, in place: `m = beta m + (1 - beta) (scale g)`, or of
/// `(scale g)^2` for the second moment; `scale` is the clipping factor.
pub struct Moment {
    pub beta: f32,
    /// `1 - beta`, taken in f64: in f32, `1 - 0.999` is off by 5e-5 of itself.
    pub keep: f32,
    pub scale: f32,
    pub squared: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "fused-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        m: &mut CpuStorage,
        m_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<()> {
        let m = values_mut(m, m_layout, self.name())?;
        let g = values(g, g_layout, self.name())?;
        if m.len() != g.len() {
            candle_core::bail!(
                "fused-adamw-moment: {} moments for {} gradients",
                m.len(),
                g.len()
            );
        }
        m.par_chunks_mut(TASK_ELEMENTS)
            .zip(g.par_chunks(TASK_ELEMENTS))
            .for_each(|(m, g)| {
                for (m, g) in m.iter_mut().zip(g) {
                    let g = g * self.scale;
                    let g = if self.squared { g * g } else { g };
                    *m = self.beta * *m + self.keep * g;
                }
            });
        Ok(())
    }
}

/// One variable's step, in place, from its span of the flat moments:
/// `theta -= lr (m c1 / (sqrt(v c2) + eps) + decay theta)`, `c1`, `c2` the bias corrections.
pub struct ParameterStep {
    /// Where the variable's elements start in the flat moments.
    pub offset: usize,
    pub learning_rate: f32,
    pub first_correction: f32,
    pub second_correction: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl InplaceOp3 for ParameterStep {
    fn name(&self) -> &'static str {
        "fused-adamw-parameter"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        theta_layout: &Layout,
        m: &CpuStorage,
        m_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<()> {
        let theta = values_mut(theta, theta_layout, self.name())?;
        let (m, v) = (
            values(m, m_layout, self.name())?,
            values(v, v_layout, self.name())?,
        );
        let span = self.offset..self.offset + theta.len();
        let (Some(m), Some(v)) = (m.get(span.clone()), v.get(span)) else {
            candle_core::bail!("fused-adamw-parameter: the moments end before this variable");
        };
        theta
            .par_chunks_mut(TASK_ELEMENTS)
            .zip(m.par_chunks(TASK_ELEMENTS).zip(v.par_chunks(TASK_ELEMENTS)))
            .for_each(|(theta, (m, v))| {
                for ((theta, m), v) in theta.iter_mut().zip(m).zip(v) {
                    let step = m * self.first_correction
                        / ((v * self.second_correction).sqrt() + self.eps)
                        + self.weight_decay * *theta;
                    *theta -= self.learning_rate * step;
                }
            });
        Ok(())
    }
}
