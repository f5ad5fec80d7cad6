//! Seeing inside a model: [`inspect`] (parameters, memory, FLOPs, training summary),
//! [`explain`] (per-position predictions, attention, the logit lens) and [`plot`]
//! (loss curves and attention maps as PNG), [`tokens`] (the text with its token
//! boundaries marked).

pub mod explain;
pub mod inspect;
pub mod plot;
pub mod tokens;
