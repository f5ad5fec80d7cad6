// Fused CPU kernels for the modern architecture's elementwise layers, each an autograd
// function with one pass over memory forward and one backward (src/model/fused.rs says
// why and when they run; libtorch's own ops stay the reference they are tested against).
//
// - ReLU²: y = max(x, 0)², dy/dx = 2·max(x, 0).
// - RMSNorm over the last dimension D, with a gain w, optionally followed by RoPE's
//   rotation of the pairs (i, i + D/2) by the angle of the row's position (the index
//   along the second-to-last dimension): QK-norm and RoPE of a query or key in one pass.
//
// The loops are plain C++: the compiler vectorises them once per instruction set
// (target_clones picks the clone at load time), and at::parallel_for splits rows over
// libtorch's intra-op threads. Sums that cross rows (the gain's gradient) go through
// fixed chunks of rows added in order, so a result never depends on the thread count.

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <string>
#include <vector>

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

#define SYMPATHY_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace {

// ---------------------------------------------------------------------------------
// ReLU²
// ---------------------------------------------------------------------------------

// r = max(x, 0) written so that a NaN passes through, as libtorch's relu does.
inline float relu(float x) { return x < 0.f ? 0.f : x; }

SYMPATHY_CLONES void relu2_forward_loop(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float r = relu(x[i]);
    y[i] = r * r;
  }
}

SYMPATHY_CLONES void relu2_backward_loop(const float* x, const float* gy, float* gx,
                                         int64_t n) {
  for (int64_t i = 0; i < n; ++i) gx[i] = gy[i] * (2.f * relu(x[i]));
}

// Elements per task: below this a loop is not worth a second thread.
constexpr int64_t kGrain = 32768;

struct Relu2 : public torch::autograd::Function<Relu2> {
  // x: any shape, f32, contiguous -> y, same shape.
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    Tensor y = at::empty_like(x);
    const float* xp = x.const_data_ptr<float>();
    float* yp = y.mutable_data_ptr<float>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
      relu2_forward_loop(xp + b, yp + b, e - b);
    });
    ctx->save_for_backward({x});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor x = ctx->get_saved_variables()[0];
    const Tensor gy = grads[0].contiguous();
    Tensor gx = at::empty_like(x);
    const float* xp = x.const_data_ptr<float>();
    const float* gyp = gy.const_data_ptr<float>();
    float* gxp = gx.mutable_data_ptr<float>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
      relu2_backward_loop(xp + b, gyp + b, gxp + b, e - b);
    });
    return {gx};
  }
};

// ---------------------------------------------------------------------------------
// RMSNorm (+ RoPE)
// ---------------------------------------------------------------------------------

// Where row r of a (..., T, D) tensor with unit stride in D starts: its leading
// dimensions may be strided (a query is a permuted view of the qkv projection).
struct Rows {
  std::vector<int64_t> sizes, strides;  // of the leading dimensions
  int64_t count = 1, t = 1, d = 1;

  explicit Rows(const Tensor& x) {
    const int64_t dims = x.dim();
    for (int64_t i = 0; i + 1 < dims; ++i) {
      sizes.push_back(x.size(i));
      strides.push_back(x.stride(i));
      count *= x.size(i);
    }
    t = dims >= 2 ? x.size(dims - 2) : 1;
    d = x.size(dims - 1);
  }

  int64_t offset(int64_t r) const {
    int64_t off = 0;
    for (int64_t i = static_cast<int64_t>(sizes.size()) - 1; i >= 0; --i) {
      off += (r % sizes[i]) * strides[i];
      r /= sizes[i];
    }
    return off;
  }
};

// One row forward: y = rotate(x · rstd · w); returns rstd = 1/sqrt(mean(x²) + eps).
// cos, sin: this row's position's D/2 values, or null for no rotation.
SYMPATHY_CLONES float rms_rope_row(const float* x, const float* w, const float* cos,
                                   const float* sin, float* y, int64_t d, float eps) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t j = 0; j < d; ++j) ss += x[j] * x[j];
  const float rstd = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
  for (int64_t j = 0; j < d; ++j) y[j] = x[j] * rstd * w[j];
  if (cos != nullptr) {
    const int64_t h = d / 2;
    for (int64_t i = 0; i < h; ++i) {
      const float a = y[i], b = y[i + h];
      y[i] = a * cos[i] - b * sin[i];
      y[i + h] = b * cos[i] + a * sin[i];
    }
  }
  return rstd;
}

// One row backward. gz ← rotate⁻¹(gy) (the rotation's transpose), then RMSNorm's:
// gw += gz·x·rstd, and with gn = gz·w, gx = rstd·gn − x·rstd³·mean(gn·x).
// gz: scratch of D floats.
SYMPATHY_CLONES void rms_rope_row_backward(const float* x, const float* w,
                                           const float* cos, const float* sin,
                                           const float* gy, float rstd, float* gz,
                                           float* gw, float* gx, int64_t d) {
  if (cos != nullptr) {
    const int64_t h = d / 2;
    for (int64_t i = 0; i < h; ++i) {
      gz[i] = gy[i] * cos[i] + gy[i + h] * sin[i];
      gz[i + h] = gy[i + h] * cos[i] - gy[i] * sin[i];
    }
  } else {
    for (int64_t j = 0; j < d; ++j) gz[j] = gy[j];
  }
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < d; ++j) dot += gz[j] * w[j] * x[j];
  const float k = rstd * rstd * rstd * dot / static_cast<float>(d);
  for (int64_t j = 0; j < d; ++j) {
    gw[j] += gz[j] * x[j] * rstd;
    gx[j] = rstd * gz[j] * w[j] - x[j] * k;
  }
}

