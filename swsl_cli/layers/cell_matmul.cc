// Per-cell products of the locally connected layers, as three TensorFlow CPU kernels.
//
//   outputs[b, cell, f] = sum_{t, c} inputs[b, table[cell, t], c] * kernels[cell, t C + c, f]
//
// `inputs` is (batch, pixels, C), the NHWC input with its rows and columns flattened;
// `table` (cells, taps) names the pixel under each tap of each cell, -1 in the padding;
// `kernels` is (cells, taps * C, F). The patches are never written out: each product
// reads the input where it lies, as a convolution kernel does, and the input gradient is
// summed per pixel over the (cell, tap) pairs that read it, so no thread writes where
// another does and every sum runs in a fixed order (the results do not depend on the
// number of threads).
//
// Built for the machine it runs on by swsl_cli/layers/cell_ops.py (`-march=native`).
// The inner loops are register-blocked multiply-adds on GCC / Clang vector types as wide
// as the machine's vector registers (16 floats with AVX-512, 8 with AVX, else 4), in
// blocks sized to the number of those registers; `CellPatches`'s `keras.ops` code is the
// reference they are tested against.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/lib/core/threadpool.h"

using namespace tensorflow;

REGISTER_OP("SwslCellMatmul")
    .Input("inputs: float")    // (batch, pixels, C)
    .Input("kernels: float")   // (cells, taps * C, F)
    .Input("table: int32")     // (cells, taps)
    .Output("outputs: float")  // (batch, cells, F)
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x, k, t;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &k));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &t));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), c->Dim(k, 0), c->Dim(k, 2)}));
      return absl::OkStatus();
    });

REGISTER_OP("SwslCellMatmulKernelGrad")
    .Input("inputs: float")
    .Input("kernels: float")
    .Input("table: int32")
    .Input("upstream: float")  // (batch, cells, F)
    .Output("kernels_grad: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      return absl::OkStatus();
    });

REGISTER_OP("SwslCellMatmulInputGrad")
    .Input("inputs: float")
    .Input("kernels: float")
    .Input("table: int32")
    .Input("upstream: float")
    .Output("inputs_grad: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

// The SWS layer's kernel mix with per-filter coefficients (`per_feature`):
//   mixed[cell, k, f] = sum_s coefficients[cell, f, s] * weights[k, f, s]
// and its gradient, one op per operand: a network with fixed centroids needs only the
// weights', and TensorFlow prunes the op whose output nobody reads. Each output is written
// by one thread in a fixed order, as above.
REGISTER_OP("SwslMixKernels")
    .Input("coefficients: float")  // (cells, F, S)
    .Input("weights: float")       // (K, F, S)
    .Output("mixed: float")        // (cells, K, F)
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle a, w;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &a));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &w));
      c->set_output(0, c->MakeShape({c->Dim(a, 0), c->Dim(w, 0), c->Dim(w, 1)}));
      return absl::OkStatus();
    });

//   coefficients_grad[cell, f, s] = sum_k upstream[cell, k, f] * weights[k, f, s]
REGISTER_OP("SwslMixKernelsCoefficientsGrad")
    .Input("weights: float")   // (K, F, S)
    .Input("upstream: float")  // (cells, K, F)
    .Output("coefficients_grad: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle w, u;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &w));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &u));
      c->set_output(0, c->MakeShape({c->Dim(u, 0), c->Dim(w, 1), c->Dim(w, 2)}));
      return absl::OkStatus();
    });

//   weights_grad[k, f, s] = sum_cell upstream[cell, k, f] * coefficients[cell, f, s]
REGISTER_OP("SwslMixKernelsWeightsGrad")
    .Input("coefficients: float")  // (cells, F, S)
    .Input("upstream: float")      // (cells, K, F)
    .Output("weights_grad: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle a, u;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &a));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &u));
      c->set_output(0, c->MakeShape({c->Dim(u, 1), c->Dim(a, 1), c->Dim(a, 2)}));
      return absl::OkStatus();
    });

