//! Setting up the GPU for the engine: one stream, a memory pool that keeps what it has,
//! and TF32 for the f32 LoRA matmuls.
//!
//! Cold start: candle ships its kernels as PTX, which the driver compiles on first use of
//! each module (about 18 s on an H200 before the first step) and keeps in its compute cache
//! (`~/.nv/ComputeCache` or `CUDA_CACHE_PATH`); with that cache warm, process start to first
//! training step is under a second. Compiling the modules on parallel threads was measured
//! to save nothing (the driver compiles one at a time), so deployments keep the cache on a
//! volume instead (deploy/k8s/overlays/gpu).

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::{CudaDevice, Device, Result};
use tracing::warn;

/// GPU 0 on a stream of its own: a per-thread default stream (candle's default) is a
/// different stream on each thread a job's steps run on, and cannot be captured into a
/// CUDA graph.
#[allow(unsafe_code)]
pub fn device(tf32: bool) -> Result<Device> {
    let device = Device::new_cuda_with_stream(0)?;
    let cuda = device.as_cuda_device()?;
    // SAFETY: every tensor of the engine lives on this one stream, so the per-buffer CUDA
    // events that order work across streams are never needed; they cost two driver calls
    // per kernel and would otherwise be recorded into captured graphs.
    unsafe { cuda.disable_event_tracking() };
    keep_pool_memory(cuda);
    // The base weights are bf16, so TF32's 10-bit mantissa in the f32 LoRA matmuls (f32
    // accumulation) costs nothing the base model has not already given up. LIFT_TF32=0
    // (`Config::tf32`) keeps full f32.
    candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
    Ok(device)
}

/// By default the pool returns freed memory to the driver at every synchronisation, and a
/// training step (which synchronises to read its loss) maps its whole working set again.
#[allow(unsafe_code)]
fn keep_pool_memory(cuda: &CudaDevice) {
    let cu_device = cuda.cuda_stream().context().cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep_all = u64::MAX;
    // SAFETY: a query into an out-parameter, then a documented cuuint64_t attribute that
    // the driver only reads.
    let result = unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, cu_device)
            .result()
            .and_then(|()| {
                sys::cuMemPoolSetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut keep_all as *mut u64).cast(),
                )
                .result()
            })
    };
    if let Err(error) = result {
        warn!(%error, "could not make the CUDA memory pool keep freed memory");
    }
}
