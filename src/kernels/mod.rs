//! The burn ops lacoot replaces with its own kernels, one file per op.
//!
//! Each is a burn backend extension: a `flex` implementation for the shapes and element types it
//! was measured on, burn's generic op as the fallback everywhere else (other backends, other
//! dtypes, unsupported options), and an autodiff backward of its own.
//!
//! | op | replaces | why (benchmark) |
//! |---|---|---|
//! | [`conv2d`] | `Conv2d::forward` and its backward passes for dense convolutions | batched im2col products instead of one small product per image (`cargo bench --bench conv_layers`) |

pub mod conv2d;

pub use conv2d::conv2d;