namespace {

// The vector width and the blocks. A block's accumulators, its loaded vectors and one
// broadcast weight all stay in registers: 32 registers with AVX-512 or on AArch64, 16
// with AVX or SSE. A vector wider than the registers would be split in two by the
// compiler and spill its accumulators to memory, several times slower.
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
constexpr int kBlockNF = 6, kBlockNV = 4;  // forward: 6 filters x 4 vectors of images
constexpr int kGradNK = 8, kGradNV = 3;    // kernels' gradient: 8 patch values x 3 vectors
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;
constexpr int kBlockNF = 6, kBlockNV = 2;
constexpr int kGradNK = 4, kGradNV = 3;
#elif defined(__aarch64__)
constexpr int64_t kLanes = 4;
constexpr int kBlockNF = 6, kBlockNV = 4;
constexpr int kGradNK = 8, kGradNV = 3;
#else
constexpr int64_t kLanes = 4;
constexpr int kBlockNF = 6, kBlockNV = 2;
constexpr int kGradNK = 4, kGradNV = 3;
#endif

typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));

inline vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct Geometry {
  int64_t batch, pixels, channels, cells, taps, size, filters;
};

absl::Status read_geometry(OpKernelContext* ctx, bool with_upstream, Geometry* g) {
  const Tensor& x = ctx->input(0);
  const Tensor& k = ctx->input(1);
  const Tensor& t = ctx->input(2);
  if (x.dims() != 3 || k.dims() != 3 || t.dims() != 2)
    return absl::InvalidArgumentError("SwslCellMatmul: inputs, kernels, table of rank 3, 3, 2");
  g->batch = x.dim_size(0);
  g->pixels = x.dim_size(1);
  g->channels = x.dim_size(2);
  g->cells = k.dim_size(0);
  g->size = k.dim_size(1);
  g->filters = k.dim_size(2);
  g->taps = t.dim_size(1);
  if (t.dim_size(0) != g->cells || g->taps * g->channels != g->size)
    return absl::InvalidArgumentError("SwslCellMatmul: the table does not fit the kernels");
  const int32* table = t.flat<int32>().data();
  for (int64_t i = 0; i < t.NumElements(); ++i)
    if (table[i] < -1 || table[i] >= g->pixels)
      return absl::InvalidArgumentError("SwslCellMatmul: a table entry is not a pixel");
  if (with_upstream) {
    const Tensor& u = ctx->input(3);
    if (u.dims() != 3 || u.dim_size(0) != g->batch || u.dim_size(1) != g->cells ||
        u.dim_size(2) != g->filters)
      return absl::InvalidArgumentError("SwslCellMatmul: upstream gradient of the wrong shape");
  }
  return absl::OkStatus();
}

thread::ThreadPool* workers(OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->workers;
}

// xT[p, c, b] = x[b, p, c], the batch padded with zeros to bp (a multiple of kLanes), and
// one more row of bp zeros at the end (read by the padding).
void transpose_input(OpKernelContext* ctx, const Geometry& g, int64_t bp, const float* x,
                     float* xT) {
  const int64_t B = g.batch, P = g.pixels, C = g.channels;
  workers(ctx)->ParallelFor(P, C * bp, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t c = 0; c < C; ++c) {
        float* dst = xT + (p * C + c) * bp;
        for (int64_t b = 0; b < B; ++b) dst[b] = x[(b * P + p) * C + c];
        std::fill(dst + B, dst + bp, 0.f);
      }
  });
  std::fill(xT + P * C * bp, xT + (P * C + 1) * bp, 0.f);
}

// ---- forward: NF filters of one cell for NV * kLanes images, the batch in the vector lanes.
template <int NF, int NV>
void forward_block(const float* xT, int64_t bp, int64_t C, const int32* row, int64_t taps,
                   const float* w, int64_t F, int64_t b0, int64_t B, float* y, int64_t y_row) {
  vec acc[NF][NV] = {};
  for (int64_t t = 0; t < taps; ++t) {
    if (row[t] < 0) continue;  // the padding adds nothing
    const float* xr = xT + row[t] * C * bp + b0;
    const float* wr = w + t * C * F;
    for (int64_t c = 0; c < C; ++c, xr += bp, wr += F) {
      vec xv[NV];
      for (int j = 0; j < NV; ++j) xv[j] = load(xr + kLanes * j);
      for (int i = 0; i < NF; ++i) {
        const float s = wr[i];
        for (int j = 0; j < NV; ++j) acc[i][j] += s * xv[j];
      }
    }
  }
  for (int j = 0; j < NV; ++j) {
    float lanes[NF][kLanes];
    for (int i = 0; i < NF; ++i) store(lanes[i], acc[i][j]);
    const int64_t n = std::min<int64_t>(kLanes, B - b0 - kLanes * j);
    for (int64_t l = 0; l < n; ++l)
      for (int i = 0; i < NF; ++i) y[(b0 + kLanes * j + l) * y_row + i] = lanes[i][l];
  }
}

