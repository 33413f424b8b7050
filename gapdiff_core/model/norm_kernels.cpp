// The generator's CPU kernels, built by native_kernels.py on first use: per-image normalisation and activations of
// channels-last maps (fp32 or bf16), and the smallest maps' convolutions as fp32 matrix products with bf16 weights.
// Channels are the innermost, contiguous dimension: every loop over them vectorises, and each channel's sums run
// over the pixels in one fixed order, so the results do not depend on the number of threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float load(const float* p, int64_t i) { return p[i]; }

inline float load(const uint16_t* p, int64_t i) {
  const uint32_t bits = uint32_t(p[i]) << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

inline void store(float* p, int64_t i, float v) { p[i] = v; }

// Round to nearest, ties to even; NaN becomes 0x7FC0 (as PyTorch's bf16 conversion).
inline void store(uint16_t* p, int64_t i, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  p[i] = uint16_t((bits & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

// Mean and biased variance of each image and channel over the top-left h x w pixels. The rows are cut into
// blocks of `rows` rows (the caller picks them from the map's width and channels only, so an image's blocks are
// the same alone or in a batch). While a block is in the cache, its mean, then the squared deviations from that
// mean, are summed: in fp32 over runs of `kRun` pixels, the runs in double. The blocks are then merged in order
// (Chan, Golub and LeVeque's pairwise update).
constexpr int64_t kRun = 64;

template <typename T>
void moments(const T* y, int64_t n, int64_t c, int64_t sn, int64_t sh, int64_t sw, int64_t h, int64_t w,
             int64_t rows, float* mean, float* var) {
  const int64_t blocks = (h + rows - 1) / rows;
  std::vector<double> block_mean(n * blocks * c), block_m2(n * blocks * c);
  at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> run(c), shift(c);
    for (int64_t item = begin; item < end; ++item) {
      const T* image = y + (item / blocks) * sn;
      const int64_t r0 = (item % blocks) * rows, r1 = std::min(h, r0 + rows), count = (r1 - r0) * w;
      double* m = block_mean.data() + item * c;
      double* q = block_m2.data() + item * c;
      std::fill(m, m + c, 0.0);
      std::fill(q, q + c, 0.0);
      for (int64_t start = 0; start < count; start += kRun) {  // runs of pixels in row-major order
        std::fill(run.begin(), run.end(), 0.f);
        for (int64_t pixel = start; pixel < std::min(count, start + kRun); ++pixel) {
          const T* p = image + (r0 + pixel / w) * sh + (pixel % w) * sw;
          for (int64_t k = 0; k < c; ++k) run[k] += load(p, k);
        }
        for (int64_t k = 0; k < c; ++k) m[k] += run[k];
      }
      for (int64_t k = 0; k < c; ++k) {
        m[k] /= double(count);
        shift[k] = float(m[k]);
      }
      for (int64_t start = 0; start < count; start += kRun) {
        std::fill(run.begin(), run.end(), 0.f);
        for (int64_t pixel = start; pixel < std::min(count, start + kRun); ++pixel) {
          const T* p = image + (r0 + pixel / w) * sh + (pixel % w) * sw;
          for (int64_t k = 0; k < c; ++k) {
            const float d = load(p, k) - shift[k];
            run[k] += d * d;
          }
        }
        for (int64_t k = 0; k < c; ++k) q[k] += run[k];
      }
      // q holds the squared deviations from the fp32-rounded mean: remove what that rounding added
      for (int64_t k = 0; k < c; ++k) q[k] -= double(count) * (m[k] - shift[k]) * (m[k] - shift[k]);
    }
  });
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < c; ++k) {
      double total = 0, mu = 0, m2 = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        const double count = double((std::min(h, (b + 1) * rows) - b * rows) * w);
        const int64_t at = (i * blocks + b) * c + k;
        const double delta = block_mean[at] - mu, merged = total + count;
        mu += delta * count / merged;
        m2 += block_m2[at] + delta * delta * total * count / merged;
        total = merged;
      }
      mean[i * c + k] = float(mu);
      var[i * c + k] = float(m2 / total);
    }
}

enum Act { kNone = 0, kRelu = 1, kLeakyRelu = 2, kSelu = 3 };

// (exp(x) - 1) / x from its Taylor series to x^6, in Horner form (error below 1e-8 for |x| <= 0.35).
inline float expm1_over_x(float x) {
  float q = 1.f / 5040;
  q = q * x + 1.f / 720;
  q = q * x + 1.f / 120;
  q = q * x + 1.f / 24;
  q = q * x + 1.f / 6;
  q = q * x + 0.5f;
  return q * x + 1.f;
}

