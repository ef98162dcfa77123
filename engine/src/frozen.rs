//! `x W^T` for a frozen base weight, with a backward that computes only the input gradient.
//! candle's own matmul backward also computes `x^T grad` for the weight whether or not anyone
//! wants it: a third more matmul work per step and a weight-sized buffer per projection,
//! which for an 8B model is 16 GB of gradients nobody reads.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `(batch, m, n, k)` of a matmul, the lhs and rhs layouts, and the output shape.
type MatmulPlan = ((usize, usize, usize, usize), Layout, Layout, Shape);

struct FrozenMatmul {
    /// `[out, in]`, contiguous.
    weight: Tensor,
}

impl FrozenMatmul {
    /// Problem size and the two layouts for `x [.., in] @ W^T [in, out]`.
    fn plan(&self, x_layout: &Layout) -> Result<MatmulPlan> {
        let (out_features, in_features) = self.weight.dims2()?;
        let dims = x_layout.dims();
        let k = *dims.last().unwrap_or(&0);
        if k != in_features {
            candle_core::bail!(
                "frozen matmul: input width {k} does not match weight {in_features}"
            );
        }
        if !x_layout.is_contiguous() {
            candle_core::bail!("frozen matmul: the input must be contiguous");
        }
        let m = x_layout.shape().elem_count() / k.max(1);
        let lhs = Layout::contiguous_with_offset((m, k), x_layout.start_offset());
        let (_, weight_layout) = self.weight.storage_and_layout();
        let rhs = weight_layout.transpose(0, 1)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = out_features;
        Ok(((1, m, out_features, k), lhs, rhs, Shape::from(out_dims)))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bmnk, lhs, rhs, shape) = self.plan(x_layout)?;
        let (weight, _) = self.weight.storage_and_layout();
        let Storage::Cpu(weight) = &*weight else {
            candle_core::bail!("frozen matmul: weight and input are on different devices");
        };
        Ok((x.matmul(weight, bmnk, &lhs, &rhs)?, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (bmnk, lhs, rhs, shape) = self.plan(x_layout)?;
        let (weight, _) = self.weight.storage_and_layout();
        let Storage::Cuda(weight) = &*weight else {
            candle_core::bail!("frozen matmul: weight and input are on different devices");
        };
        Ok((x.matmul(weight, bmnk, &lhs, &rhs)?, shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_y.broadcast_matmul(&self.weight)?))
    }
}

/// `x [.., in] @ weight^T` where `weight` `[out, in]` never receives a gradient.
pub fn frozen_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let weight = weight.contiguous()?;
    x.contiguous()?.apply_op1(FrozenMatmul { weight })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::frozen_matmul;
    use crate::testing::max_abs_diff;

    #[test]
    fn matches_matmul_and_its_input_gradient() {
        let device = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5), &device).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 5), &device).unwrap();
        let ours = frozen_matmul(x.as_tensor(), &w).unwrap();
        let reference = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        let diff = max_abs_diff(&ours, &reference);
        assert!(diff < 1e-5, "forward differs by {diff}");
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 4), &device).unwrap();
        let grad = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let ours_grad = grad(&ours).get(x.as_tensor()).unwrap().clone();
        let reference_grad = grad(&reference).get(x.as_tensor()).unwrap().clone();
        let diff = max_abs_diff(&ours_grad, &reference_grad);
        assert!(diff < 1e-5, "input gradient differs by {diff}");
    }
}
