// The Mega EMA as its plain recurrence, on the CPU, with its backward (see
// mega_fairseq/modules/ema_recurrence.py for the interface and the math).
//
// One direction over a Time x Batch x D input x (contiguous); coefficients q, p_beta, gamma are
// N x D (channel inner, so the loops over channels vectorise):
//     h[t] = q * h[t - 1] + p_beta * x[t],   y[t] = sum_n gamma[n] * h[t, n] (+ omega * x[t])
// with time running backward for the anti-causal direction. The forward keeps the state at the
// start of every segment of S steps; the backward remakes a segment's states from it and runs
// the adjoint recurrence lam[t] = gamma * gy[t] + q * lam[t + 1] back through the segment.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu_dispatch.h"

#define MEGA_SIMD _Pragma("GCC ivdep")

namespace {

struct Shape {
  int64_t L, B, D, N, S;  // time, batch, channels, EMA dimensions, segment length
  int64_t d0, d1;         // the channels [d0, d1) this call works on
};

template <typename T>
MEGA_INLINE void forward_body(const T* x, T* y, const T* q, const T* pb, const T* g, const T* omega, T* ckpt,
                              bool reverse, bool accumulate, Shape s) {
  const int64_t W = s.d1 - s.d0, D = s.D, N = s.N;
  std::vector<T> h(N * W), acc(W);
  for (int64_t b = 0; b < s.B; ++b) {
    std::fill(h.begin(), h.end(), T(0));
    for (int64_t i = 0; i < s.L; ++i) {
      const int64_t t = reverse ? s.L - 1 - i : i;
      if (ckpt != nullptr && i % s.S == 0) {
        T* c = ckpt + ((i / s.S) * s.B + b) * N * D + s.d0;
        for (int64_t n = 0; n < N; ++n) std::copy(&h[n * W], &h[n * W] + W, c + n * D);
      }
      const T* xt = x + (t * s.B + b) * D + s.d0;
      T* a = acc.data();
      if (omega != nullptr) {
        MEGA_SIMD for (int64_t w = 0; w < W; ++w) a[w] = omega[s.d0 + w] * xt[w];
      } else {
        std::fill(acc.begin(), acc.end(), T(0));
      }
      for (int64_t n = 0; n < N; ++n) {
        T* hn = h.data() + n * W;
        const T* qn = q + n * D + s.d0;
        const T* pn = pb + n * D + s.d0;
        const T* gn = g + n * D + s.d0;
        MEGA_SIMD for (int64_t w = 0; w < W; ++w) {
          hn[w] = qn[w] * hn[w] + pn[w] * xt[w];
          a[w] += gn[w] * hn[w];
        }
      }
      T* yt = y + (t * s.B + b) * D + s.d0;
      if (accumulate) {
        MEGA_SIMD for (int64_t w = 0; w < W; ++w) yt[w] += a[w];
      } else {
        std::copy(a, a + W, yt);
      }
    }
  }
}

template <typename T>
MEGA_INLINE void backward_body(const T* x, const T* gy, T* gx, const T* q, const T* pb, const T* g, const T* omega,
                               const T* ckpt, double* gq, double* gpb, double* gg, double* gomega, bool reverse,
                               bool accumulate, Shape s) {
  const int64_t W = s.d1 - s.d0, D = s.D, N = s.N, NW = N * W;
  const int64_t segments = (s.L + s.S - 1) / s.S;
  // states of one segment: hs[0] before its first step, hs[k + 1] after step k
  std::vector<T> lam(NW), hs((s.S + 1) * NW), gxa(W);
  // sums over one sequence (in T), added to the double totals after it
  std::vector<T> sq(NW), spb(NW), sg(NW), so(W);
  for (int64_t b = 0; b < s.B; ++b) {
    std::fill(lam.begin(), lam.end(), T(0));
    std::fill(sq.begin(), sq.end(), T(0));
    std::fill(spb.begin(), spb.end(), T(0));
    std::fill(sg.begin(), sg.end(), T(0));
    std::fill(so.begin(), so.end(), T(0));
    for (int64_t seg = segments - 1; seg >= 0; --seg) {
      const int64_t i0 = seg * s.S, i1 = std::min(s.L, i0 + s.S);
      const T* c = ckpt + (seg * s.B + b) * N * D + s.d0;
      for (int64_t n = 0; n < N; ++n) std::copy(c + n * D, c + n * D + W, &hs[n * W]);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = reverse ? s.L - 1 - i : i;
        const T* xt = x + (t * s.B + b) * D + s.d0;
        const T* prev = hs.data() + (i - i0) * NW;
        T* cur = hs.data() + (i - i0 + 1) * NW;
        for (int64_t n = 0; n < N; ++n) {
          const T* qn = q + n * D + s.d0;
          const T* pn = pb + n * D + s.d0;
          const T* pv = prev + n * W;
          T* cu = cur + n * W;
          MEGA_SIMD for (int64_t w = 0; w < W; ++w) cu[w] = qn[w] * pv[w] + pn[w] * xt[w];
        }
      }
      for (int64_t i = i1 - 1; i >= i0; --i) {
        const int64_t t = reverse ? s.L - 1 - i : i;
        const T* xt = x + (t * s.B + b) * D + s.d0;
        const T* gt = gy + (t * s.B + b) * D + s.d0;
        const T* prev = hs.data() + (i - i0) * NW;
        const T* cur = hs.data() + (i - i0 + 1) * NW;
        T* ga = gxa.data();
        if (omega != nullptr) {
          T* o = so.data();
          MEGA_SIMD for (int64_t w = 0; w < W; ++w) {
            ga[w] = omega[s.d0 + w] * gt[w];
            o[w] += gt[w] * xt[w];
          }
        } else {
          std::fill(gxa.begin(), gxa.end(), T(0));
        }
        for (int64_t n = 0; n < N; ++n) {
          const T* qn = q + n * D + s.d0;
          const T* pn = pb + n * D + s.d0;
          const T* gn = g + n * D + s.d0;
          const T* pv = prev + n * W;
          const T* cu = cur + n * W;
          T* ln = lam.data() + n * W;
          T* aq = sq.data() + n * W;
          T* ap = spb.data() + n * W;
          T* ag = sg.data() + n * W;
          MEGA_SIMD for (int64_t w = 0; w < W; ++w) {
            const T l = gn[w] * gt[w] + qn[w] * ln[w];
            ln[w] = l;
            aq[w] += l * pv[w];
            ap[w] += l * xt[w];
            ag[w] += gt[w] * cu[w];
            ga[w] += pn[w] * l;
          }
        }
        T* gxt = gx + (t * s.B + b) * D + s.d0;
        if (accumulate) {
          MEGA_SIMD for (int64_t w = 0; w < W; ++w) gxt[w] += ga[w];
        } else {
          std::copy(ga, ga + W, gxt);
        }
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t w = 0; w < W; ++w) {
        gq[n * D + s.d0 + w] += sq[n * W + w];
        gpb[n * D + s.d0 + w] += spb[n * W + w];
        gg[n * D + s.d0 + w] += sg[n * W + w];
      }
    }
    if (omega != nullptr) {
      for (int64_t w = 0; w < W; ++w) gomega[s.d0 + w] += so[w];
    }
  }
}

