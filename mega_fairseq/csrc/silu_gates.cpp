// The element-wise work of the Mega gates in single passes, float32 on the CPU (see
// mega_fairseq/modules/silu_gate_kernels.py for the interface and the fallback).
//
// Every tensor argument is a Rows x Cols x Width float32 CPU tensor whose last dimension is
// contiguous (any strides for the first two); all arguments of one call have the same shape. Each
// kernel reads its operands once and computes sigmoid once per element, where the plain torch ops
// take one pass (and one exp) per operation: silu, its derivative and the products around them.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "cpu_dispatch.h"

namespace {

// sigmoid(x) = 1 / (1 + exp(-x)). exp(a), a clamped to [lo, hi] = [-87, 88] (so 2^n below stays a
// normal float; a NaN passes through), is 2^n exp(r) with n = round(a / ln 2) and r = a - n ln 2 in
// [-ln2/2, ln2/2] (ln 2 split into a short high part, exact in n * hi, and the rest); exp(r) is
// its Taylor polynomial of degree 7 (remainder below 1e-8 relative). n is rounded by adding and
// subtracting 1.5 * 2^23, which also leaves n in the low bits of the sum; 2^n is built from its
// exponent bits. Branch-free, so the loops around it vectorise. The bounds come in as arguments of
// the kernels (kBounds): written here as constants, GCC works out the result for a clamped input
// ahead and then divides twice per element (2.6x slower, measured).
MEGA_INLINE float sigmoid(float x, float lo, float hi) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = static_cast<float>(0.69314718055994530942 - 0.693359375);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  constexpr int32_t kRoundBits = 0x4B400000;
  float a = -x;
  a = a < lo ? lo : a;
  a = a > hi ? hi : a;
  const float shifted = a * kLog2e + kRound;
  const float n = shifted - kRound;
  int32_t n_bits;
  std::memcpy(&n_bits, &shifted, sizeof(n_bits));
  float r = a - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * (r * r) + r + 1.0f;
  const int32_t scale_bits = (n_bits - kRoundBits + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  return 1.0f / (1.0f + p * scale);
}

// d silu / dx = s (1 + x (1 - s)) with s = sigmoid(x)
MEGA_INLINE float silu_slope(float x, float s) { return s * (1.0f + x * (1.0f - s)); }

// one operand: its data, the strides of its first two dimensions, and whether the kernel reads
// it from rows that do not follow one another in memory (see prefetch_row)
struct Operand {
  float* data;
  int64_t stride0, stride1;
  bool scattered_input;
  MEGA_INLINE float* row(int64_t i, int64_t j) const { return data ? data + i * stride0 + j * stride1 : nullptr; }
};

using Operands = std::vector<Operand>;

// Rows that do not follow one another (e.g. one sequence's time steps in a Time x Batch tensor:
// 4 KiB rows 18 KiB apart) start on a new page each, where the hardware prefetcher stops: every
// row would begin with a wait for memory. The row kRowsAhead rows ahead of the current one is
// requested early, for the inputs read so (outputs and contiguous inputs: not needed, measured
// slower). Measured on the reset gate read one sequence at a time (d=512, h=1024, 8192 tokens,
// cold cache): 13 -> 9 ms a pass.
constexpr int64_t kRowsAhead = 2;

MEGA_INLINE void prefetch_row(const Operands& o, int64_t cols, int64_t width, int64_t k, int64_t end) {
  if (k + kRowsAhead >= end) return;
  const int64_t i = (k + kRowsAhead) / cols, j = (k + kRowsAhead) % cols;
  for (const Operand& op : o) {
    if (!op.scattered_input) continue;
    const float* p = op.row(i, j);
    for (int64_t w = 0; w < width; w += 64 / sizeof(float)) __builtin_prefetch(p + w, 0, 3);
  }
}

// One row of each kernel, n elements. The arguments are __restrict__ parameters (which GCC keeps
// when it inlines the function), so the loops vectorise without runtime alias checks; with
// seven pointers those checks are too many and the loop would not vectorise at all.

// out = silu(x (+ bias with kBias)); with kSlope also slope = silu'(the same)
template <bool kSlope, bool kBias>
MEGA_INLINE void silu_row(int64_t n, const float* __restrict__ x, float* __restrict__ out,
                          float* __restrict__ slope, const float* __restrict__ bias, float lo, float hi) {
  for (int64_t w = 0; w < n; ++w) {
    const float v = kBias ? x[w] + bias[w] : x[w];
    const float s = sigmoid(v, lo, hi);
    out[w] = v * s;
    if (kSlope) slope[w] = silu_slope(v, s);
  }
}

// a *= silu(r)
MEGA_INLINE void mul_silu_row(int64_t n, float* __restrict__ a, const float* __restrict__ r, float lo, float hi) {
  for (int64_t w = 0; w < n; ++w) a[w] *= r[w] * sigmoid(r[w], lo, hi);
}

// p = a * silu(r) is the gated product of the attention output a; with g = dL/dp:
// gated = p (kGated), grad_r = a g silu'(r) (kGradR), g *= silu(r) (then dL/da)
template <bool kGated, bool kGradR>
MEGA_INLINE void reset_gate_backward_row(int64_t n, const float* __restrict__ a, float* __restrict__ g,
                                         const float* __restrict__ r, float* __restrict__ gated,
                                         float* __restrict__ grad_r, float lo, float hi) {
  for (int64_t w = 0; w < n; ++w) {
    const float s = sigmoid(r[w], lo, hi), reset = r[w] * s;
    if (kGated) gated[w] = a[w] * reset;
    if (kGradR) grad_r[w] = a[w] * g[w] * silu_slope(r[w], s);
    g[w] *= reset;
  }
}

// out = residual + u (silu(pre) - residual)
MEGA_INLINE void gated_output_row(int64_t n, const float* __restrict__ residual, const float* __restrict__ pre,
                                  const float* __restrict__ u, float* __restrict__ out, float lo, float hi) {
  for (int64_t w = 0; w < n; ++w) out[w] = residual[w] + u[w] * (pre[w] * sigmoid(pre[w], lo, hi) - residual[w]);
}

// the gradients of out = residual + u (silu(pre) - residual) from g = dL/dout: grad_pre = g u
// silu'(pre), grad_residual = g (1 - u) (kResidual), grad_u = g (silu(pre) - residual) (kU)
template <bool kResidual, bool kU>
MEGA_INLINE void gated_output_backward_row(int64_t n, const float* __restrict__ g, const float* __restrict__ residual,
                                           const float* __restrict__ pre, const float* __restrict__ u,
                                           float* __restrict__ grad_pre, float* __restrict__ grad_residual,
                                           float* __restrict__ grad_u, float lo, float hi) {
  for (int64_t w = 0; w < n; ++w) {
    const float s = sigmoid(pre[w], lo, hi), through = g[w] * u[w];
    if (kResidual) grad_residual[w] = g[w] - through;
    if (kU) grad_u[w] = g[w] * (pre[w] * s - residual[w]);
    grad_pre[w] = through * silu_slope(pre[w], s);
  }
}

// q = z gamma0 + beta0 and k = z gamma1 + beta1 with z = silu(z_pre)
MEGA_INLINE void query_key_row(int64_t n, const float* __restrict__ z_pre, float* __restrict__ q,
                               float* __restrict__ k, const float* __restrict__ gamma0,
                               const float* __restrict__ gamma1, const float* __restrict__ beta0,
                               const float* __restrict__ beta1, float lo, float hi) {
  for (int64_t w = 0; w < n; ++w) {
    const float z = z_pre[w] * sigmoid(z_pre[w], lo, hi);
    q[w] = z * gamma0[w] + beta0[w];
    k[w] = z * gamma1[w] + beta1[w];
  }
}

// the backward of q = z gamma0 + beta0 and k = z gamma1 + beta1 with z = silu(z_pre), from gq = dL/dq
// and gk = dL/dk: out = (gq gamma0 + gk gamma1) silu'(z_pre); with kSums also, per column, the sums
// of gq z, gk z, gq and gk (in double) into sums[0 .. 4 n)
template <bool kSums>
MEGA_INLINE void query_key_backward_row(int64_t n, const float* __restrict__ gq, const float* __restrict__ gk,
                                        const float* __restrict__ z_pre, const float* __restrict__ gamma0,
                                        const float* __restrict__ gamma1, float* __restrict__ out,
                                        double* __restrict__ sums, float lo, float hi) {
  for (int64_t w = 0; w < n; ++w) {
    const float x = z_pre[w], s = sigmoid(x, lo, hi), z = x * s;
    out[w] = (gq[w] * gamma0[w] + gk[w] * gamma1[w]) * silu_slope(x, s);
    if (kSums) {
      sums[w] += static_cast<double>(gq[w] * z);
      sums[n + w] += static_cast<double>(gk[w] * z);
      sums[2 * n + w] += static_cast<double>(gq[w]);
      sums[3 * n + w] += static_cast<double>(gk[w]);
    }
  }
}

// The kernels: rows begin..end of Rows x Cols rows (row k is (k / cols, k % cols)) of `width`
// elements each; `o` holds the operands in the order of the row functions' pointers.
MEGA_CLONES_AVX512 void silu_rows(const Operands& o, int64_t cols, int64_t width, int64_t begin, int64_t end, float lo,
                           float hi) {
  for (int64_t k = begin; k < end; ++k) {
    prefetch_row(o, cols, width, k, end);
    const int64_t i = k / cols, j = k % cols;
    const float* x = o[0].row(i, j);
    float *out = o[1].row(i, j), *slope = o[2].row(i, j);
    const float* bias = o[3].data;  // one row for all
    if (slope && bias) {
      silu_row<true, true>(width, x, out, slope, bias, lo, hi);
    } else if (slope) {
      silu_row<true, false>(width, x, out, slope, nullptr, lo, hi);
    } else if (bias) {
      silu_row<false, true>(width, x, out, nullptr, bias, lo, hi);
    } else {
      silu_row<false, false>(width, x, out, nullptr, nullptr, lo, hi);
    }
  }
}

MEGA_CLONES_AVX512 void mul_silu_rows(const Operands& o, int64_t cols, int64_t width, int64_t begin, int64_t end, float lo,
                               float hi) {
  for (int64_t k = begin; k < end; ++k) {
    prefetch_row(o, cols, width, k, end);
    const int64_t i = k / cols, j = k % cols;
    mul_silu_row(width, o[0].row(i, j), o[1].row(i, j), lo, hi);
  }
}

MEGA_CLONES_AVX512 void reset_gate_backward_rows(const Operands& o, int64_t cols, int64_t width, int64_t begin,
                                          int64_t end, float lo, float hi) {
  for (int64_t k = begin; k < end; ++k) {
    prefetch_row(o, cols, width, k, end);
    const int64_t i = k / cols, j = k % cols;
    const float* a = o[0].row(i, j);
    float *g = o[1].row(i, j), *gated = o[3].row(i, j), *grad_r = o[4].row(i, j);
    const float* r = o[2].row(i, j);
    if (gated && grad_r) {
      reset_gate_backward_row<true, true>(width, a, g, r, gated, grad_r, lo, hi);
    } else if (gated) {
      reset_gate_backward_row<true, false>(width, a, g, r, gated, nullptr, lo, hi);
    } else if (grad_r) {
      reset_gate_backward_row<false, true>(width, a, g, r, nullptr, grad_r, lo, hi);
    } else {
      reset_gate_backward_row<false, false>(width, a, g, r, nullptr, nullptr, lo, hi);
    }
  }
}

MEGA_CLONES_AVX512 void gated_output_rows(const Operands& o, int64_t cols, int64_t width, int64_t begin, int64_t end,
                                   float lo, float hi) {
  for (int64_t k = begin; k < end; ++k) {
    prefetch_row(o, cols, width, k, end);
    const int64_t i = k / cols, j = k % cols;
    gated_output_row(width, o[0].row(i, j), o[1].row(i, j), o[2].row(i, j), o[3].row(i, j), lo, hi);
  }
}

MEGA_CLONES_AVX512 void gated_output_backward_rows(const Operands& o, int64_t cols, int64_t width, int64_t begin,
                                            int64_t end, float lo, float hi) {
  for (int64_t k = begin; k < end; ++k) {
    prefetch_row(o, cols, width, k, end);
    const int64_t i = k / cols, j = k % cols;
    const float *g = o[0].row(i, j), *residual = o[1].row(i, j), *pre = o[2].row(i, j), *u = o[3].row(i, j);
    float *grad_pre = o[4].row(i, j), *grad_residual = o[5].row(i, j), *grad_u = o[6].row(i, j);
    if (grad_residual && grad_u) {
      gated_output_backward_row<true, true>(width, g, residual, pre, u, grad_pre, grad_residual, grad_u, lo, hi);
    } else if (grad_residual) {
      gated_output_backward_row<true, false>(width, g, residual, pre, u, grad_pre, grad_residual, nullptr, lo, hi);
    } else if (grad_u) {
      gated_output_backward_row<false, true>(width, g, residual, pre, u, grad_pre, nullptr, grad_u, lo, hi);
    } else {
      gated_output_backward_row<false, false>(width, g, residual, pre, u, grad_pre, nullptr, nullptr, lo, hi);
    }
  }
}

// operands: z_pre, q, k, then gamma0, gamma1, beta0 and beta1 (one row each)
MEGA_CLONES_AVX512 void query_key_rows(const Operands& o, int64_t cols, int64_t width, int64_t begin, int64_t end,
                                       float lo, float hi) {
  for (int64_t k = begin; k < end; ++k) {
    prefetch_row(o, cols, width, k, end);
    const int64_t i = k / cols, j = k % cols;
    query_key_row(width, o[0].row(i, j), o[1].row(i, j), o[2].row(i, j), o[3].data, o[4].data, o[5].data, o[6].data,
                  lo, hi);
  }
}

// operands: gq, gk, z_pre, out, then gamma0 and gamma1 (one row each); sums: 4 x width doubles or null
MEGA_CLONES_AVX512 void query_key_backward_rows(const Operands& o, int64_t cols, int64_t width, int64_t begin,
                                         int64_t end, double* sums, float lo, float hi) {
  for (int64_t k = begin; k < end; ++k) {
    prefetch_row(o, cols, width, k, end);
    const int64_t i = k / cols, j = k % cols;
    if (sums != nullptr) {
      query_key_backward_row<true>(width, o[0].row(i, j), o[1].row(i, j), o[2].row(i, j), o[4].data, o[5].data,
                                   o[3].row(i, j), sums, lo, hi);
    } else {
      query_key_backward_row<false>(width, o[0].row(i, j), o[1].row(i, j), o[2].row(i, j), o[4].data, o[5].data,
                                    o[3].row(i, j), nullptr, lo, hi);
    }
  }
}

// the operands of a call, its `inputs` first: defined ones must be float32 CPU tensors of the
// first one's 3-d shape with a contiguous last dimension; an undefined optional one becomes a null
// operand
Operands operands(const std::vector<c10::optional<at::Tensor>>& tensors, size_t inputs, const char* name) {
  const at::Tensor& first = *tensors[0];
  Operands result;
  for (const auto& t : tensors) {
    if (!t.has_value()) {
      result.push_back(Operand{nullptr, 0, 0, false});
      continue;
    }
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 3 &&
                    t->sizes() == first.sizes() && (t->stride(2) == 1 || t->size(2) <= 1),
                name, ": every operand must be a float32 CPU tensor of shape ", first.sizes(),
                " with a contiguous last dimension");
    // row (i, j + 1) follows row (i, j), and row (i + 1, 0) follows the last of row i
    const bool rows_follow = (t->size(1) <= 1 || t->stride(1) == t->size(2)) &&
                             (t->size(0) <= 1 || t->stride(0) == t->size(1) * t->size(2));
    const bool scattered_input = result.size() < inputs && !rows_follow;
    result.push_back(Operand{t->data_ptr<float>(), t->stride(0), t->stride(1), scattered_input});
  }
  return result;
}