// exp(x) - 1 for x <= 0, within a few fp32 ulps of 1 (and of x near 0, from the series itself: no cancellation):
// branch-free, so the loops calling it vectorise (glibc's vector expm1f needs -ffast-math, which would also let
// the compiler drop NaN checks).
inline float expm1_negative(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);  // x = n ln 2 + r, |r| <= ln 2 / 2
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  const uint32_t bits = uint32_t(int32_t(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, 4);
  return x > -0.35f ? x * expm1_over_x(x) : (1.f + r * expm1_over_x(r)) * two_n - 1.f;
}

// out = act(y * scale + shift) (Affine) or act(y), scale and shift per image and channel (fp32), computed in fp32
// for every pixel. `out` may be `y` (in place) or a channel slice of a wider map (its own strides).
template <typename T, int A, bool Affine>
void affine(const T* y, T* out, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn, int64_t sh, int64_t sw,
            int64_t on, int64_t oh, int64_t ow, const float* scale, const float* shift) {
  at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row / h, r = row % h;
      const float* a = scale + i * c;
      const float* b = shift + i * c;
      for (int64_t x = 0; x < w; ++x) {
        const T* p = y + i * sn + r * sh + x * sw;
        T* o = out + i * on + r * oh + x * ow;
        for (int64_t k = 0; k < c; ++k) {
          float v = load(p, k);
          if (Affine) v = v * a[k] + b[k];
          if (A == kRelu) v = v > 0.f ? v : 0.f;
          if (A == kLeakyRelu) v = v > 0.f ? v : v * 0.2f;
          if (A == kSelu) v = v > 0.f ? v * 1.0507009873554805f : expm1_negative(v) * 1.7580993408473766f;
          store(o, k, v);
        }
      }
    }
  });
}

template <typename T, bool Affine>
void affine_act(const T* y, T* out, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn, int64_t sh,
                int64_t sw, int64_t on, int64_t oh, int64_t ow, const float* scale, const float* shift, int act) {
  if (act == kRelu)
    affine<T, kRelu, Affine>(y, out, n, c, h, w, sn, sh, sw, on, oh, ow, scale, shift);
  else if (act == kLeakyRelu)
    affine<T, kLeakyRelu, Affine>(y, out, n, c, h, w, sn, sh, sw, on, oh, ow, scale, shift);
  else if (act == kSelu)
    affine<T, kSelu, Affine>(y, out, n, c, h, w, sn, sh, sw, on, oh, ow, scale, shift);
  else
    affine<T, kNone, Affine>(y, out, n, c, h, w, sn, sh, sw, on, oh, ow, scale, shift);
}

// Per-image batch normalisation of y (statistics over its top-left vh x vw pixels) and the activation, into out;
// the statistics are returned in mean and var (n x c), the affine map computed from them as the batch-norm
// kernel does (in fp32: invstd = 1 / sqrt(var + eps), scale = invstd gamma, shift = beta - mean scale).
template <typename T>
void normalise(const T* y, T* out, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn, int64_t sh, int64_t sw,
               int64_t on, int64_t oh, int64_t ow, int64_t vh, int64_t vw, int64_t rows, const float* gamma,
               const float* beta, float eps, int act, float* mean, float* var) {
  moments(y, n, c, sn, sh, sw, vh, vw, rows, mean, var);
  std::vector<float> scale(n * c), shift(n * c);
  for (int64_t i = 0; i < n * c; ++i) {
    const float invstd = 1.f / std::sqrt(var[i] + eps);
    scale[i] = invstd * gamma[i % c];
    shift[i] = beta[i % c] - mean[i] * scale[i];
  }
  affine_act<T, true>(y, out, n, c, h, w, sn, sh, sw, on, oh, ow, scale.data(), shift.data(), act);
}

// The columns of a convolution (kernel x kernel, stride, padding 1, zero or reflect) of a channels-last map x,
// in fp32: one row per output pixel (image, row, column), one column per (tap row, tap column, channel).
template <typename T>
void im2col(const T* x, float* cols, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn, int64_t sh,
            int64_t sw, int64_t kernel, int64_t stride, bool reflect) {
  const int64_t oh = (h + 2 - kernel) / stride + 1, ow = (w + 2 - kernel) / stride + 1;
  at::parallel_for(0, n * oh * ow, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t i = pixel / (oh * ow), r = pixel / ow % oh, q = pixel % ow;
      float* row = cols + pixel * kernel * kernel * c;
      for (int64_t ky = 0; ky < kernel; ++ky)
        for (int64_t kx = 0; kx < kernel; ++kx) {
          int64_t sy = r * stride + ky - 1, sx = q * stride + kx - 1;
          float* o = row + (ky * kernel + kx) * c;
          if (reflect) {
            sy = sy < 0 ? -sy : sy >= h ? 2 * h - 2 - sy : sy;
            sx = sx < 0 ? -sx : sx >= w ? 2 * w - 2 - sx : sx;
          } else if (sy < 0 || sy >= h || sx < 0 || sx >= w) {
            std::fill(o, o + c, 0.f);
            continue;
          }
          const T* p = x + i * sn + sy * sh + sx * sw;
          for (int64_t k = 0; k < c; ++k) o[k] = load(p, k);
        }
    }
  });
}

