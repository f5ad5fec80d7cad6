//! What every layer above stands on: where tensors live and in which format
//! ([`device`]), running work one thread per core ([`threads`]), timing ([`timing`]),
//! the machine's matmul peak ([`matmul_peak`]), loading libtorch's CUDA half
//! ([`cuda`]) and two libtorch switches tch does not bind ([`torch_ext`], C++ shims in
//! `csrc/`). Nothing here knows about models, data or training.

pub mod cuda;
pub mod device;
pub mod matmul_peak;
pub mod threads;
pub mod timing;
pub mod torch_ext;
