//! `x W^T` for a frozen base weight, with a backward that computes only the input gradient.
//! candle's own matmul backward also computes `x^T grad` for the weight whether or not anyone
//! wants it: a third more matmul work per step and a weight-sized buffer per projection,
//! which for an 8B model is 16 GB of gradients nobody reads.
//!
//! On the CPU in f32 the projection and its LoRA term are one op (`lora_matmul`). Composed,
//! autograd keeps the base product, the low-rank product and their sum, three `[rows, out]`
//! tensors a projection, and its backward fills a zeroed accumulator for each node before
//! adding into it; fused, the output alone is kept and the backward is six matmuls.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use crate::lora::LoraPair;

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

/// `x W^T + scale (x A^T) B^T`: a frozen projection and its LoRA term, gradients for `x`,
/// `A` and `B`. CPU only.
struct LoraMatmul {
    frozen: FrozenMatmul,
    scale: f64,
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "lora-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((_, rows, out_features, in_features), lhs, rhs, shape) = self.frozen.plan(x_layout)?;
        let (rank, a_in) = a_layout.shape().dims2()?;
        let (b_out, b_rank) = b_layout.shape().dims2()?;
        if a_in != in_features || b_out != out_features || b_rank != rank {
            candle_core::bail!(
                "lora matmul: A {:?} and B {:?} do not fit a {in_features} -> {out_features} projection",
                a_layout.dims(),
                b_layout.dims()
            );
        }
        let (weight, _) = self.frozen.weight.storage_and_layout();
        let Storage::Cpu(weight) = &*weight else {
            candle_core::bail!("lora matmul: weight and input are on different devices");
        };
        let base = x.matmul(weight, (1, rows, out_features, in_features), &lhs, &rhs)?;
        let low_rank = x.matmul(
            a,
            (1, rows, rank, in_features),
            &lhs,
            &a_layout.transpose(0, 1)?,
        )?;
        let delta = low_rank.matmul(
            b,
            (1, rows, out_features, rank),
            &Layout::contiguous((rows, rank)),
            &b_layout.transpose(0, 1)?,
        )?;
        let (CpuStorage::F32(mut sum), CpuStorage::F32(delta)) = (base, delta) else {
            candle_core::bail!("lora matmul: f32 only");
        };
        let scale = self.scale as f32;
        for (y, d) in sum.iter_mut().zip(&delta) {
            *y += scale * d;
        }
        Ok((CpuStorage::F32(sum), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Detached: A and B are variables, so products with them would record a graph that
        // keeps this step's gradients and activations alive until its end.
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let (out_features, in_features) = self.frozen.weight.dims2()?;
        let x2 = x.reshape(((), in_features))?;
        let grad2 = grad_y.contiguous()?.reshape(((), out_features))?;
        let low_rank = x2.matmul(&a.t()?)?;
        let grad_low_rank = (grad2.matmul(&b)? * self.scale)?;
        let grad_b = (grad2.t()?.matmul(&low_rank)? * self.scale)?;
        let grad_a = grad_low_rank.t()?.matmul(&x2)?;
        let grad_x = (grad2.matmul(&self.frozen.weight)? + grad_low_rank.matmul(&a)?)?;
        Ok((Some(grad_x.reshape(x.shape())?), Some(grad_a), Some(grad_b)))
    }
}

/// `x [.., in] @ weight^T + scale (x A^T) B^T` as one op, `weight` `[out, in]` frozen and the
/// LoRA pair trained; x, A and B f32 on the CPU (`fused::applies`).
pub fn lora_matmul(x: &Tensor, weight: &Tensor, pair: &LoraPair, scale: f64) -> Result<Tensor> {
    let op = LoraMatmul {
        frozen: FrozenMatmul {
            weight: weight.contiguous()?,
        },
        scale,
    };
    x.contiguous()?
        .apply_op3(pair.a.as_tensor(), pair.b.as_tensor(), op)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::{frozen_matmul, lora_matmul};
    use crate::lora::LoraPair;
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

    #[test]
    fn the_fused_lora_projection_matches_the_composed_one_and_its_gradients() {
        let device = Device::Cpu;
        let var = |shape: (usize, usize, usize)| {
            let (b, t, n) = shape;
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, n), &device).unwrap()).unwrap()
        };
        let x = var((2, 3, 5));
        let pair = LoraPair {
            a: Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5), &device).unwrap()).unwrap(),
            b: Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 2), &device).unwrap()).unwrap(),
        };
        let w = Tensor::randn(0f32, 1.0, (4, 5), &device).unwrap();
        let scale = 2.5;
        let ours = lora_matmul(x.as_tensor(), &w, &pair, scale).unwrap();
        let low_rank = x
            .as_tensor()
            .broadcast_matmul(&pair.a.t().unwrap())
            .unwrap();
        let delta = (low_rank.broadcast_matmul(&pair.b.t().unwrap()).unwrap() * scale).unwrap();
        let reference = (frozen_matmul(x.as_tensor(), &w).unwrap() + delta).unwrap();
        let diff = max_abs_diff(&ours, &reference);
        assert!(diff < 1e-4, "forward differs by {diff}");
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 4), &device).unwrap();
        let grads = |y: &Tensor| {
            let grads = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [x.as_tensor(), pair.a.as_tensor(), pair.b.as_tensor()]
                .map(|t| grads.get(t).expect("a gradient").clone())
        };
        for (name, (ours, reference)) in ["x", "A", "B"]
            .into_iter()
            .zip(grads(&ours).iter().zip(&grads(&reference)))
        {
            let diff = max_abs_diff(ours, reference);
            assert!(diff < 1e-4, "gradient of {name} differs by {diff}");
        }
    }
}