typedef void (*ForwardBlock)(const float*, int64_t, int64_t, const int32*, int64_t,
                             const float*, int64_t, int64_t, int64_t, float*, int64_t);

// The block of every size up to the largest, indexed [NF - 1][NV - 1].
template <int NF, int... NV>
constexpr std::array<ForwardBlock, sizeof...(NV)> forward_row(std::integer_sequence<int, NV...>) {
  return {forward_block<NF, NV + 1>...};
}
template <int... NF>
constexpr std::array<std::array<ForwardBlock, kBlockNV>, sizeof...(NF)> forward_table(
    std::integer_sequence<int, NF...>) {
  return {forward_row<NF + 1>(std::make_integer_sequence<int, kBlockNV>())...};
}
constexpr auto kForward = forward_table(std::make_integer_sequence<int, kBlockNF>());

// ---- kernels' gradient: kGradNK patch values of one cell for NV * kLanes filters, over
// the batch.
// rows[i]: the row of xT that patch value i reads (the zero row in the padding);
// u: the cell's upstream gradient (B, fp), its filters padded with zeros.
template <int NV>
void kernel_grad_block(const float* const* rows, const float* u, int64_t fp, int64_t B,
                       float* dw, int64_t F, int64_t nk, int64_t nf) {
  constexpr int NK = kGradNK;
  vec acc[NK][NV] = {};
  const float* r[NK];
  for (int i = 0; i < NK; ++i) r[i] = rows[i];
  for (int64_t b = 0; b < B; ++b) {
    vec d[NV];
    for (int j = 0; j < NV; ++j) d[j] = load(u + b * fp + kLanes * j);
    for (int i = 0; i < NK; ++i) {
      const float s = r[i][b];
      for (int j = 0; j < NV; ++j) acc[i][j] += s * d[j];
    }
  }
  for (int64_t i = 0; i < nk; ++i) {
    float lanes[NV * kLanes];
    for (int j = 0; j < NV; ++j) store(lanes + kLanes * j, acc[i][j]);
    std::memcpy(dw + i * F, lanes, nf * sizeof(float));
  }
}

typedef void (*KernelGradBlock)(const float* const*, const float*, int64_t, int64_t, float*,
                                int64_t, int64_t, int64_t);
template <int... NV>
constexpr std::array<KernelGradBlock, sizeof...(NV)> kernel_grad_table(
    std::integer_sequence<int, NV...>) {
  return {kernel_grad_block<NV + 1>...};
}
constexpr auto kKernelGrad = kernel_grad_table(std::make_integer_sequence<int, kGradNV>());

// ---- inputs' gradient: NC channels of one pixel for NV * kLanes images, summed over the
// (cell, tap) pairs that read the pixel; uT is the upstream gradient (cells, F, bp).
template <int NC, int NV>
void input_grad_block(const int32* readers, int64_t n, const float* w, int64_t K, int64_t F,
                      int64_t C, const float* uT, int64_t bp, int64_t b0, int64_t c0,
                      float* dxT) {
  vec acc[NC][NV] = {};
  for (int64_t r = 0; r < n; ++r) {
    const int64_t cell = readers[2 * r], t = readers[2 * r + 1];
    const float* wr = w + cell * K * F + (t * C + c0) * F;
    const float* ur = uT + cell * F * bp + b0;
    for (int64_t f = 0; f < F; ++f, ur += bp) {
      vec d[NV];
      for (int j = 0; j < NV; ++j) d[j] = load(ur + kLanes * j);
      for (int i = 0; i < NC; ++i) {
        const float s = wr[i * F + f];
        for (int j = 0; j < NV; ++j) acc[i][j] += s * d[j];
      }
    }
  }
  for (int i = 0; i < NC; ++i)
    for (int j = 0; j < NV; ++j) store(dxT + (c0 + i) * bp + b0 + kLanes * j, acc[i][j]);
}