// the clamp of exp's argument in sigmoid, handed to every kernel at run time
struct Bounds {
  float lo, hi;
};
const Bounds kBounds{-87.0f, 88.0f};

// a kernel above: (operands, cols, width, first row, end row, lo, hi)
using RowsKernel = void (*)(const Operands&, int64_t, int64_t, int64_t, int64_t, float, float);

// runs body(begin, end) over the rows of `first` (Rows x Cols x Width), about 32k elements a task,
// as torch's own element-wise ops
template <typename Body>
void for_rows(const at::Tensor& first, const Body& body) {
  const int64_t rows = first.size(0) * first.size(1), width = first.size(2);
  if (rows == 0 || width == 0) return;
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / width), body);
}

// runs `kernel` over every row of the operands (`first`'s shape)
void run(const at::Tensor& first, const Operands& o, RowsKernel kernel) {
  for_rows(first, [&](int64_t begin, int64_t end) {
    kernel(o, first.size(1), first.size(2), begin, end, kBounds.lo, kBounds.hi);
  });
}

}  // namespace

// the operands of silu: x, out, slope (or null) and the bias (or null), one contiguous float32 row
// of x's width that every row adds
Operands silu_operands(const at::Tensor& x, const at::Tensor& out, const c10::optional<at::Tensor>& slope,
                       const c10::optional<at::Tensor>& bias, const char* name) {
  Operands o = operands({x, out, slope}, 1, name);
  if (!bias.has_value()) {
    o.push_back(Operand{nullptr, 0, 0, false});
    return o;
  }
  TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->dim() == 1 &&
                  bias->size(0) == x.size(2) && bias->is_contiguous(),
              name, ": the bias must be a contiguous float32 CPU vector of ", x.size(2), " elements");
  o.push_back(Operand{bias->data_ptr<float>(), 0, 0, false});
  return o;
}

