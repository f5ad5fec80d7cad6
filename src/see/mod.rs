//! Seeing inside a model: [`inspect`] (parameters, memory, FLOPs, training summary),
//! [`explain`] (per-position predictions, attention, the logit lens; printed by the CLI
//! and served as JSON by [`explain_view`]), [`plot`] (loss curves and attention maps as
//! PNG) and [`tokens`] (the text with its token boundaries marked).

pub mod explain;
pub mod explain_view;
pub mod inspect;
pub mod plot;
pub mod tokens;