MEGA_CLONES void forward_float(const float* x, float* y, const float* q, const float* pb, const float* g,
                               const float* omega, float* ckpt, bool reverse, bool accumulate, Shape s) {
  forward_body<float>(x, y, q, pb, g, omega, ckpt, reverse, accumulate, s);
}
MEGA_CLONES void forward_double(const double* x, double* y, const double* q, const double* pb, const double* g,
                                const double* omega, double* ckpt, bool reverse, bool accumulate, Shape s) {
  forward_body<double>(x, y, q, pb, g, omega, ckpt, reverse, accumulate, s);
}
MEGA_CLONES void backward_float(const float* x, const float* gy, float* gx, const float* q, const float* pb,
                                const float* g, const float* omega, const float* ckpt, double* gq, double* gpb,
                                double* gg, double* gomega, bool reverse, bool accumulate, Shape s) {
  backward_body<float>(x, gy, gx, q, pb, g, omega, ckpt, gq, gpb, gg, gomega, reverse, accumulate, s);
}
MEGA_CLONES void backward_double(const double* x, const double* gy, double* gx, const double* q, const double* pb,
                                 const double* g, const double* omega, const double* ckpt, double* gq, double* gpb,
                                 double* gg, double* gomega, bool reverse, bool accumulate, Shape s) {
  backward_body<double>(x, gy, gx, q, pb, g, omega, ckpt, gq, gpb, gg, gomega, reverse, accumulate, s);
}

void forward_dispatch(const at::Tensor& x, at::Tensor& y, const at::Tensor& q, const at::Tensor& pb,
                      const at::Tensor& g, const at::Tensor* omega, at::Tensor* ckpt, bool reverse, bool accumulate,
                      Shape s) {
  if (x.scalar_type() == at::kFloat) {
    forward_float(x.data_ptr<float>(), y.data_ptr<float>(), q.data_ptr<float>(), pb.data_ptr<float>(),
                  g.data_ptr<float>(), omega ? omega->data_ptr<float>() : nullptr,
                  ckpt ? ckpt->data_ptr<float>() : nullptr, reverse, accumulate, s);
  } else {
    forward_double(x.data_ptr<double>(), y.data_ptr<double>(), q.data_ptr<double>(), pb.data_ptr<double>(),
                   g.data_ptr<double>(), omega ? omega->data_ptr<double>() : nullptr,
                   ckpt ? ckpt->data_ptr<double>() : nullptr, reverse, accumulate, s);
  }
}

void check(const at::Tensor& x, const at::Tensor& q, const at::Tensor& pb, const at::Tensor& g) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "x must be a contiguous CPU T x B x D tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64");
  for (const at::Tensor* c : {&q, &pb, &g}) {
    TORCH_CHECK(c->dim() == 2 && c->size(1) == x.size(2) && c->is_contiguous() &&
                    c->scalar_type() == x.scalar_type() && c->device().is_cpu(),
                "coefficients must be contiguous N x D CPU tensors in x's dtype");
  }
}

