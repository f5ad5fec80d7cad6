//! Using a trained model: [`generate`] (prefill, then one token at a time through the
//! KV cache), [`sampling`] (temperature, top-k, top-p, seeded) and [`stop_strings`]
//! (ending a completion at a caller's stop sequence).

pub mod generate;
pub mod sampling;
pub mod stop_strings;
