//! The run folder on disk: [`checkpoint`]s (weights, optimizer state, `state.json`,
//! written atomically), the [`metrics`] log (`metrics.jsonl`, one object a step) and
//! the [`lock`] that keeps it to one writer.

pub mod checkpoint;
pub mod lock;
pub mod metrics;