// an optional tensor the kernel reads or writes as a dense array: contiguous, shaped, x's dtype, CPU
void check_dense(const c10::optional<at::Tensor>& t, at::IntArrayRef shape, const at::Tensor& x, const char* name) {
  if (t.has_value()) {
    TORCH_CHECK(t->is_contiguous() && t->sizes() == shape && t->scalar_type() == x.scalar_type() &&
                    t->device().is_cpu(),
                name, " must be a contiguous CPU tensor of shape ", shape, " in x's dtype");
  }
}

int64_t grain(int64_t D) { return std::max<int64_t>(16, (D + at::get_num_threads() - 1) / at::get_num_threads()); }

}  // namespace

// y (new, or `out` added to) and, when `keep`, the segment-start states (segments x B x N x D)
std::vector<at::Tensor> ema_forward(const at::Tensor& x, const at::Tensor& q, const at::Tensor& pb, const at::Tensor& g,
                                    c10::optional<at::Tensor> omega, c10::optional<at::Tensor> out, bool reverse,
                                    int64_t segment, bool keep) {
  check(x, q, pb, g);
  TORCH_CHECK(segment > 0, "segment must be positive");
  const int64_t L = x.size(0), B = x.size(1), D = x.size(2), N = q.size(0);
  check_dense(omega, {D}, x, "omega");
  check_dense(out, x.sizes(), x, "out");
  const bool accumulate = out.has_value();
  at::Tensor y = accumulate ? *out : at::empty_like(x);
  at::Tensor ckpt = keep ? at::empty({(L + segment - 1) / segment, B, N, D}, x.options()) : at::Tensor();
  at::parallel_for(0, D, grain(D), [&](int64_t d0, int64_t d1) {
    forward_dispatch(x, y, q, pb, g, omega.has_value() ? &*omega : nullptr, keep ? &ckpt : nullptr, reverse,
                     accumulate, Shape{L, B, D, N, segment, d0, d1});
  });
  return {y, ckpt};
}

// (grad x (new, or `grad_out` added to), grad q, grad p_beta, grad gamma (N x D, float64), grad omega (D, float64))
std::vector<at::Tensor> ema_backward(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& q,
                                     const at::Tensor& pb, const at::Tensor& g, c10::optional<at::Tensor> omega,
                                     const at::Tensor& ckpt, c10::optional<at::Tensor> grad_out, bool reverse,
                                     int64_t segment) {
  check(x, q, pb, g);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous() && grad.scalar_type() == x.scalar_type(),
              "grad must be contiguous and shaped like x");
  const int64_t L = x.size(0), B = x.size(1), D = x.size(2), N = q.size(0);
  TORCH_CHECK(segment > 0, "segment must be positive");
  check_dense(omega, {D}, x, "omega");
  check_dense(grad_out, x.sizes(), x, "grad_out");
  check_dense(ckpt, {(L + segment - 1) / segment, B, N, D}, x, "states");
  const bool accumulate = grad_out.has_value();
  at::Tensor gx = accumulate ? *grad_out : at::empty_like(x);
  auto options = x.options().dtype(at::kDouble);
  at::Tensor gq = at::zeros({N, D}, options), gpb = at::zeros({N, D}, options), gg = at::zeros({N, D}, options);
  at::Tensor gomega = at::zeros({D}, options);
  const at::Tensor* om = omega.has_value() ? &*omega : nullptr;
  at::parallel_for(0, D, grain(D), [&](int64_t d0, int64_t d1) {
    Shape s{L, B, D, N, segment, d0, d1};
    if (x.scalar_type() == at::kFloat) {
      backward_float(x.data_ptr<float>(), grad.data_ptr<float>(), gx.data_ptr<float>(), q.data_ptr<float>(),
                     pb.data_ptr<float>(), g.data_ptr<float>(), om ? om->data_ptr<float>() : nullptr,
                     ckpt.data_ptr<float>(), gq.data_ptr<double>(), gpb.data_ptr<double>(), gg.data_ptr<double>(),
                     gomega.data_ptr<double>(), reverse, accumulate, s);
    } else {
      backward_double(x.data_ptr<double>(), grad.data_ptr<double>(), gx.data_ptr<double>(), q.data_ptr<double>(),
                      pb.data_ptr<double>(), g.data_ptr<double>(), om ? om->data_ptr<double>() : nullptr,
                      ckpt.data_ptr<double>(), gq.data_ptr<double>(), gpb.data_ptr<double>(), gg.data_ptr<double>(),
                      gomega.data_ptr<double>(), reverse, accumulate, s);
    }
  });
  return {gx, gq, gpb, gg, gomega};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ema_forward, "EMA recurrence, one direction (see ema_recurrence.py)");
  m.def("backward", &ema_backward, "its backward");
}
