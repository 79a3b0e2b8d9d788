//! The burn ops lacoot replaces with its own kernels, one file per op.
//!
//! Each is a burn backend extension: a `flex` implementation for the shapes and element types it
//! was measured on, burn's generic op as the fallback everywhere else (other backends, other
//! dtypes, unsupported options), and an autodiff backward of its own.
//!
//! | op | replaces | why (benchmark) |
//! |---|---|---|
//! | `conv2d` | `Conv2d::forward` and its backward passes for dense convolutions | batched im2col products instead of one small product per image (`cargo bench --bench conv_layers`) |
//! | `projection` | `matmul` of point clouds by directions in the distances | the narrow `[n, d] × [d, L]` product split along `d` across threads, SIMD per processor (`cargo bench --bench mswd`) |

pub mod conv2d;
pub(crate) mod projection;

pub use conv2d::conv2d;