typedef void (*InputGradBlock)(const int32*, int64_t, const float*, int64_t, int64_t, int64_t,
                               const float*, int64_t, int64_t, int64_t, float*);

template <int NC, int... NV>
constexpr std::array<InputGradBlock, sizeof...(NV)> input_grad_row(
    std::integer_sequence<int, NV...>) {
  return {input_grad_block<NC, NV + 1>...};
}
template <int... NC>
constexpr std::array<std::array<InputGradBlock, kBlockNV>, sizeof...(NC)> input_grad_table(
    std::integer_sequence<int, NC...>) {
  return {input_grad_row<NC + 1>(std::make_integer_sequence<int, kBlockNV>())...};
}
constexpr auto kInputGrad = input_grad_table(std::make_integer_sequence<int, kBlockNF>());

}  // namespace

class SwslCellMatmulOp : public OpKernel {
 public:
  explicit SwslCellMatmulOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    Geometry g;
    OP_REQUIRES_OK(ctx, read_geometry(ctx, false, &g));
    Tensor* y_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {g.batch, g.cells, g.filters}, &y_t));
    if (y_t->NumElements() == 0) return;
    float* y = y_t->flat<float>().data();
    if (g.size == 0) {
      std::fill(y, y + y_t->NumElements(), 0.f);
      return;
    }
    const int64_t F = g.filters, bp = round_up(g.batch, kLanes);
    Tensor xT_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, {(g.pixels * g.channels + 1) * bp}, &xT_t));
    float* xT = xT_t.flat<float>().data();
    transpose_input(ctx, g, bp, ctx->input(0).flat<float>().data(), xT);
    const float* w = ctx->input(1).flat<float>().data();
    const int32* table = ctx->input(2).flat<int32>().data();
    workers(ctx)->ParallelFor(g.cells, 2 * bp * g.size * F, [&](int64_t c0, int64_t c1) {
      for (int64_t cell = c0; cell < c1; ++cell)
        for (int64_t f0 = 0; f0 < F; f0 += kBlockNF)
          for (int64_t b0 = 0; b0 < bp; b0 += kBlockNV * kLanes) {
            const int64_t nf = std::min<int64_t>(kBlockNF, F - f0);
            const int64_t nv = std::min<int64_t>(kBlockNV, (bp - b0) / kLanes);
            kForward[nf - 1][nv - 1](xT, bp, g.channels, table + cell * g.taps, g.taps,
                                     w + cell * g.size * F + f0, F, b0, g.batch,
                                     y + cell * F + f0, g.cells * F);
          }
    });
  }
};

class SwslCellMatmulKernelGradOp : public OpKernel {
 public:
  explicit SwslCellMatmulKernelGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    Geometry g;
    OP_REQUIRES_OK(ctx, read_geometry(ctx, true, &g));
    Tensor* dw_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(1).shape(), &dw_t));
    float* dw = dw_t->flat<float>().data();
    if (g.batch == 0 || g.channels == 0 || g.pixels == 0) {
      std::fill(dw, dw + dw_t->NumElements(), 0.f);
      return;
    }
    if (dw_t->NumElements() == 0) return;
    const int64_t B = g.batch, C = g.channels, K = g.size, F = g.filters, cells = g.cells;
    const int64_t bp = round_up(B, kLanes), fp = round_up(F, kLanes);
    Tensor xT_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, {(g.pixels * C + 1) * bp}, &xT_t));
    float* xT = xT_t.flat<float>().data();
    transpose_input(ctx, g, bp, ctx->input(0).flat<float>().data(), xT);
    const float* zeros = xT + g.pixels * C * bp;
    const int32* table = ctx->input(2).flat<int32>().data();
    const float* u = ctx->input(3).flat<float>().data();
    workers(ctx)->ParallelFor(cells, 2 * B * K * F, [&](int64_t c0, int64_t c1) {
      std::vector<float> cell_upstream(B * fp, 0.f);
      std::vector<const float*> rows(round_up(K, kGradNK));
      for (int64_t cell = c0; cell < c1; ++cell) {
        const int32* row = table + cell * g.taps;
        for (int64_t k = 0; k < static_cast<int64_t>(rows.size()); ++k)
          rows[k] = (k < K && row[k / C] >= 0) ? xT + (row[k / C] * C + k % C) * bp : zeros;
        for (int64_t b = 0; b < B; ++b) {
          float* __restrict dst = cell_upstream.data() + b * fp;
          const float* __restrict src = u + (b * cells + cell) * F;
          for (int64_t f = 0; f < F; ++f) dst[f] = src[f];
        }
        for (int64_t f0 = 0; f0 < F; f0 += kGradNV * kLanes) {
          const int64_t nf = std::min<int64_t>(kGradNV * kLanes, F - f0);
          for (int64_t k0 = 0; k0 < K; k0 += kGradNK)
            kKernelGrad[(nf + kLanes - 1) / kLanes - 1](
                rows.data() + k0, cell_upstream.data() + f0, fp, B,
                dw + (cell * K + k0) * F + f0, F, std::min<int64_t>(kGradNK, K - k0), nf);
        }
      }
    });
  }
};

