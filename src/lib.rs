//! sympathy: a small, fast, readable LLM lab built on libtorch through `tch`.
//!
//! The data flows through the modules in this order (see `docs/tour.md`):
//!
//! ```text
//! corpus folder ─► data (files, per-file 90/10 split) ─► tokenizer ─► token streams
//!               ─► data::Batches (random windows, seeded) ─► model::Gpt ─► logits
//!               ─► loss ─► backward ─► optim (AdamW + LrSchedule) ─► checkpoint
//! checkpoint ─► model::Gpt + tokenizer ─► generate (KvCache, sampling) ─► stdout
//! ```
//!
//! # Shape legend
//! Every tensor comment uses these letters:
//! `B` batch, `T` time (sequence length), `C` channels (`n_embd`), `H` heads,
//! `D` head dimension (`C / H`), `V` vocabulary size.

pub mod bench;
pub mod bench_generate;
pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod data;
pub mod data_parallel;
pub mod error;
pub mod explain;
pub mod flops;
pub mod fused_adamw;
pub mod generate;
pub mod inspect;
pub mod interop;
pub mod kv_cache;
pub mod matmul_floor;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod run_lock;
pub mod sampling;
pub mod stop;
pub mod tokenizer;
pub mod torch_ext;
pub mod train;

pub use error::{Error, Result};

/// A training step counter (the number of optimizer updates done so far).
pub type Step = u64;
