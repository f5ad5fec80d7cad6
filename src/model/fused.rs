//! Fused CPU kernels for the modern architecture's elementwise layers: ReLU², and
//! RMSNorm with or without RoPE's rotation after it (QK-norm then RoPE, for a query
//! or a key, in one pass). Each is an autograd function of our own in
//! `csrc/fused.cpp`: one pass over memory forward and one backward.
//!
//! Why: libtorch builds these layers from its elementwise ops, each a pass over the
//! tensor and, on the CPU, a parallel region whose threads meet at a barrier. ReLU² is
//! `relu` then `square` forward and three ops backward; RMSNorm is about five forward
//! and ten backward; a rotation is seven forward (two slices, four products, a
//! concatenation), and a query goes through both: memory traffic and barriers, no
//! arithmetic to speak of. On the small model's shapes the fused kernels take 0.4 to
//! 0.6 of the time of libtorch's ops, forward and backward together
//! (`docs/performance.md`; `bench train --kernels libtorch` against `fused` times the
//! whole step).
//!
//! When: on the CPU in f32 and while [`enabled`] (the default). CUDA, bf16 and the
//! server's per-row positions take libtorch's ops, which stay the reference: the tests
//! hold each kernel, forward and gradients, to them (`tests/fused.rs`).

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// An `at::Tensor*`, as tch holds tensors.
type CTensor = c_void;

extern "C" {
    fn sympathy_relu2(x: *const CTensor) -> *mut CTensor;
    fn sympathy_rms_norm_rope(
        x: *const CTensor,
        w: *const CTensor,
        cos: *const CTensor,
        sin: *const CTensor,
        eps: f64,
    ) -> *mut CTensor;
    fn sympathy_fused_error() -> *const c_char;
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether the model takes the fused kernels where they apply (process-wide; on by
/// default). `bench train --kernels libtorch` turns them off to time the difference.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns the fused kernels on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed)
}

/// Whether the fused kernels take `x`: on, on the CPU, in f32.
pub fn applies(x: &Tensor) -> bool {
    enabled() && x.device() == Device::Cpu && x.kind() == Kind::Float
}

/// relu(x)², any shape, f32 on the CPU, as one autograd node.
pub fn relu2(x: &Tensor) -> Tensor {
    let x = x.contiguous();
    // SAFETY: `x` is a live tensor for the call; the result is a new heap tensor that
    // the returned `Tensor` owns (or null, checked in `owned`).
    owned(unsafe { sympathy_relu2(x.as_ptr().cast()) })
}

/// RMSNorm of x (…, T, D) over D with gain `w` (D), `x / sqrt(mean(x²) + eps) · w`,
/// then, with `rope = (cos, sin)` of the T positions, (T, D/2) each, every pair
/// (i, i + D/2) rotated by its angle, as [`super::rope::Rope::rotate`]. f32 on the CPU.
/// Returns a contiguous (…, T, D); x may be a strided view if D is its last,
/// contiguous dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, rope: Option<(&Tensor, &Tensor)>) -> Tensor {
    let x = if x.stride().last() == Some(&1) {
        x.shallow_clone()
    } else {
        x.contiguous()
    };
    let tables = rope.map(|(c, s)| (c.contiguous(), s.contiguous()));
    let (cos, sin) = match &tables {
        Some((c, s)) => (c.as_ptr().cast(), s.as_ptr().cast()),
        None => (std::ptr::null(), std::ptr::null()),
    };
    // SAFETY: every pointer is a live tensor (or null where the C++ side takes none)
    // for the call; the result is a new heap tensor that the returned `Tensor` owns.
    owned(unsafe { sympathy_rms_norm_rope(x.as_ptr().cast(), w.as_ptr().cast(), cos, sin, eps) })
}

/// The tensor a fused call returned, owned; a null pointer is a failed call, whose
/// message is libtorch's (a shape or type the caller should have ruled out).
fn owned(ptr: *mut CTensor) -> Tensor {
    if ptr.is_null() {
        // SAFETY: a NUL-terminated string owned by this thread's last error.
        let msg = unsafe { CStr::from_ptr(sympathy_fused_error()) };
        panic!("fused kernel: {}", msg.to_string_lossy());
    }
    // SAFETY: a non-null pointer from `new at::Tensor(...)`, owned by nobody else.
    unsafe { Tensor::from_ptr(ptr.cast()) }
}
