//! Small differentiable ops that candle lacks, each one kernel launch per direction.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `[.., d]` -> `[.., d]` with the two halves of the last dimension exchanged: the rotation
/// of rope without the `cat` of two `narrow`s, whose backward pads each half with zeros.
struct SwapHalves;

impl SwapHalves {
    /// Rows and half width of a contiguous input.
    fn plan(layout: &Layout) -> Result<(usize, usize)> {
        if !layout.is_contiguous() {
            candle_core::bail!("swap-halves: the input must be contiguous");
        }
        let width = *layout.dims().last().unwrap_or(&0);
        if !width.is_multiple_of(2) {
            candle_core::bail!("swap-halves: the last dimension ({width}) must be even");
        }
        Ok((layout.shape().elem_count() / width.max(1), width / 2))
    }

    #[allow(unsafe_code)]
    fn swap<S>(src: &S, layout: &Layout) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let (rows, half) = Self::plan(layout)?;
        let shape = layout.shape().clone();
        // SAFETY: both copies below write every element of the new storage.
        let mut out = unsafe { src.device().alloc_uninit(&shape, src.dtype())? };
        let offset = layout.start_offset();
        if rows * half > 0 {
            src.copy2d(&mut out, rows, half, 2 * half, 2 * half, offset + half, 0)?;
            src.copy2d(&mut out, rows, half, 2 * half, 2 * half, offset, half)?;
        }
        Ok((out, shape))
    }
}

impl CustomOp1 for SwapHalves {
    fn name(&self) -> &'static str {
        "swap-halves"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        Self::swap(storage, layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Self::swap(storage, layout)
    }

    /// The exchange is its own inverse.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(swap_halves(grad_res)?))
    }
}

pub fn swap_halves(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SwapHalves)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var, D};

    use super::swap_halves;

    #[test]
    fn exchanges_halves_and_passes_the_gradient_back_exchanged() {
        let device = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 24.0, &device)
                .unwrap()
                .reshape((2, 3, 4))
                .unwrap(),
        )
        .unwrap();
        let y = swap_halves(x.as_tensor()).unwrap();
        let d = 4;
        let expected = Tensor::cat(
            &[
                x.narrow(D::Minus1, d / 2, d / 2).unwrap(),
                x.narrow(D::Minus1, 0, d / 2).unwrap(),
            ],
            D::Minus1,
        )
        .unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 4), &device).unwrap();
        let grads = (&y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = grads.get(x.as_tensor()).unwrap();
        assert_eq!(
            grad.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            swap_halves(&weights)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn rejects_an_odd_width() {
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(swap_halves(&x).is_err());
    }
}