class SwslCellMatmulInputGradOp : public OpKernel {
 public:
  explicit SwslCellMatmulInputGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    Geometry g;
    OP_REQUIRES_OK(ctx, read_geometry(ctx, true, &g));
    Tensor* dx_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(0).shape(), &dx_t));
    float* dx = dx_t->flat<float>().data();
    if (dx_t->NumElements() == 0) return;
    const int64_t B = g.batch, P = g.pixels, C = g.channels, K = g.size, F = g.filters;
    const int64_t cells = g.cells, taps = g.taps, bp = round_up(B, kLanes);
    const int32* table = ctx->input(2).flat<int32>().data();
    // Each pixel's readers, (cell, tap) pairs in the table's order.
    std::vector<int32> start(P + 1, 0), readers(2 * cells * taps);
    for (int64_t i = 0; i < cells * taps; ++i)
      if (table[i] >= 0) ++start[table[i] + 1];
    for (int64_t p = 0; p < P; ++p) start[p + 1] += start[p];
    std::vector<int32> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < cells * taps; ++i)
      if (table[i] >= 0) {
        const int32 at = next[table[i]]++;
        readers[2 * at] = static_cast<int32>(i / taps);
        readers[2 * at + 1] = static_cast<int32>(i % taps);
      }
    Tensor uT_t, dxT_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, {std::max<int64_t>(cells * F * bp, 1)}, &uT_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, {P * C * bp}, &dxT_t));
    float* uT = uT_t.flat<float>().data();
    float* dxT = dxT_t.flat<float>().data();
    const float* u = ctx->input(3).flat<float>().data();
    const float* w = ctx->input(1).flat<float>().data();
    workers(ctx)->ParallelFor(cells, F * bp, [&](int64_t c0, int64_t c1) {
      for (int64_t cell = c0; cell < c1; ++cell)
        for (int64_t f = 0; f < F; ++f) {
          float* dst = uT + (cell * F + f) * bp;
          for (int64_t b = 0; b < B; ++b) dst[b] = u[(b * cells + cell) * F + f];
          std::fill(dst + B, dst + bp, 0.f);
        }
    });
    workers(ctx)->ParallelFor(P, 2 * bp * C * F * taps, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int32* rd = readers.data() + 2 * start[p];
        const int64_t n = start[p + 1] - start[p];
        float* pixel = dxT + p * C * bp;
        for (int64_t c0 = 0; c0 < C; c0 += kBlockNF)
          for (int64_t b0 = 0; b0 < bp; b0 += kBlockNV * kLanes) {
            const int64_t nc = std::min<int64_t>(kBlockNF, C - c0);
            const int64_t nv = std::min<int64_t>(kBlockNV, (bp - b0) / kLanes);
            kInputGrad[nc - 1][nv - 1](rd, n, w, K, F, C, uT, bp, b0, c0, pixel);
          }
        for (int64_t b = 0; b < B; ++b)
          for (int64_t c = 0; c < C; ++c) dx[(b * P + p) * C + c] = pixel[c * bp + b];
      }
    });
  }
};

