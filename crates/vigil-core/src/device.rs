//! Which device tensors live on: the build chooses the backend.

use burn::tensor::Device;

/// The default compute device of this build: CUDA device 0 when built with the `cuda` feature,
/// else burn's pure-Rust `flex` CPU backend.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Device::flex()
    }
}

/// The same device with reverse-mode autodiff enabled (training, input gradients).
pub fn autodiff_device() -> Device {
    default_device().autodiff()
}

/// Short name of the build's backend, for reports: `burn-flex` or `burn-cuda`.
pub fn backend_name() -> &'static str {
    if cfg!(feature = "cuda") {
        "burn-cuda"
    } else {
        "burn-flex"
    }
}
