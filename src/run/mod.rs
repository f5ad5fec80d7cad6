//! The run folder on disk: [`checkpoint`]s (weights, optimizer state, `state.json`,
//! written atomically) and the [`metrics`] log (`metrics.jsonl`, one object a step).

pub mod checkpoint;
pub mod metrics;