// 16 lanes of fp32 (GCC vector extensions: one AVX-512 register, two AVX2 ones), loaded from fp32 or bf16.
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, 64);
  return v;
}

inline f32x16 load16(const uint16_t* p) {
  u16x16 half;
  std::memcpy(&half, p, 32);
  const u32x16 bits = __builtin_convertvector(half, u32x16) << 16;
  f32x16 v;
  std::memcpy(&v, &bits, 64);
  return v;
}

// y = x w^T + bias with x (m x k) and y (m x n) in fp32 and w (n x k) in bf16, accumulated in fp32: the
// convolutions on the generator's smallest maps, whose activations stay in fp32 (im2col'ed by the caller). On
// those maps the convolutions are matrix-vector products bound by reading the weights, which bf16 halves.
// Blocks of 4 rows of x by 4 rows of w, 16 lanes along k (the lanes are added in order at the end): m and n are
// multiples of 4 and k of 16.
void linear_bf16_weights(const float* x, const uint16_t* w, const float* bias, float* y, int64_t m, int64_t n,
                         int64_t k) {
  at::parallel_for(0, n / 4, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb)
      for (int64_t mb = 0; mb < m / 4; ++mb) {
        f32x16 acc[4][4] = {};
        const float* xs = x + mb * 4 * k;
        const uint16_t* ws = w + nb * 4 * k;
        for (int64_t k0 = 0; k0 < k; k0 += 16) {
          const f32x16 w0 = load16(ws + k0), w1 = load16(ws + k + k0), w2 = load16(ws + 2 * k + k0),
                       w3 = load16(ws + 3 * k + k0);
          for (int i = 0; i < 4; ++i) {
            const f32x16 xv = load16(xs + i * k + k0);
            acc[i][0] += xv * w0;
            acc[i][1] += xv * w1;
            acc[i][2] += xv * w2;
            acc[i][3] += xv * w3;
          }
        }
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) {
            float sum = bias[nb * 4 + j];
            for (int l = 0; l < 16; ++l) sum += acc[i][j][l];
            y[(mb * 4 + i) * n + nb * 4 + j] = sum;
          }
      }
  });
}

}  // namespace

extern "C" {

// dtype: 0 fp32, 1 bf16. Strides are in elements; the channel stride is 1.
void gapdiff_normalise(const void* y, void* out, int dtype, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn,
                       int64_t sh, int64_t sw, int64_t on, int64_t oh, int64_t ow, int64_t vh, int64_t vw,
                       int64_t rows, const float* gamma, const float* beta, float eps, int act, float* mean,
                       float* var) {
  if (dtype == 1)
    normalise(static_cast<const uint16_t*>(y), static_cast<uint16_t*>(out), n, c, h, w, sn, sh, sw, on, oh, ow, vh,
              vw, rows, gamma, beta, eps, act, mean, var);
  else
    normalise(static_cast<const float*>(y), static_cast<float*>(out), n, c, h, w, sn, sh, sw, on, oh, ow, vh, vw,
              rows, gamma, beta, eps, act, mean, var);
}

void gapdiff_activate(const void* y, void* out, int dtype, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn,
                      int64_t sh, int64_t sw, int64_t on, int64_t oh, int64_t ow, int act) {
  if (dtype == 1)
    affine_act<uint16_t, false>(static_cast<const uint16_t*>(y), static_cast<uint16_t*>(out), n, c, h, w, sn, sh,
                                sw, on, oh, ow, nullptr, nullptr, act);
  else
    affine_act<float, false>(static_cast<const float*>(y), static_cast<float*>(out), n, c, h, w, sn, sh, sw, on, oh,
                             ow, nullptr, nullptr, act);
}

void gapdiff_im2col(const void* x, float* cols, int dtype, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn,
                    int64_t sh, int64_t sw, int64_t kernel, int64_t stride, int reflect) {
  if (dtype == 1)
    im2col(static_cast<const uint16_t*>(x), cols, n, c, h, w, sn, sh, sw, kernel, stride, reflect != 0);
  else
    im2col(static_cast<const float*>(x), cols, n, c, h, w, sn, sh, sw, kernel, stride, reflect != 0);
}

void gapdiff_linear_bf16_weights(const float* x, const void* w, const float* bias, float* y, int64_t m, int64_t n,
                                 int64_t k) {
  linear_bf16_weights(x, static_cast<const uint16_t*>(w), bias, y, m, n, k);
}

}  // extern "C"
