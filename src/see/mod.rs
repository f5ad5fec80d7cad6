//! Seeing inside a model: [`inspect`] (parameters, memory, FLOPs, training summary),
//! [`explain`] (per-position predictions, attention, the logit lens; printed by the CLI
//! and served as JSON by [`explain_view`]) and [`plot`] (loss curves and attention maps
//! as PNG).

pub mod explain;
pub mod explain_view;
pub mod inspect;
pub mod plot;
