//! The one place that chooses where tensors live.
//!
//! lacoot runs on burn's `flex` CPU backend. A GPU backend will be an optional Cargo feature; adding it
//! changes this module only.

use burn::tensor::Device;

/// The device lacoot computes on: burn's `flex` CPU backend, without autodiff.
///
/// Wrap it with [`Device::autodiff`] when gradients are needed.
pub fn default_device() -> Device {
    Device::flex()
}

/// The default device with automatic differentiation enabled.
pub fn autodiff_device() -> Device {
    default_device().autodiff()
}