namespace {

struct MixGeometry {
  int64_t cells, size, filters, centroids;
};

constexpr char kMixShapes[] =
    "SwslMixKernels: coefficients (cells, F, S), weights (K, F, S), upstream (cells, K, F)";

// The mix's forward op reads (coefficients, weights); the coefficients' gradient reads
// (weights, upstream) and the weights' gradient (coefficients, upstream).
enum class MixInputs { kForward, kCoefficientsGrad, kWeightsGrad };

absl::Status read_mix_geometry(OpKernelContext* ctx, MixInputs inputs, MixGeometry* g) {
  const Tensor& x = ctx->input(0);
  const Tensor& y = ctx->input(1);
  if (x.dims() != 3 || y.dims() != 3) return absl::InvalidArgumentError(kMixShapes);
  bool fits = false;
  switch (inputs) {
    case MixInputs::kForward:  // a (cells, F, S), w (K, F, S)
      *g = {x.dim_size(0), y.dim_size(0), y.dim_size(1), y.dim_size(2)};
      fits = x.dim_size(1) == g->filters && x.dim_size(2) == g->centroids;
      break;
    case MixInputs::kCoefficientsGrad:  // w (K, F, S), u (cells, K, F)
      *g = {y.dim_size(0), x.dim_size(0), x.dim_size(1), x.dim_size(2)};
      fits = y.dim_size(1) == g->size && y.dim_size(2) == g->filters;
      break;
    case MixInputs::kWeightsGrad:  // a (cells, F, S), u (cells, K, F)
      *g = {x.dim_size(0), y.dim_size(1), x.dim_size(1), x.dim_size(2)};
      fits = y.dim_size(0) == g->cells && y.dim_size(2) == g->filters;
      break;
  }
  return fits ? absl::OkStatus() : absl::InvalidArgumentError(kMixShapes);
}

// t[s, i, f] = a[i, f, s]: the centroid axis outermost, so the loops over f are unit-stride.
void centroids_first(OpKernelContext* ctx, const float* a, int64_t n, int64_t F, int64_t S,
                     float* t) {
  workers(ctx)->ParallelFor(n, F * S, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t f = 0; f < F; ++f)
        for (int64_t s = 0; s < S; ++s) t[(s * n + i) * F + f] = a[(i * F + f) * S + s];
  });
}

// acc[s, f] += u[f] * t[s, f] for every s: a row of the upstream gradient times the S rows
// of one cell's coefficients or one patch value's weights.
inline void accumulate(const float* __restrict u, const float* __restrict t, int64_t stride,
                       int64_t F, int64_t S, float* __restrict acc) {
  for (int64_t s = 0; s < S; ++s)
    for (int64_t f = 0; f < F; ++f) acc[s * F + f] += u[f] * t[s * stride + f];
}

}  // namespace

class SwslMixKernelsOp : public OpKernel {
 public:
  explicit SwslMixKernelsOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    MixGeometry g;
    OP_REQUIRES_OK(ctx, read_mix_geometry(ctx, MixInputs::kForward, &g));
    const int64_t cells = g.cells, K = g.size, F = g.filters, S = g.centroids;
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {cells, K, F}, &out_t));
    float* out = out_t->flat<float>().data();
    if (out_t->NumElements() == 0) return;
    if (S == 0) {
      std::fill(out, out + out_t->NumElements(), 0.f);
      return;
    }
    Tensor aT_t, wT_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, {S * cells * F}, &aT_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, {S * K * F}, &wT_t));
    float* aT = aT_t.flat<float>().data();
    float* wT = wT_t.flat<float>().data();
    centroids_first(ctx, ctx->input(0).flat<float>().data(), cells, F, S, aT);
    centroids_first(ctx, ctx->input(1).flat<float>().data(), K, F, S, wT);
    workers(ctx)->ParallelFor(cells, 2 * K * F * S, [&](int64_t c0, int64_t c1) {
      for (int64_t cell = c0; cell < c1; ++cell)
        for (int64_t k = 0; k < K; ++k) {
          float* __restrict o = out + (cell * K + k) * F;
          const float* __restrict a = aT + cell * F;
          const float* __restrict w = wT + k * F;
          for (int64_t f = 0; f < F; ++f) o[f] = a[f] * w[f];
          for (int64_t s = 1; s < S; ++s) {
            const float* __restrict as = a + s * cells * F;
            const float* __restrict ws = w + s * K * F;
            for (int64_t f = 0; f < F; ++f) o[f] += as[f] * ws[f];
          }
        }
    });
  }
};