void silu(const at::Tensor& x, const at::Tensor& out, c10::optional<at::Tensor> bias) {
  run(x, silu_operands(x, out, c10::nullopt, bias, "silu"), silu_rows);
}

void silu_with_slope(const at::Tensor& x, const at::Tensor& out, const at::Tensor& slope,
                     c10::optional<at::Tensor> bias) {
  run(x, silu_operands(x, out, slope, bias, "silu_with_slope"), silu_rows);
}

void mul_silu_(const at::Tensor& a, const at::Tensor& r) { run(a, operands({a, r}, 2, "mul_silu_"), mul_silu_rows); }

void reset_gate_backward(const at::Tensor& attended, const at::Tensor& grad, const at::Tensor& r,
                         c10::optional<at::Tensor> gated, c10::optional<at::Tensor> grad_r) {
  run(attended, operands({attended, grad, r, gated, grad_r}, 3, "reset_gate_backward"), reset_gate_backward_rows);
}

void gated_output(const at::Tensor& residual, const at::Tensor& pre, const at::Tensor& u, const at::Tensor& out) {
  run(residual, operands({residual, pre, u, out}, 3, "gated_output"), gated_output_rows);
}

void gated_output_backward(const at::Tensor& grad, const at::Tensor& residual, const at::Tensor& pre,
                           const at::Tensor& u, const at::Tensor& grad_pre, c10::optional<at::Tensor> grad_residual,
                           c10::optional<at::Tensor> grad_u) {
  run(grad, operands({grad, residual, pre, u, grad_pre, grad_residual, grad_u}, 4, "gated_output_backward"),
      gated_output_backward_rows);
}

