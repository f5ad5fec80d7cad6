//! sympathy: a small, fast, readable LLM lab built on libtorch through `tch`.
//!
//! The data flows through the modules in this order (see `docs/tour.md`):
//!
//! ```text
//! corpus folder ─► data (files, per-file 90/10 split) ─► tokenizer ─► token streams
//!               ─► data::Batches (random windows, seeded) ─► model::Gpt ─► logits
//!               ─► loss ─► backward ─► train::optim (AdamW + LrSchedule) ─► run::checkpoint
//! checkpoint ─► model::Gpt + tokenizer ─► infer::generate (KvCache, sampling) ─► stdout
//! ```
//!
//! # Layers
//! Each folder is one stage; a module uses only those below it (and `config`, `error`):
//!
//! ```text
//! bench/  see/  serve/  interop/  tools: measure, look inside, serve, convert (the CLI calls these)
//! train/  infer/            the training loop and its optimizer; generation
//! run/                      the run folder on disk: checkpoints, metrics
//! model/  data  tokenizer/  the GPT (and its KV cache, decode path, FLOPs); batches; text ⇄ ids
//! memory                    what a model needs in memory, checked before allocating
//! runtime/                  device and dtype, threads, timing, matmul peak, CUDA, libtorch switches
//! ```
//!
//! # Shape legend
//! Every tensor comment uses these letters:
//! `B` batch, `T` time (sequence length), `C` channels (`n_embd`), `H` heads,
//! `D` head dimension (`C / H`), `V` vocabulary size.

pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod infer;
pub mod interop;
pub mod memory;
pub mod model;
pub mod run;
pub mod runtime;
pub mod see;
pub mod serve;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

/// A training step counter (the number of optimizer updates done so far).
pub type Step = u64;