// Rows per chunk of the gain's gradient: partial sums of fixed chunks, added in order.
constexpr int64_t kChunkRows = 64;

// The row's position's cos (or sin) values: tables (T, D/2), rows enumerated with T last.
inline const float* at_position(const float* table, int64_t row, const Rows& rows) {
  return table == nullptr ? nullptr : table + (row % rows.t) * (rows.d / 2);
}

struct RmsNormRope : public torch::autograd::Function<RmsNormRope> {
  // x (..., T, D) f32 with unit stride in D; w (D); cos, sin (T, D/2) contiguous, or
  // both empty for no rotation -> y (..., T, D) contiguous.
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w,
                        const Tensor& cos, const Tensor& sin, double eps) {
    const Rows rows(x);
    Tensor y = at::empty(x.sizes(), x.options());
    Tensor rstd = at::empty({rows.count}, x.options());
    const float* xp = x.const_data_ptr<float>();
    const float* wp = w.const_data_ptr<float>();
    const float* cp = cos.numel() > 0 ? cos.const_data_ptr<float>() : nullptr;
    const float* sp = sin.numel() > 0 ? sin.const_data_ptr<float>() : nullptr;
    float* yp = y.mutable_data_ptr<float>();
    float* rp = rstd.mutable_data_ptr<float>();
    const int64_t grain = std::max<int64_t>(1, kGrain / rows.d);
    at::parallel_for(0, rows.count, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        rp[r] = rms_rope_row(xp + rows.offset(r), wp, at_position(cp, r, rows),
                             at_position(sp, r, rows), yp + r * rows.d, rows.d,
                             static_cast<float>(eps));
      }
    });
    ctx->save_for_backward({x, w, rstd, cos, sin});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &rstd = saved[2];
    const Tensor &cos = saved[3], &sin = saved[4];
    const Tensor gy = grads[0].contiguous();
    const Rows rows(x);
    const int64_t d = rows.d;
    const int64_t chunks = (rows.count + kChunkRows - 1) / kChunkRows;
    Tensor gx = at::empty(x.sizes(), x.options());
    Tensor partial = at::zeros({chunks, d}, x.options());
    const float* xp = x.const_data_ptr<float>();
    const float* wp = w.const_data_ptr<float>();
    const float* rp = rstd.const_data_ptr<float>();
    const float* cp = cos.numel() > 0 ? cos.const_data_ptr<float>() : nullptr;
    const float* sp = sin.numel() > 0 ? sin.const_data_ptr<float>() : nullptr;
    const float* gyp = gy.const_data_ptr<float>();
    float* gxp = gx.mutable_data_ptr<float>();
    float* pp = partial.mutable_data_ptr<float>();
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      std::vector<float> gz(d);
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t end = std::min(rows.count, (c + 1) * kChunkRows);
        for (int64_t r = c * kChunkRows; r < end; ++r) {
          rms_rope_row_backward(xp + rows.offset(r), wp, at_position(cp, r, rows),
                                at_position(sp, r, rows), gyp + r * d, rp[r], gz.data(),
                                pp + c * d, gxp + r * d, d);
        }
      }
    });
    // The chunks' partial sums, added in chunk order.
    Tensor gw = at::zeros({d}, x.options());
    float* gwp = gw.mutable_data_ptr<float>();
    for (int64_t c = 0; c < chunks; ++c) {
      for (int64_t j = 0; j < d; ++j) gwp[j] += pp[c * d + j];
    }
    return {gx, gw, Tensor(), Tensor(), Tensor()};
  }
};

thread_local std::string last_error;

// Runs f, returning its tensor on the heap (as tch holds tensors), or null with the
// message kept for sympathy_fused_error: no C++ exception may cross into Rust.
template <typename F>
Tensor* guarded(F f) {
  try {
    return new Tensor(f());
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

}  // namespace

extern "C" {

Tensor* sympathy_relu2(const Tensor* x) {
  return guarded([&] { return Relu2::apply(*x); });
}

// cos and sin both null for RMSNorm alone.
Tensor* sympathy_rms_norm_rope(const Tensor* x, const Tensor* w, const Tensor* cos,
                               const Tensor* sin, double eps) {
  return guarded([&] {
    // Autograd wants every tensor argument defined: "no rotation" is empty tables.
    const Tensor none = at::empty({0}, x->options());
    return RmsNormRope::apply(*x, *w, cos ? *cos : none, sin ? *sin : none, eps);
  });
}

// The message of the last failed call on this thread.
const char* sympathy_fused_error() { return last_error.c_str(); }

}  // extern "C"
