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
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu_dispatch.h"

namespace {

struct Shape {
  int64_t L, B, D, N, S;  // time, batch, channels, EMA dimensions, segment length
  int64_t d0, d1;         // the channels [d0, d1) this call works on
};

// The loops run over blocks of channels, as many as one vector register holds (AVX2: 8 floats, 4
// doubles; the backward on AVX-512 machines: 16 floats, 8 doubles):
// for one block and a few EMA dimensions the states, the adjoints and the gradient sums stay in
// registers through a segment of steps, and the segment's inputs and gradients are local arrays in
// cache. (Running all N x D states one step at a time, they went through L2 at every step.) The
// channels are taken a panel of kPanel blocks at a time, so a step's row is read and written in
// runs of 2 KiB: with 256-byte runs, one per page, the hardware prefetcher could not follow and
// the copies waited on memory (half the forward's time). The local arrays hold a segment's rows as
// they lie in memory, a row a plain copy, block j of step k at [k * kPitch + j]: the pitch is
// 2,112 bytes (kPanel + 2 blocks of 32 bytes, kPanel + 1 of 64), an odd number of cache lines, so
// one block's steps fall in different cache sets (with a 2 KiB pitch all 64 steps would share 2 of
// L1's 64 sets). Copying each row
// into per-block runs of steps instead ([j * S + k]) wrote 64 scattered half lines a row: measured
// (d=512, 8192 tokens, 1 thread) 1.4 ms more a forward and 1.7 ms more a backward.
template <typename T, int Bytes>
struct Lanes {
  static constexpr int64_t V = Bytes / sizeof(T);
  typedef T Vec __attribute__((vector_size(Bytes)));
  // blocks in a panel (a row run of 2 KiB) and in the pitch of the local arrays (2,112 bytes)
  static constexpr int64_t kPanel = 2048 / Bytes;
  static constexpr int64_t kPitch = 2112 / Bytes;
};

// vector sizes in bytes: AVX2 (the forward; the backward where AVX-512 is missing) and AVX-512
constexpr int kNarrow = 32;
constexpr int kWide = 64;

// EMA dimensions run together in the inner loops: independent recurrences share a step's latency.
// Four in the forward; in the backward, two with AVX2, whose five running values per dimension
// would not fit its 16 registers for four (measured: four were no faster there, and the forward
// gained 5-15 %), and four with AVX-512's 32 registers. The backward's AVX-512 copy (16 floats a
// block, four dimensions) took 16.8-17.4 ms against 22.7-23.5 ms for the AVX2 one (d=512, 8192
// tokens, 1 thread, bit-identical results); the forward measured slower with AVX-512 (8.1-8.8
// against 7.7-8.2 ms), so it stays AVX2.
constexpr int kForwardDims = 4;
constexpr int kNarrowDims = 2;
constexpr int kWideDims = 4;

// `size` zeroed blocks, aligned to the vector type (std::vector does not align them to it here)
template <typename Vec>
class Blocks {
 public:
  explicit Blocks(int64_t size)
      : data_(static_cast<Vec*>(std::aligned_alloc(sizeof(Vec), std::max<int64_t>(size, 1) * sizeof(Vec)))),
        size_(size) {
    TORCH_CHECK(data_ != nullptr, "out of memory");
    zero();
  }
  ~Blocks() { std::free(data_); }
  Blocks(const Blocks&) = delete;
  Blocks& operator=(const Blocks&) = delete;
  Vec& operator[](int64_t i) { return data_[i]; }
  void zero() { std::fill(data_, data_ + size_, Vec{}); }