// gamma or beta as its two rows, checked: a contiguous float32 CPU 2 x width tensor
static void push_rows(Operands& o, const at::Tensor& t, int64_t width, const char* name, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == 2 &&
                  t.size(1) == width && t.is_contiguous(),
              name, ": ", what, " must be a contiguous float32 CPU tensor of shape (2, ", width, ")");
  o.push_back(Operand{t.data_ptr<float>(), 0, 0, false});
  o.push_back(Operand{t.data_ptr<float>() + width, 0, 0, false});
}

// z_pre, q, k: one shape (Time x Batch x Z, any strides but the last); gamma, beta: 2 x Z
void query_key(const at::Tensor& z_pre, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& q,
               const at::Tensor& k) {
  Operands o = operands({z_pre, q, k}, 1, "query_key");
  const int64_t width = z_pre.size(2);
  push_rows(o, gamma, width, "query_key", "gamma");
  push_rows(o, beta, width, "query_key", "beta");
  run(z_pre, o, query_key_rows);
}

// grad_q, grad_k, z_pre, grad_z_pre: one shape (Time x Batch x Z, any strides but the last);
// gamma: 2 x Z; sums (or None): 4 x Z float64, added to (see query_key_backward_row)
void query_key_backward(const at::Tensor& grad_q, const at::Tensor& grad_k, const at::Tensor& z_pre,
                        const at::Tensor& gamma, const at::Tensor& grad_z_pre, c10::optional<at::Tensor> sums) {
  Operands o = operands({grad_q, grad_k, z_pre, grad_z_pre}, 3, "query_key_backward");
  const int64_t width = grad_q.size(2);
  push_rows(o, gamma, width, "query_key_backward", "gamma");
  if (sums.has_value()) {
    TORCH_CHECK(sums->device().is_cpu() && sums->scalar_type() == at::kDouble && sums->dim() == 2 &&
                    sums->size(0) == 4 && sums->size(1) == width && sums->is_contiguous(),
                "query_key_backward: sums must be a contiguous float64 CPU tensor of shape (4, ", width, ")");
  }
  double* total = sums.has_value() ? sums->data_ptr<double>() : nullptr;
  std::mutex merge;
  for_rows(grad_q, [&](int64_t begin, int64_t end) {
    std::vector<double> local(total != nullptr ? 4 * width : 0, 0.0);
    query_key_backward_rows(o, grad_q.size(1), width, begin, end, total != nullptr ? local.data() : nullptr,
                            kBounds.lo, kBounds.hi);
    if (total != nullptr) {
      std::lock_guard<std::mutex> lock(merge);
      for (int64_t w = 0; w < 4 * width; ++w) total[w] += local[w];
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("silu", &silu, "out = silu(x (+ bias))", pybind11::arg("x"), pybind11::arg("out"),
        pybind11::arg("bias") = pybind11::none());
  m.def("silu_with_slope", &silu_with_slope, "out = silu(x (+ bias)), slope = silu'(the same)", pybind11::arg("x"),
        pybind11::arg("out"), pybind11::arg("slope"), pybind11::arg("bias") = pybind11::none());
  m.def("mul_silu_", &mul_silu_, "a *= silu(r)");
  m.def("reset_gate_backward", &reset_gate_backward, "the reset gate's backward (see silu_gate_kernels.py)");
  m.def("gated_output", &gated_output, "out = residual + u * (silu(pre) - residual)");
  m.def("gated_output_backward", &gated_output_backward, "its backward (see silu_gate_kernels.py)");
  m.def("query_key", &query_key, "q = silu(z_pre) * gamma[0] + beta[0], k = silu(z_pre) * gamma[1] + beta[1]",
        pybind11::arg("z_pre"), pybind11::arg("gamma"), pybind11::arg("beta"), pybind11::arg("q"), pybind11::arg("k"));
  m.def("query_key_backward", &query_key_backward, "the backward of q and k from z = silu(z_pre)",
        pybind11::arg("grad_q"), pybind11::arg("grad_k"), pybind11::arg("z_pre"), pybind11::arg("gamma"),
        pybind11::arg("grad_z_pre"), pybind11::arg("sums") = pybind11::none());
}
