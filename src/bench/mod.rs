//! `sympathy bench`: what this machine can do, measured rather than looked up.
//!
//! [`training`] times whole training steps and their phases and reports MFU against
//! the matmul peak ([`crate::runtime::matmul_peak`], which `bench matmul` reports in
//! full); [`matmul_floor`] times a step's weight-matrix products alone, the bound any
//! implementation on the same kernels meets; [`generation`] measures decoding with
//! and without the KV cache; [`serve`] measures `sympathy serve` from its clients' side.

pub mod generation;
pub mod matmul_floor;
pub mod serve;
pub mod training;