 private:
  Vec* data_;
  int64_t size_;
};

// The channels [c0, c1) as blocks (the last one zero-padded): block j of a row goes to (or comes
// from) dst[j * stride].
template <typename T, int Bytes>
struct Panel {
  using Vec = typename Lanes<T, Bytes>::Vec;
  static constexpr int64_t V = Lanes<T, Bytes>::V;
  int64_t c0, c1;
  MEGA_INLINE int64_t blocks() const { return (c1 - c0 + V - 1) / V; }
  MEGA_INLINE int64_t width(int64_t j) const { return std::min(V, c1 - c0 - j * V); }
  MEGA_INLINE void gather(const T* row, Vec* dst, int64_t stride) const {
    for (int64_t j = 0, J = blocks(); j < J; ++j) {
      const T* src = row + c0 + j * V;
      Vec r = {};
      if (width(j) == V) {
        std::memcpy(&r, src, sizeof(Vec));
      } else {
        for (int64_t v = 0; v < width(j); ++v) r[v] = src[v];
      }
      dst[j * stride] = r;
    }
  }
  MEGA_INLINE void scatter(const Vec* src, int64_t stride, T* row, bool accumulate) const {
    for (int64_t j = 0, J = blocks(); j < J; ++j) {
      T* dst = row + c0 + j * V;
      const Vec r = src[j * stride];
      if (accumulate) {
        for (int64_t v = 0; v < width(j); ++v) dst[v] += r[v];
      } else if (width(j) == V) {
        std::memcpy(dst, &r, sizeof(Vec));
      } else {
        for (int64_t v = 0; v < width(j); ++v) dst[v] = r[v];
      }
    }
  }
  // N x D coefficients into dst[j * N + n]
  MEGA_INLINE void gather_rows(const T* src, Vec* dst, int64_t N, int64_t D) const {
    for (int64_t n = 0; n < N; ++n) gather(src + n * D, dst + n, N);
  }
};

// The coefficients of one panel: q, p_beta and gamma as blocks [j * N + n], omega [j] (zero without it)
template <typename T, int Bytes>
struct PanelCoefficients {
  using Vec = typename Lanes<T, Bytes>::Vec;
  static constexpr int64_t kPanel = Lanes<T, Bytes>::kPanel;
  Blocks<Vec> q, pb, g, omega;
  explicit PanelCoefficients(int64_t N) : q(kPanel * N), pb(kPanel * N), g(kPanel * N), omega(kPanel) {}
  MEGA_INLINE void load(const Panel<T, Bytes>& panel, const T* q_rows, const T* pb_rows, const T* g_rows,
                        const T* omega_row, int64_t N, int64_t D) {
    panel.gather_rows(q_rows, &q[0], N, D);
    panel.gather_rows(pb_rows, &pb[0], N, D);
    panel.gather_rows(g_rows, &g[0], N, D);
    if (omega_row != nullptr) panel.gather(omega_row, &omega[0], 1);
  }
};

// The offset of step i of sequence b in a Time x Batch x D array (time reversed for the anti-causal
// direction)
MEGA_INLINE int64_t row_at(int64_t i, int64_t b, const Shape& s, bool reverse) {
  return ((reverse ? s.L - 1 - i : i) * s.B + b) * s.D;
}

// One segment of `steps` steps forward for one block and G EMA dimensions (coefficients q, pb, g;
// states h carried from segment to segment): acc[k * pitch] += sum over them of gamma *
// state after step k (xs and acc: a block's column of the segment's rows, see kPitch).
template <int G, typename Vec>
MEGA_INLINE void forward_dims(const Vec* q, const Vec* pb, const Vec* g, Vec* h, const Vec* xs, Vec* acc,
                              int64_t steps, int64_t pitch) {
  Vec hn[G];
  for (int j = 0; j < G; ++j) hn[j] = h[j];
  for (int64_t k = 0; k < steps; ++k) {
    Vec a = acc[k * pitch];
    for (int j = 0; j < G; ++j) {
      hn[j] = q[j] * hn[j] + pb[j] * xs[k * pitch];
      a += g[j] * hn[j];
    }
    acc[k * pitch] = a;
  }
  for (int j = 0; j < G; ++j) h[j] = hn[j];
}

// One segment backward for one block and G EMA dimensions: their states are remade from the
// segment's first ones (start) into hs (hs[k * G + j] before step k), then the adjoints lam run
// back through the segment, adding to the input gradient ga and to the sums sq, spb, sg (xs, gs, ga:
// a block's column of the segment's rows, pitch apart).
template <int G, typename Vec>
MEGA_INLINE void backward_dims(const Vec* start, const Vec* q, const Vec* pb, const Vec* g, const Vec* xs,
                               const Vec* gs, Vec* hs, Vec* ga, Vec* lam, Vec* sq, Vec* spb, Vec* sg, int64_t steps,
                               int64_t pitch) {
  Vec h[G];
  for (int j = 0; j < G; ++j) hs[j] = h[j] = start[j];
  for (int64_t k = 0; k < steps; ++k) {
    for (int j = 0; j < G; ++j) {
      h[j] = q[j] * h[j] + pb[j] * xs[k * pitch];
      hs[(k + 1) * G + j] = h[j];
    }
  }
  Vec l[G], aq[G], ap[G], ag[G];
  for (int j = 0; j < G; ++j) {
    l[j] = lam[j];
    aq[j] = sq[j];
    ap[j] = spb[j];
    ag[j] = sg[j];
  }
  for (int64_t k = steps - 1; k >= 0; --k) {
    Vec a = ga[k * pitch];
    const Vec gk = gs[k * pitch], xk = xs[k * pitch];
    for (int j = 0; j < G; ++j) {
      l[j] = g[j] * gk + q[j] * l[j];
      aq[j] += l[j] * hs[k * G + j];
      ap[j] += l[j] * xk;
      ag[j] += gk * hs[(k + 1) * G + j];
      a += pb[j] * l[j];
    }
    ga[k * pitch] = a;
  }
  for (int j = 0; j < G; ++j) {
    lam[j] = l[j];
    sq[j] = aq[j];
    spb[j] = ap[j];
    sg[j] = ag[j];
  }
}

template <typename T>
MEGA_INLINE void forward_body(const T* x, T* y, const T* q, const T* pb, const T* g, const T* omega, T* ckpt,
                              bool reverse, bool accumulate, Shape s) {
  using L = Lanes<T, kNarrow>;
  using Vec = typename L::Vec;
  constexpr int64_t kPanel = L::kPanel, kPitch = L::kPitch;
  const int64_t N = s.N, D = s.D, S = s.S, P = kPanel * L::V;
  // per block j of the panel: states [j * N + n]; a segment's inputs and outputs [k * kPitch + j]
  PanelCoefficients<T, kNarrow> coef(N);
  Blocks<Vec>& cq = coef.q, & cp = coef.pb, & cg = coef.g, & co = coef.omega;
  Blocks<Vec> h(kPanel * N), xs(kPitch * S), acc(kPitch * S);
  for (int64_t c0 = s.d0; c0 < s.d1; c0 += P) {
    const Panel<T, kNarrow> panel{c0, std::min(s.d1, c0 + P)};
    const int64_t J = panel.blocks();
    coef.load(panel, q, pb, g, omega, N, D);
    for (int64_t b = 0; b < s.B; ++b) {
      h.zero();
      for (int64_t i0 = 0; i0 < s.L; i0 += S) {
        const int64_t steps = std::min(s.L - i0, S);
        if (ckpt != nullptr) {
          T* c = ckpt + ((i0 / S) * s.B + b) * N * D;
          for (int64_t n = 0; n < N; ++n) panel.scatter(&h[n], N, c + n * D, false);
        }
        for (int64_t k = 0; k < steps; ++k) panel.gather(x + row_at(i0 + k, b, s, reverse), &xs[k * kPitch], 1);
        for (int64_t j = 0; j < J; ++j) {
          for (int64_t k = 0; k < steps; ++k) acc[k * kPitch + j] = co[j] * xs[k * kPitch + j];
          const int64_t o = j * N;
          int64_t n = 0;
          for (; n + kForwardDims <= N; n += kForwardDims) {
            forward_dims<kForwardDims>(&cq[o + n], &cp[o + n], &cg[o + n], &h[o + n], &xs[j], &acc[j], steps, kPitch);
          }
          for (; n < N; ++n) forward_dims<1>(&cq[o + n], &cp[o + n], &cg[o + n], &h[o + n], &xs[j], &acc[j], steps, kPitch);
        }
        for (int64_t k = 0; k < steps; ++k) panel.scatter(&acc[k * kPitch], 1, y + row_at(i0 + k, b, s, reverse), accumulate);
      }
    }
  }
}

template <typename T, int Bytes, int kDims>
MEGA_INLINE void backward_body(const T* x, const T* gy, T* gx, const T* q, const T* pb, const T* g, const T* omega,
                               const T* ckpt, double* gq, double* gpb, double* gg, double* gomega, bool reverse,
                               bool accumulate, Shape s) {
  using L = Lanes<T, Bytes>;
  using Vec = typename L::Vec;
  constexpr int64_t kPanel = L::kPanel, kPitch = L::kPitch;
  const int64_t N = s.N, D = s.D, S = s.S, P = kPanel * L::V;
  const int64_t segments = (s.L + S - 1) / S;
  // per block j of the panel: a segment's first states, the adjoints carried to the previous
  // segment and the gradient sums over one sequence (in T, added to the double totals after it)
  // [j * N + n]; omega's sum [j]; a segment's inputs, output and input gradients [k * kPitch + j]
  PanelCoefficients<T, Bytes> coef(N);
  Blocks<Vec>& cq = coef.q, & cp = coef.pb, & cg = coef.g, & co = coef.omega;
  Blocks<Vec> start(kPanel * N), so(kPanel), lam(kPanel * N), sq(kPanel * N), spb(kPanel * N), sg(kPanel * N);
  Blocks<Vec> xs(kPitch * S), gs(kPitch * S), ga(kPitch * S), hs((S + 1) * kDims);
  for (int64_t c0 = s.d0; c0 < s.d1; c0 += P) {
    const Panel<T, Bytes> panel{c0, std::min(s.d1, c0 + P)};
    const int64_t J = panel.blocks();
    coef.load(panel, q, pb, g, omega, N, D);
    for (int64_t b = 0; b < s.B; ++b) {
      for (Blocks<Vec>* a : {&lam, &sq, &spb, &sg, &so}) a->zero();
      for (int64_t seg = segments - 1; seg >= 0; --seg) {
        const int64_t i0 = seg * S, steps = std::min(s.L - i0, S);
        for (int64_t k = 0; k < steps; ++k) {
          panel.gather(x + row_at(i0 + k, b, s, reverse), &xs[k * kPitch], 1);
          panel.gather(gy + row_at(i0 + k, b, s, reverse), &gs[k * kPitch], 1);
        }
        const T* c = ckpt + (seg * s.B + b) * N * D;
        panel.gather_rows(c, &start[0], N, D);
        for (int64_t j = 0; j < J; ++j) {
          for (int64_t k = 0; k < steps; ++k) {
            ga[k * kPitch + j] = co[j] * gs[k * kPitch + j];
            so[j] += gs[k * kPitch + j] * xs[k * kPitch + j];
          }
          const int64_t o = j * N;
          int64_t n = 0;
          for (; n + kDims <= N; n += kDims) {
            backward_dims<kDims>(&start[o + n], &cq[o + n], &cp[o + n], &cg[o + n], &xs[j], &gs[j], &hs[0],
                                 &ga[j], &lam[o + n], &sq[o + n], &spb[o + n], &sg[o + n], steps, kPitch);
          }
          for (; n < N; ++n) {
            backward_dims<1>(&start[o + n], &cq[o + n], &cp[o + n], &cg[o + n], &xs[j], &gs[j], &hs[0],
                             &ga[j], &lam[o + n], &sq[o + n], &spb[o + n], &sg[o + n], steps, kPitch);
          }
        }
        for (int64_t k = 0; k < steps; ++k) panel.scatter(&ga[k * kPitch], 1, gx + row_at(i0 + k, b, s, reverse), accumulate);
      }
      for (int64_t j = 0; j < J; ++j) {
        const int64_t d = c0 + j * L::V;
        for (int64_t v = 0; v < panel.width(j); ++v) {
          for (int64_t n = 0; n < N; ++n) {
            gq[n * D + d + v] += sq[j * N + n][v];
            gpb[n * D + d + v] += spb[j * N + n][v];
            gg[n * D + d + v] += sg[j * N + n][v];
          }
          if (omega != nullptr) gomega[d + v] += so[j][v];
        }
      }
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
  backward_body<float, kNarrow, kNarrowDims>(x, gy, gx, q, pb, g, omega, ckpt, gq, gpb, gg, gomega, reverse,
                                             accumulate, s);
}
MEGA_CLONES void backward_double(const double* x, const double* gy, double* gx, const double* q, const double* pb,
                                 const double* g, const double* omega, const double* ckpt, double* gq, double* gpb,
                                 double* gg, double* gomega, bool reverse, bool accumulate, Shape s) {
  backward_body<double, kNarrow, kNarrowDims>(x, gy, gx, q, pb, g, omega, ckpt, gq, gpb, gg, gomega, reverse,
                                              accumulate, s);
}
#ifdef MEGA_WIDE
MEGA_WIDE void backward_float_wide(const float* x, const float* gy, float* gx, const float* q, const float* pb,
                                   const float* g, const float* omega, const float* ckpt, double* gq, double* gpb,
                                   double* gg, double* gomega, bool reverse, bool accumulate, Shape s) {
  backward_body<float, kWide, kWideDims>(x, gy, gx, q, pb, g, omega, ckpt, gq, gpb, gg, gomega, reverse, accumulate,
                                         s);
}
MEGA_WIDE void backward_double_wide(const double* x, const double* gy, double* gx, const double* q, const double* pb,
                                    const double* g, const double* omega, const double* ckpt, double* gq, double* gpb,
                                    double* gg, double* gomega, bool reverse, bool accumulate, Shape s) {
  backward_body<double, kWide, kWideDims>(x, gy, gx, q, pb, g, omega, ckpt, gq, gpb, gg, gomega, reverse,
                                          accumulate, s);
}
#endif

// whether the backward takes its AVX-512 copy: the machine has it (x86-64-v4) and it is not switched
// off (set_wide_vectors, for the tests of the other copy)
bool wide_enabled = true;

bool wide_backward() {
#ifdef MEGA_WIDE
  static const bool supported = MEGA_HAS_WIDE();
  return supported && wide_enabled;
#else
  return false;
#endif
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

// channels per task: whole blocks of V
int64_t grain(int64_t D) {
  const int64_t share = (D + at::get_num_threads() - 1) / at::get_num_threads();
  constexpr int64_t V = Lanes<float, kWide>::V;  // whole blocks of either size, float or double
  return std::max<int64_t>(V, (share + V - 1) / V * V);
}

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
  const bool wide = wide_backward();
  at::parallel_for(0, D, grain(D), [&](int64_t d0, int64_t d1) {
    Shape s{L, B, D, N, segment, d0, d1};
    if (x.scalar_type() == at::kFloat) {
      auto body = backward_float;
#ifdef MEGA_WIDE
      if (wide) body = backward_float_wide;
#endif
      body(x.data_ptr<float>(), grad.data_ptr<float>(), gx.data_ptr<float>(), q.data_ptr<float>(), pb.data_ptr<float>(),
           g.data_ptr<float>(), om ? om->data_ptr<float>() : nullptr, ckpt.data_ptr<float>(), gq.data_ptr<double>(),
           gpb.data_ptr<double>(), gg.data_ptr<double>(), gomega.data_ptr<double>(), reverse, accumulate, s);
    } else {
      auto body = backward_double;
#ifdef MEGA_WIDE
      if (wide) body = backward_double_wide;
#endif
      body(x.data_ptr<double>(), grad.data_ptr<double>(), gx.data_ptr<double>(), q.data_ptr<double>(),
           pb.data_ptr<double>(), g.data_ptr<double>(), om ? om->data_ptr<double>() : nullptr, ckpt.data_ptr<double>(),
           gq.data_ptr<double>(), gpb.data_ptr<double>(), gg.data_ptr<double>(), gomega.data_ptr<double>(), reverse,
           accumulate, s);
    }
  });
  return {gx, gq, gpb, gg, gomega};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ema_forward, "EMA recurrence, one direction (see ema_recurrence.py)");
  m.def("backward", &ema_backward, "its backward");
  m.def(
      "set_wide_vectors",
      [](bool enabled) {
        wide_enabled = enabled;
        return wide_backward();
      },
      "let the backward take its AVX-512 copy where the machine has one (the default) or not; returns "
      "whether it will");
}