// The gradient of one operand of the mix: for each of its `rows` (cells, or patch values k)
//   grad[row, f, s] = sum over the `terms` of upstream[.., f] * other[term, f, s],
// with the other operand's centroid axis moved first and the terms summed in order.
class SwslMixKernelsGradBase : public OpKernel {
 public:
  explicit SwslMixKernelsGradBase(OpKernelConstruction* c, MixInputs inputs)
      : OpKernel(c), inputs_(inputs) {}

  void Compute(OpKernelContext* ctx) override {
    MixGeometry g;
    OP_REQUIRES_OK(ctx, read_mix_geometry(ctx, inputs_, &g));
    const bool for_coefficients = inputs_ == MixInputs::kCoefficientsGrad;
    const int64_t K = g.size, F = g.filters, S = g.centroids;
    const int64_t rows = for_coefficients ? g.cells : K;
    const int64_t terms = for_coefficients ? K : g.cells;
    Tensor* grad_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {rows, F, S}, &grad_t));
    float* grad = grad_t->flat<float>().data();
    std::fill(grad, grad + grad_t->NumElements(), 0.f);
    if (rows == 0 || terms == 0 || F == 0 || S == 0) return;
    Tensor other_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, {S * terms * F}, &other_t));
    float* other = other_t.flat<float>().data();
    centroids_first(ctx, ctx->input(0).flat<float>().data(), terms, F, S, other);
    const float* u = ctx->input(1).flat<float>().data();
    // upstream row (cell, k) of the output row and the term
    const int64_t row_stride = for_coefficients ? K * F : F;
    const int64_t term_stride = for_coefficients ? F : K * F;
    workers(ctx)->ParallelFor(rows, 2 * terms * F * S, [&](int64_t r0, int64_t r1) {
      std::vector<float> acc(S * F);
      for (int64_t row = r0; row < r1; ++row) {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t term = 0; term < terms; ++term)
          accumulate(u + row * row_stride + term * term_stride, other + term * F, terms * F, F,
                     S, acc.data());
        for (int64_t f = 0; f < F; ++f)
          for (int64_t s = 0; s < S; ++s) grad[(row * F + f) * S + s] = acc[s * F + f];
      }
    });
  }

 private:
  const MixInputs inputs_;
};

class SwslMixKernelsCoefficientsGradOp : public SwslMixKernelsGradBase {
 public:
  explicit SwslMixKernelsCoefficientsGradOp(OpKernelConstruction* c)
      : SwslMixKernelsGradBase(c, MixInputs::kCoefficientsGrad) {}
};

class SwslMixKernelsWeightsGradOp : public SwslMixKernelsGradBase {
 public:
  explicit SwslMixKernelsWeightsGradOp(OpKernelConstruction* c)
      : SwslMixKernelsGradBase(c, MixInputs::kWeightsGrad) {}
};

REGISTER_KERNEL_BUILDER(Name("SwslCellMatmul").Device(DEVICE_CPU), SwslCellMatmulOp);
REGISTER_KERNEL_BUILDER(Name("SwslCellMatmulKernelGrad").Device(DEVICE_CPU),
                        SwslCellMatmulKernelGradOp);
REGISTER_KERNEL_BUILDER(Name("SwslCellMatmulInputGrad").Device(DEVICE_CPU),
                        SwslCellMatmulInputGradOp);
REGISTER_KERNEL_BUILDER(Name("SwslMixKernels").Device(DEVICE_CPU), SwslMixKernelsOp);
REGISTER_KERNEL_BUILDER(Name("SwslMixKernelsCoefficientsGrad").Device(DEVICE_CPU),
                        SwslMixKernelsCoefficientsGradOp);
REGISTER_KERNEL_BUILDER(Name("SwslMixKernelsWeightsGrad").Device(DEVICE_CPU),
                        SwslMixKernelsWeightsGradOp);
