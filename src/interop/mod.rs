//! Moving weights between sympathy and the PyTorch world: importing a nanoGPT
//! checkpoint as a sympathy run (`nanogpt.rs`), and exporting a sympathy checkpoint in
//! the layout of Hugging Face's GPT-2 (`hf.rs`).
//!
//! sympathy's GPT is nanoGPT's (same parameter names, pre-norm blocks, tied head, exact
//! GELU, LayerNorm eps 1e-5), so the weights need no arithmetic, only renaming; each
//! direction's twists are told in its file.

mod hf;
mod nanogpt;

pub use hf::{export_hf, hf_config};
pub use nanogpt::{
    convert_nanogpt_pt, import_nanogpt, python_for_import, ImportReport, NANOGPT_CONVERTER,
};
