//! Two libtorch switches that tch does not bind, reached through `csrc/torch_ext.cpp`
//! (a few lines of C++ that `build.rs` compiles against the libtorch we link).
//!
//! **Inference mode.** `tch::no_grad` only stops autograd from *recording*: every op
//! still passes through the autograd layer of libtorch's dispatcher, which bumps version
//! counters and records how each view relates to its base. `c10::InferenceMode` (what
//! `torch.inference_mode()` enters) removes that layer for tensors made inside it. A
//! decode step is ~130 small ops on one token, where that bookkeeping is a visible
//! share: the small model's step went from ~350 µs to ~307 µs on our 2-core CPU.
//! Tensors created inside are *inference tensors*: they can never join an autograd
//! graph, which generation never asks of them.
//!
//! **oneDNN off.** For a contiguous fp32 CPU tensor, libtorch sends `gelu` and
//! `gelu_backward` to oneDNN (`use_mkldnn` in ATen's Activation.cpp) rather than to its
//! own vectorised kernel, and oneDNN sets up a primitive on every call, ~15 µs. On the
//! one row of 4C values of a decode step that is the whole cost: a 768-value GELU took
//! 17.6 µs through oneDNN and 2.2 µs through ATen. On a training batch (12×64×512
//! values) ATen's forward is slower (204 µs against 119) but its backward faster, and
//! forward plus backward took 536 µs against 676. Matrix products are unaffected: fp32
//! `mm` and `addmm` go to MKL's sgemm either way. (PyTorch 2.13 on our 2-core CPU;
//! `torch.backends.mkldnn.enabled = False` is the same switch from Python.) bf16 is the
//! exception: on the CPU, oneDNN is libtorch's fast bf16 matmul, and without it a bf16
//! matmul falls back to a kernel hundreds of times slower, so bf16 work turns it on.

use std::ffi::c_void;
use std::marker::PhantomData;

extern "C" {
    fn sympathy_inference_mode_enter() -> *mut c_void;
    fn sympathy_inference_mode_exit(guard: *mut c_void);
    fn sympathy_set_mkldnn_enabled(enabled: bool);
    fn sympathy_mkldnn_enabled() -> bool;
}

/// While alive, the calling thread runs libtorch in inference mode (see the module
/// docs). Guards nest; dropping one restores the mode from before it.
pub struct InferenceMode {
    guard: *mut c_void,
    /// The mode is thread-local state, so the guard must stay on its thread (a raw
    /// pointer field already makes the type neither `Send` nor `Sync`).
    _not_send: PhantomData<*mut c_void>,
}

impl InferenceMode {
    pub fn enter() -> Self {
        // SAFETY: allocates a c10::InferenceMode, whose constructor only saves and sets
        // this thread's autograd and dispatch-key state.
        let guard = unsafe { sympathy_inference_mode_enter() };
        InferenceMode {
            guard,
            _not_send: PhantomData,
        }
    }
}

impl Drop for InferenceMode {
    fn drop(&mut self) {
        // SAFETY: `guard` came from `enter` on this same thread (the type is !Send) and
        // is freed exactly once, here; the destructor restores the saved state.
        unsafe { sympathy_inference_mode_exit(self.guard) }
    }
}

/// Whether ops with a oneDNN path (GELU; bf16 matmuls on the CPU) take it, for the
/// whole process; libtorch's default is yes. See the module docs for when not to.
pub fn set_onednn(enabled: bool) {
    // SAFETY: stores a bool in libtorch's process-wide context, which lives until exit.
    unsafe { sympathy_set_mkldnn_enabled(enabled) }
}

/// Whether ops with a oneDNN path take it (see [`set_onednn`]).
pub fn onednn() -> bool {
    // SAFETY: reads a bool from libtorch's process-wide context.
    unsafe { sympathy_mkldnn_enabled() }
}

/// `f()` with oneDNN on, the switch restored after: for bf16 products on the CPU inside
/// a process that keeps it off.
pub fn with_onednn<T>(f: impl FnOnce() -> T) -> T {
    let before = onednn();
    set_onednn(true);
    let out = f();
    set_onednn(before);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn inference_mode_covers_its_scope_and_nests() {
        let w = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        {
            let _outer = InferenceMode::enter();
            let x = &w * 2.0;
            assert!(x.is_inference() && !x.requires_grad());
            {
                let _inner = InferenceMode::enter();
                assert!((&w * 3.0).is_inference());
            }
            // Leaving the inner guard keeps the outer one.
            assert!((&w * 4.0).is_inference());
        }
        // Outside, autograd records again.
        let y = &w * 2.0;
        assert!(!y.is_inference() && y.requires_grad());
    }

    #[test]
    fn the_onednn_switch_round_trips() {
        let before = onednn();
        set_onednn(!before);
        assert_eq!(onednn(), !before);
        set_onednn(before);
        assert_eq!(onednn(), before);
    }
}
