//! The fast path of AdamW: every parameter, gradient and moment in one flat buffer, and
//! the update as one pass over it.
//!
//! The reference update in [`crate::train::optim`] runs about eight tensor ops for each of the
//! model's ~50–150 tensors; each op is a separate pass over memory and, on the CPU, a
//! separate parallel region whose threads must meet at a barrier. For a small model the
//! optimizer then costs as much as the forward pass, and on a busy machine every barrier
//! waits for the slowest thread.
//!
//! So the parameters and their gradients live in flat buffers ([`super::params`]), and
//! the optimizer keeps its two moments the same way. Then
//! - on the CPU in fp32 the update is the loop in `update_range`, written out, that
//!   reads and writes each element of θ, g, m and v once (split over the intra-op
//!   threads), instead of eight passes;
//! - elsewhere (CUDA, bf16) it is the reference's ops once over the whole buffer.
//!
//! A test holds both paths to the reference (`tests/optim.rs`).

use tch::{Device, Kind, Tensor};

/// Parameters, gradients and moments, each one contiguous 1-D buffer of one layout.
pub(crate) struct Flat<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    /// Elements `[0, n_decay)` belong to tensors with weight decay, the rest to tensors
    /// without.
    pub n_decay: i64,
}

/// The scalars of one AdamW update, as the reference computes them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepScalars {
    /// `1 - lr·weight_decay`, the decay factor of decayed weights.
    pub decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// `sqrt(1 - β2^t)`.
    pub bias_correction2_sqrt: f64,
    /// `lr / (1 - β1^t)`.
    pub step_size: f64,
    pub eps: f64,
}

/// One AdamW update of the whole buffer.
pub(crate) fn step(flat: &Flat, h: &StepScalars) {
    if flat.param.device() == Device::Cpu && flat.param.kind() == Kind::Float {
        step_cpu_f32(flat, h);
    } else {
        step_tensor_ops(flat, h);
    }
}

/// The reference's ops, once over the buffer instead of once per parameter.
pub(crate) fn step_tensor_ops(flat: &Flat, h: &StepScalars) {
    tch::no_grad(|| {
        let (param, g) = (flat.param.shallow_clone(), flat.grad);
        let (mut m, mut v) = (flat.m.shallow_clone(), flat.v.shallow_clone());
        let _ = param.narrow(0, 0, flat.n_decay).g_mul_scalar_(h.decay);
        let _ = m.lerp_(g, 1.0 - h.beta1);
        let _ = v.g_mul_scalar_(h.beta2).addcmul_(&(g * (1.0 - h.beta2)), g);
        let denom = v.sqrt() / h.bias_correction2_sqrt + h.eps;
        let _ = param.shallow_clone().addcdiv_(&(&m * -h.step_size), &denom);
    });
}

/// The update as one loop over f32 memory, split into one contiguous chunk per thread.
fn step_cpu_f32(flat: &Flat, h: &StepScalars) {
    let n = flat.param.numel();
    // SAFETY: the four buffers are distinct, contiguous, f32 CPU tensors of `n`
    // elements that this optimizer owns; libtorch runs CPU ops eagerly, so no kernel
    // touches them while the slices live, and the threads below get disjoint chunks.
    let (p, g, m, v) = unsafe {
        let f = |t: &Tensor| std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n);
        (f(flat.param), f(flat.grad), f(flat.m), f(flat.v))
    };
    let threads = (tch::get_num_threads().max(1) as usize).min(n / 4096 + 1);
    let chunk = n.div_ceil(threads).next_multiple_of(16).max(16);
    let n_chunks = n.div_ceil(chunk);
    let n_decay = flat.n_decay as usize;
    std::thread::scope(|s| {
        let chunks = p
            .chunks_mut(chunk)
            .zip(g.chunks(chunk))
            .zip(m.chunks_mut(chunk).zip(v.chunks_mut(chunk)));
        for (k, ((p, g), (m, v))) in chunks.enumerate() {
            let start = k * chunk;
            // Within the chunk, elements before `split` are decayed.
            let split = n_decay.clamp(start, start + p.len()) - start;
            let mut work = move || {
                let (p0, p1) = p.split_at_mut(split);
                let (m0, m1) = m.split_at_mut(split);
                let (v0, v1) = v.split_at_mut(split);
                update_range(p0, &g[..split], m0, v0, h, h.decay as f32);
                update_range(p1, &g[split..], m1, v1, h, 1.0);
            };
            if k + 1 == n_chunks {
                work(); // the calling thread takes the last chunk
            } else {
                s.spawn(work);
            }
        }
    });
}

/// AdamW for one range of elements, with decay factor `decay` (1 for no decay). The
/// same arithmetic, in the same order and precision, as the reference's tensor ops:
///
/// ```text
/// θ ← θ·(1 - lr·λ)                       decoupled weight decay
/// m ← m + (1-β1)·(g - m)                 = β1·m + (1-β1)·g   (lerp)
/// v ← β2·v + (1-β2)·g·g
/// θ ← θ - (lr/(1-β1^t))·m / (√v/√(1-β2^t) + ε)
/// ```
fn update_range(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    h: &StepScalars,
    decay: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { update_range_avx2(p, g, m, v, h, decay) };
    }
    update_range_body::<false>((p, g, m, v), h, decay)
}

/// [`update_range_body`] compiled for AVX2 and FMA: inlined here, the loop is
/// vectorised with 8-wide registers, and its lerp is one fused multiply-add, as in
/// ATen's AVX2 lerp kernel (`vec::fmadd`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_range_avx2(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    h: &StepScalars,
    decay: f32,
) {
    update_range_body::<true>((p, g, m, v), h, decay)
}

/// The same elements of the parameters, gradients and the two moments: θ, g, m, v.
/// Only the inlined body takes them as one value: the functions it is inlined into take
/// separate slices, whose no-alias guarantee spares the loop runtime overlap checks (a
/// tuple, passed by pointer, would not carry it).
type Slices<'a> = (&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32]);

/// The loop of [`update_range`], inlined into each caller so that it is compiled for
/// that caller's target features. `FUSED_LERP`: the moment's lerp as one `mul_add`,
/// which only pays where the CPU has FMA (elsewhere it is a library call) and where the
/// reference fuses it too; otherwise a multiply and an add, as ATen's scalar code does.
#[inline(always)]
fn update_range_body<const FUSED_LERP: bool>((p, g, m, v): Slices, h: &StepScalars, decay: f32) {
    let w1 = (1.0 - h.beta1) as f32;
    let b2 = h.beta2 as f32;
    let w2 = (1.0 - h.beta2) as f32;
    let bc2 = h.bias_correction2_sqrt as f32;
    let eps = h.eps as f32;
    let neg_step = -h.step_size as f32;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mi = if FUSED_LERP {
            w1.mul_add(g - *m, *m)
        } else {
            *m + w1 * (g - *m)
        };
        let vi = *v * b2 + (g * w2) * g;
        let denom = vi.sqrt() / bc2 + eps;
        *p = *p * decay + (mi * neg_step) / denom;
        *m = mi;
        *v = vi;
    }
}
