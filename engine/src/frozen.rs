//! `x W^T` for a frozen base weight, with a backward that computes only the input gradient.
//! candle's own matmul backward also computes `x^T grad` for the weight whether or not anyone
//! wants it: a third more matmul work per step and a weight-sized buffer per projection,
//! which for an 8B model is 16 GB of gradients nobody reads.
//!
//! On the CPU in f32 the projection and its LoRA term are one op (`lora_matmul`). Composed,
//! autograd keeps the base product, the low-rank product and their sum, three `[rows, out]`
//! tensors a projection, and its backward fills a zeroed accumulator for each node before
//! adding into it; fused, the output and the small `x A^T` alone are kept, the products go
//! straight into their outputs (gemm adding the LoRA term to the base product in place), and
//! the backward is five matmuls.

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

/// An f32 matrix as gemm reads it: `rows x cols`, element `(i, j)` at
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// The first `rows * cols` values of `data`, row-major.
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        if data.len() < rows * cols {
            candle_core::bail!(
                "lora matmul: {} values for a {rows} x {cols} matrix",
                data.len()
            );
        }
        Ok(Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        })
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `(m, n, k)` of `lhs rhs`, checked.
fn product_size(lhs: Matrix, rhs: Matrix) -> Result<(usize, usize, usize)> {
    if rhs.rows != lhs.cols {
        candle_core::bail!(
            "lora matmul: cannot multiply {} x {} by {} x {}",
            lhs.rows,
            lhs.cols,
            rhs.rows,
            rhs.cols
        );
    }
    Ok((lhs.rows, rhs.cols, lhs.cols))
}

/// `dst = scale lhs rhs`, or `dst += scale lhs rhs` when `accumulate`, with `dst` row-major
/// `lhs.rows x rhs.cols`, on gemm's rayon pool (candle's matmul runs the same kernels, but
/// always into a freshly zeroed buffer, never adding to one).
#[allow(unsafe_code)]
fn gemm_into(
    dst: &mut [f32],
    lhs: Matrix,
    rhs: Matrix,
    scale: f32,
    accumulate: bool,
) -> Result<()> {
    let (m, n, _) = product_size(lhs, rhs)?;
    if dst.len() != m * n {
        candle_core::bail!("lora matmul: {} values for a {m} x {n} product", dst.len());
    }
    // SAFETY: `dst` holds exactly the product's values.
    unsafe { run_gemm(dst.as_mut_ptr(), lhs, rhs, scale, accumulate) };
    Ok(())
}

/// `scale lhs rhs` in a new row-major buffer. Not zeroed first: that would be a pass over
/// the buffer (and a page fault per fresh page at a training step's sizes) only for gemm to
/// overwrite it.
#[allow(unsafe_code)]
fn gemm_new(lhs: Matrix, rhs: Matrix, scale: f32) -> Result<Vec<f32>> {
    let (m, n, _) = product_size(lhs, rhs)?;
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: the capacity holds the product's values; gemm writes every one of them without
    // reading any when not accumulating (it zeroes its `alpha` then, and `k = 0` writes
    // zeros), so all `m * n` are initialised before `set_len`.
    unsafe {
        run_gemm(dst.as_mut_ptr(), lhs, rhs, scale, false);
        dst.set_len(m * n);
    }
    Ok(dst)
}

/// # Safety
/// `dst` must be valid for writes of `lhs.rows * rhs.cols` values, and initialised when
/// `accumulate`; `lhs` and `rhs` must be checked by `product_size`.
#[allow(unsafe_code)]
unsafe fn run_gemm(dst: *mut f32, lhs: Matrix, rhs: Matrix, scale: f32, accumulate: bool) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: both matrices read within their slices (`Matrix::row_major` checked the
    // lengths, `t` only swaps strides); the caller vouches for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            // dst = alpha dst + beta lhs rhs; alpha is only read when accumulating.
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The f32 values of a CPU tensor, contiguous.
fn cpu_values<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let Storage::Cpu(storage) = storage else {
        candle_core::bail!("lora matmul: {what} is not on the CPU");
    };
    crate::fused::values(storage, layout, "lora matmul")
}

/// `x W^T + scale (x A^T) B^T`: a frozen projection and its LoRA term, gradients for `x`,
/// `A` and `B`. CPU, f32 only.
struct LoraMatmul {
    /// `[out, in]`, contiguous.
    weight: Tensor,
    scale: f64,
    /// `scale x A^T` of the forward, which the backward needs again (recomputed if absent).
    low_rank: std::sync::Mutex<Option<Vec<f32>>>,
}

