//! # lacoot: layer collapse through optimal transport
//!
//! lacoot makes deep networks shallower. It trains a network with a regulariser that pulls every
//! shape-preserving block towards the identity, measured by the max-sliced Wasserstein distance between
//! the block's input and output feature clouds (LaCoOT, Quétu et al., ICCV 2025), then removes the
//! blocks that moved the data least, without finetuning.
//!
//! Data flows one way through the modules: `data` → `models` → `train` → `collapse` → `report`; the
//! optimal-transport distances in [`ot`] are used by training and by scoring. This release provides:
//!
//! - [`ot`]: differentiable sliced and max-sliced Wasserstein distances on burn tensors;
//! - [`arrays`]: reading point clouds and projection matrices from `.npy` and `.safetensors` files;
//! - [`device`]: the one place that chooses the compute device.

pub mod arrays;
pub mod collapse;
pub mod data;
pub mod device;
pub mod export;
pub mod fsutil;
pub mod kernels;
pub mod memory;
pub mod models;
pub mod ot;
pub mod report;
pub mod sweep;
pub mod train;