impl LoraMatmul {
    /// `(rows, in, out, rank)` of a call, checked against each other.
    fn sizes(&self, x: &Layout, a: &Layout, b: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (out_features, in_features) = self.weight.dims2()?;
        let (rank, a_in) = a.shape().dims2()?;
        let (b_out, b_rank) = b.shape().dims2()?;
        let width = *x.dims().last().unwrap_or(&0);
        if width != in_features || a_in != in_features || b_out != out_features || b_rank != rank {
            candle_core::bail!(
                "lora matmul: x {:?}, A {:?} and B {:?} do not fit a {in_features} -> {out_features} projection",
                x.dims(),
                a.dims(),
                b.dims()
            );
        }
        let rows = x.shape().elem_count() / in_features.max(1);
        Ok((rows, in_features, out_features, rank))
    }
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
        let (rows, in_features, out_features, rank) = self.sizes(x_layout, a_layout, b_layout)?;
        let x = Matrix::row_major(
            crate::fused::values(x, x_layout, self.name())?,
            rows,
            in_features,
        )?;
        let a = Matrix::row_major(
            crate::fused::values(a, a_layout, self.name())?,
            rank,
            in_features,
        )?;
        let b = Matrix::row_major(
            crate::fused::values(b, b_layout, self.name())?,
            out_features,
            rank,
        )?;
        let (weight, weight_layout) = self.weight.storage_and_layout();
        let weight = Matrix::row_major(
            cpu_values(&weight, weight_layout, "the weight")?,
            out_features,
            in_features,
        )?;
        let low_rank = gemm_new(x, a.t(), self.scale as f32)?;
        let mut y = gemm_new(x, weight.t(), 1.0)?;
        gemm_into(
            &mut y,
            Matrix::row_major(&low_rank, rows, rank)?,
            b.t(),
            1.0,
            true,
        )?;
        *self.low_rank.lock().unwrap_or_else(|e| e.into_inner()) = Some(low_rank);
        let mut dims = x_layout.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = out_features;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // New tensors from plain buffers: nothing here records a graph, so no gradient or
        // activation of this step is kept alive by the gradients returned.
        let grad_y = grad_y.contiguous()?;
        let (rows, in_features, out_features, rank) =
            self.sizes(x.layout(), a.layout(), b.layout())?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let (a_storage, a_layout) = a.storage_and_layout();
        let (b_storage, b_layout) = b.storage_and_layout();
        let (g_storage, g_layout) = grad_y.storage_and_layout();
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let x2 = Matrix::row_major(cpu_values(&x_storage, x_layout, "x")?, rows, in_features)?;
        let a2 = Matrix::row_major(cpu_values(&a_storage, a_layout, "A")?, rank, in_features)?;
        let b2 = Matrix::row_major(cpu_values(&b_storage, b_layout, "B")?, out_features, rank)?;
        let g = Matrix::row_major(
            cpu_values(&g_storage, g_layout, "the gradient")?,
            rows,
            out_features,
        )?;
        let w = Matrix::row_major(
            cpu_values(&w_storage, w_layout, "the weight")?,
            out_features,
            in_features,
        )?;
        let scale = self.scale as f32;
        let saved = self
            .low_rank
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let low_rank = match saved {
            Some(low_rank) if low_rank.len() == rows * rank => low_rank,
            _ => gemm_new(x2, a2.t(), scale)?,
        };
        let grad_b = gemm_new(g.t(), Matrix::row_major(&low_rank, rows, rank)?, 1.0)?;
        let grad_low_rank = gemm_new(g, b2, scale)?;
        let grad_low_rank = Matrix::row_major(&grad_low_rank, rows, rank)?;
        let grad_a = gemm_new(grad_low_rank.t(), x2, 1.0)?;
        let mut grad_x = gemm_new(g, w, 1.0)?;
        gemm_into(&mut grad_x, grad_low_rank, a2, 1.0, true)?;
        let cpu = candle_core::Device::Cpu;
        Ok((
            Some(Tensor::from_vec(grad_x, x.shape(), &cpu)?),
            Some(Tensor::from_vec(grad_a, (rank, in_features), &cpu)?),
            Some(Tensor::from_vec(grad_b, (out_features, rank), &cpu)?),
        ))
    }
}

/// `x [.., in] @ weight^T + scale (x A^T) B^T` as one op, `weight` `[out, in]` frozen and the
/// LoRA pair trained; x, A and B f32 on the CPU (`fused::applies`).
pub fn lora_matmul(x: &Tensor, weight: &Tensor, pair: &LoraPair, scale: f64) -> Result<Tensor> {
    let op = LoraMatmul {
        weight: weight.contiguous()?,
        scale,
        low_rank: std::sync::Mutex::new(None),
    };
    x.contiguous()?.apply_op3(
        &pair.a.as_tensor().contiguous()?,
        &pair.b.as_tensor().contiguous()?,
        op,
    )
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
        // Tiny, and large enough for gemm's packed kernels rather than its small-size paths.
        check_lora_projection((2, 3), (5, 4), 2);
        check_lora_projection((3, 70), (130, 96), 16);
    }

    /// `(batch, tokens)` rows through an `in -> out` projection with a LoRA pair of `rank`.
    fn check_lora_projection(
        (batch, tokens): (usize, usize),
        (inputs, outputs): (usize, usize),
        rank: usize,
    ) {
        let device = Device::Cpu;
        let var = |shape: (usize, usize, usize)| {
            let (b, t, n) = shape;
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, n), &device).unwrap()).unwrap()
        };
        let x = var((batch, tokens, inputs));
        let pair = LoraPair {
            a: Var::from_tensor(&Tensor::randn(0f32, 0.1, (rank, inputs), &device).unwrap())
                .unwrap(),
            b: Var::from_tensor(&Tensor::randn(0f32, 0.1, (outputs, rank), &device).unwrap())
                .unwrap(),
        };
        let w = Tensor::randn(0f32, 0.1, (outputs, inputs), &device).unwrap();
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
        let weights = Tensor::randn(0f32, 1.0, (batch, tokens, outputs), &device).unwrap();
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
