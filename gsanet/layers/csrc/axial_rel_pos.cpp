// Fused CPU kernel of one axial positional attention layer (GSA, Shen et al., arXiv 2010.03019):
//
//     out[c, x] = sum_x' W[x, x'] v[c, x'],    W[x, x'] = sum_d q[d, x] r[d, x' - x + S - 1]
//
// per (image, head, line), without a softmax. The Python side (gsanet/layers/axial_kernel.py) documents the
// shapes and holds the autograd function; gsanet/layers/gsa.py has the plain batched-GEMM path it must agree with.
//
// Why a kernel: with 8 channels per head the GEMMs of the batched path are 8 wide and run far from the CPU's
// peak, and they write and re-read every weight W[x, x'] through memory. Here each vector lane carries one line:
// a work item is V lines of one head (V floats fill one register of the build's instruction set: 16 for AVX-512,
// 8 for AVX2, 4 for the portable build; lines of all images, so small maps fill the lanes), copied into contiguous
// scratch X[c][x][lane]. For each query position x the weights row W[x, :] is
// computed with q[:, x] in registers and the embeddings broadcast, then applied at once, from registers and L1;
// nothing of size S^2 per line reaches memory. No arithmetic crosses lanes, so every load is a whole aligned
// vector. Work items run in parallel (at::parallel_for); the gradient of the shared embedding rows is summed per
// lane within each chunk of items, then over chunks and lanes.
//
// Per work item, every index per lane (r[d][j]: embedding channel d of offset j - (S-1)):
//   forward   W[x, x'] = sum_d q[d][x] r[d][x'-x+S-1] (one row at a time),  out[c][x] = sum_x' W[x, x'] v[c][x']
//   backward  W recomputed and dW[x, x'] = sum_c g[c][x] v[c][x'], both for all (x, x') of the item (in L2);
//             grad q[d][x] = sum_x' dW[x, x'] r[d][x'-x+S-1],  grad v[c][x'] = sum_x W[x, x'] g[c][x],
//             grad r[d][j] += sum_x q[d][x] dW[x, x+j-S+1] (a diagonal of dW)
// The embeddings are laid out offset-major, rt[j][d], so the channels of one offset are adjacent scalars.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <type_traits>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <vector>

// One build per instruction set (gsanet/layers/axial_kernel.py passes these): the vector width in bytes (64 for
// AVX-512, 32 for AVX2, 16 for the portable build) and the operator namespace, so that several builds can be loaded
// side by side (the tests check each one the CPU can execute).
#ifndef GSANET_VECTOR_BYTES
#define GSANET_VECTOR_BYTES 64
#endif
#ifndef GSANET_OPS_NAMESPACE
#define GSANET_OPS_NAMESPACE gsanet_axial
#endif

namespace {

constexpr int kVectorBytes = GSANET_VECTOR_BYTES;  // one register of lanes: every vector below is one register

template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVectorBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
constexpr int lanes() {
  return kVectorBytes / static_cast<int>(sizeof(T));
}

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// A (B, h, C, L, S) tensor with any strides, of storage type X (float, double, or bfloat16/half, which the kernel
// widens to float in its scratch and rounds back on output).
template <typename X>
struct Strided {
  X* data;
  int64_t sb, sh, sc, sl, ss;
  explicit Strided(const at::Tensor& t)
      : data(t.data_ptr<X>()), sb(t.stride(0)), sh(t.stride(1)), sc(t.stride(2)), sl(t.stride(3)), ss(t.stride(4)) {}
  X* line(int64_t b, int64_t h, int64_t l) const { return data + b * sb + h * sh + l * sl; }
};

// The V lines of one work item: lines n0 .. n0 + V - 1 of one head, line n being (image n / L, line n % L).
// Lanes past the last line are padding (zero on input, dropped on output).
template <typename X, int V>
struct Lanes {
  X* ptr[V];  // first element of each lane's line, nullptr for padding
  int count;
  int run;  // lanes 0 .. run-1 are adjacent in memory (ptr[i] = ptr[0] + i)
  Lanes(const Strided<X>& t, int64_t hh, int64_t n0, int64_t n_lines, int64_t L) {
    count = static_cast<int>(std::min<int64_t>(V, n_lines - n0));
    for (int i = 0; i < V; ++i) {
      const int64_t n = n0 + i;
      ptr[i] = i < count ? t.line(n / L, hh, n % L) : nullptr;
    }
    run = 1;
    while (run < count && ptr[run] == ptr[0] + run) ++run;
  }
};

#if defined(__AVX512F__) && GSANET_VECTOR_BYTES == 64
#define GSANET_REGISTER_TRANSPOSE 1
// AVX-512: 16 float lanes per register; tails by mask registers.
using Reg = __m512;
using Mask = __mmask16;
inline Mask tail_mask(int n) { return static_cast<__mmask16>((1u << n) - 1); }
inline Reg reg_zero() { return _mm512_setzero_ps(); }
inline Reg reg_load(const float* p) { return _mm512_loadu_ps(p); }
inline void reg_store(float* p, Reg v) { _mm512_storeu_ps(p, v); }

// r[i][k] -> r[k][i] for a 16 x 16 block of floats in 16 registers.
inline void transpose(Reg r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 16; i += 8)
    for (int k = 0; k < 4; ++k) {
      t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0x88);
      t[i + k + 4] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0xDD);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
    r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xDD);
  }
}

// n consecutive values of storage type X (the rest zero) as floats, and back. bfloat16 widens exactly (a 16-bit
// shift) and rounds to nearest even on the way back.
inline Reg load_tail(const float* p, Mask mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline void store_tail(float* p, Mask mask, Reg v) { _mm512_mask_storeu_ps(p, mask, v); }
#if defined(__AVX512BW__) && defined(__AVX512BF16__)
constexpr bool kTransposeBFloat16 = true;
inline Reg load_tail(const c10::BFloat16* p, Mask mask) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline void store_tail(c10::BFloat16* p, Mask mask, Reg v) {
  _mm256_mask_storeu_epi16(p, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}
#else
constexpr bool kTransposeBFloat16 = false;
#endif

#elif defined(__AVX2__) && GSANET_VECTOR_BYTES == 32
#define GSANET_REGISTER_TRANSPOSE 1
// AVX2: 8 float lanes per register; tails by sign-bit masks (vmaskmovps).
using Reg = __m256;
using Mask = __m256i;
inline Mask tail_mask(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline Reg reg_zero() { return _mm256_setzero_ps(); }
inline Reg reg_load(const float* p) { return _mm256_loadu_ps(p); }
inline void reg_store(float* p, Reg v) { _mm256_storeu_ps(p, v); }

// r[i][k] -> r[k][i] for an 8 x 8 block of floats in 8 registers.
inline void transpose(Reg r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // u[i + k]: column k (low half) and k + 4 (high half) of rows i .. i + 3
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
    r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
  }
}

inline Reg load_tail(const float* p, Mask mask) { return _mm256_maskload_ps(p, mask); }
inline void store_tail(float* p, Mask mask, Reg v) { _mm256_maskstore_ps(p, mask, v); }
constexpr bool kTransposeBFloat16 = false;  // AVX2 has no bfloat16 conversions: the scalar copies serve it
#endif

#if defined(GSANET_REGISTER_TRANSPOSE)
constexpr int kT = kVectorBytes / static_cast<int>(sizeof(float));  // lanes = positions per transposed block

// Row pass (positions contiguous): kT x kT blocks of (lane, position) transposed in registers.
template <typename X>
void gather_transposed(const Lanes<X, kT>& lanes_of, int64_t sc, int64_t C, int64_t S, float* dst) {
  Reg r[kT];
  for (int64_t c = 0; c < C; ++c)
    for (int64_t x0 = 0; x0 < S; x0 += kT) {
      const int n = static_cast<int>(std::min<int64_t>(kT, S - x0));
      const Mask mask = tail_mask(n);
      for (int i = 0; i < kT; ++i)
        r[i] = i < lanes_of.count ? load_tail(lanes_of.ptr[i] + c * sc + x0, mask) : reg_zero();
      transpose(r);
      for (int k = 0; k < n; ++k) reg_store(dst + (c * S + x0 + k) * kT, r[k]);
    }
}

template <typename X>
void scatter_transposed(const float* src, int64_t C, int64_t S, int64_t sc, const Lanes<X, kT>& lanes_of) {
  Reg r[kT];
  for (int64_t c = 0; c < C; ++c)
    for (int64_t x0 = 0; x0 < S; x0 += kT) {
      const int n = static_cast<int>(std::min<int64_t>(kT, S - x0));
      const Mask mask = tail_mask(n);
      for (int k = 0; k < kT; ++k) r[k] = k < n ? reg_load(src + (c * S + x0 + k) * kT) : reg_zero();
      transpose(r);
      for (int i = 0; i < lanes_of.count; ++i) store_tail(lanes_of.ptr[i] + c * sc + x0, mask, r[i]);
    }
}

// Whether the register-transpose path serves storage X with arithmetic T: float, and bfloat16 where the CPU converts.
template <typename X, typename T>
constexpr bool kTransposes =
    std::is_same_v<T, float> && (std::is_same_v<X, float> || (std::is_same_v<X, c10::BFloat16> && kTransposeBFloat16));
#endif

// Scratch X[c][x] (one vector of lanes each) at X + (c * S + x) * V, from / to the strided tensor. Lanes innermost
// when lanes are adjacent in memory (the column pass); for the row pass (positions contiguous) a register transpose
// on AVX-512 and AVX2, else each lane's line read in order.
template <typename X, typename T>
void gather(const Strided<X>& t, const Lanes<X, lanes<T>()>& lanes_of, int64_t C, int64_t S, T* dst) {
  constexpr int V = lanes<T>();
#if defined(GSANET_REGISTER_TRANSPOSE)
  if constexpr (kTransposes<X, T>) {
    if (t.ss == 1) return gather_transposed(lanes_of, t.sc, C, S, dst);
  }
#endif
  if (lanes_of.count < V) std::fill(dst, dst + C * S * V, T(0));
  if (t.ss != 1) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = 0; x < S; ++x) {
        T* d = dst + (c * S + x) * V;
        const int64_t off = c * t.sc + x * t.ss;
        int i = 0;
        for (; i < lanes_of.run; ++i) d[i] = static_cast<T>(lanes_of.ptr[0][off + i]);
        for (; i < lanes_of.count; ++i) d[i] = static_cast<T>(lanes_of.ptr[i][off]);
      }
    return;
  }
  for (int i = 0; i < lanes_of.count; ++i)
    for (int64_t c = 0; c < C; ++c) {
      const X* s = lanes_of.ptr[i] + c * t.sc;
      T* d = dst + c * S * V + i;
      for (int64_t x = 0; x < S; ++x) d[x * V] = static_cast<T>(s[x]);
    }
}

template <typename T, typename X>
void scatter(const T* src, int64_t C, int64_t S, const Strided<X>& t, const Lanes<X, lanes<T>()>& lanes_of) {
  constexpr int V = lanes<T>();
#if defined(GSANET_REGISTER_TRANSPOSE)
  if constexpr (kTransposes<X, T>) {
    if (t.ss == 1) return scatter_transposed(src, C, S, t.sc, lanes_of);
  }
#endif
  if (t.ss != 1) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = 0; x < S; ++x) {
        const T* s = src + (c * S + x) * V;
        const int64_t off = c * t.sc + x * t.ss;
        int i = 0;
        for (; i < lanes_of.run; ++i) lanes_of.ptr[0][off + i] = static_cast<X>(s[i]);
        for (; i < lanes_of.count; ++i) lanes_of.ptr[i][off] = static_cast<X>(s[i]);
      }
    return;
  }
  for (int i = 0; i < lanes_of.count; ++i)
    for (int64_t c = 0; c < C; ++c) {
      X* d = lanes_of.ptr[i] + c * t.sc;
      const T* s = src + c * S * V + i;
      for (int64_t x = 0; x < S; ++x) d[x] = static_cast<X>(s[x * V]);
    }
}

// w[x'] (= or +=) sum_{d in CB} q[d][x] * rt[(x' - x + S - 1) * dk + d], x' < S: one row of the weights, the
// queries of position x in registers, the embeddings broadcast. q points at q[d0][x], rt at rt[d0].
template <typename T, int CB>
void weight_row(const T* q, int64_t S, const T* rt, int64_t dk, int64_t x, bool accumulate, T* w) {
  constexpr int V = lanes<T>();
  Vec<T> qr[CB];
  for (int cc = 0; cc < CB; ++cc) qr[cc] = load(q + cc * S * V);
  for (int64_t xp = 0; xp < S; ++xp) {
    const T* rj = rt + (xp - x + S - 1) * dk;
    Vec<T> acc = accumulate ? load(w + xp * V) : Vec<T>{};
    for (int cc = 0; cc < CB; ++cc) acc += qr[cc] * rj[cc];
    store(w + xp * V, acc);
  }
}

// w[x'] (= or +=) sum_{c in CB} g[c][x] * v[c][x'], x' < S (g in registers). g points at g[c0][x], v at v[c0][0].
template <typename T, int CB>
void product_row(const T* g, const T* v, int64_t S, bool accumulate, T* w) {
  constexpr int V = lanes<T>();
  Vec<T> gr[CB];
  for (int cc = 0; cc < CB; ++cc) gr[cc] = load(g + cc * S * V);
  for (int64_t xp = 0; xp < S; ++xp) {
    Vec<T> acc = accumulate ? load(w + xp * V) : Vec<T>{};
    for (int cc = 0; cc < CB; ++cc) acc += gr[cc] * load(v + (cc * S + xp) * V);
    store(w + xp * V, acc);
  }
}

// out[c] (= or +=) sum_{k<n} w[k * ws] * a[c][k] for CB channels (a points at a[c0][0], rows of S vectors); out[c]
// at out + c * os.
template <typename T, int CB, bool ACCUMULATE = false>
void apply(const T* w, int64_t ws, const T* a, int64_t S, int64_t n, T* out, int64_t os) {
  constexpr int V = lanes<T>();
  Vec<T> acc[CB] = {};
  for (int64_t k = 0; k < n; ++k) {
    const Vec<T> wk = load(w + k * ws);
    for (int cc = 0; cc < CB; ++cc) acc[cc] += wk * load(a + (cc * S + k) * V);
  }
  for (int cc = 0; cc < CB; ++cc) store(out + cc * os, ACCUMULATE ? load(out + cc * os) + acc[cc] : acc[cc]);
}

// out[d] = sum_{x'<S} w[x'] * rt[(x' - x + S - 1) * dk + d] for CB rows d (rt points at rt[d0]); out[d] at
// out + d * os.
template <typename T, int CB>
void apply_table(const T* w, int64_t S, const T* rt, int64_t dk, int64_t x, T* out, int64_t os) {
  constexpr int V = lanes<T>();
  Vec<T> acc[CB] = {};
  for (int64_t xp = 0; xp < S; ++xp) {
    const Vec<T> wk = load(w + xp * V);
    const T* rj = rt + (xp - x + S - 1) * dk;
    for (int cc = 0; cc < CB; ++cc) acc[cc] += wk * rj[cc];
  }
  for (int cc = 0; cc < CB; ++cc) store(out + cc * os, acc[cc]);
}

// Calls f.template operator()<CB>(c0) over 0..C in chunks of 8, 4, 2 and 1, so accumulators stay in registers.
template <typename F>
void in_chunks(int64_t C, F&& f) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) f.template operator()<8>(c);
  for (; c + 4 <= C; c += 4) f.template operator()<4>(c);
  for (; c + 2 <= C; c += 2) f.template operator()<2>(c);
  for (; c < C; ++c) f.template operator()<1>(c);
}

// rt[j * dk + d] = rows[h][d][j]: each head's embeddings with the channels of one offset side by side.
template <typename X, typename T>
std::vector<T> offset_major(const at::Tensor& rows) {
  const int64_t h = rows.size(0), dk = rows.size(1), J = rows.size(2);
  std::vector<T> rt(h * J * dk);
  auto r = rows.accessor<X, 3>();
  for (int64_t hh = 0; hh < h; ++hh)
    for (int64_t d = 0; d < dk; ++d)
      for (int64_t j = 0; j < J; ++j) rt[(hh * J + j) * dk + d] = static_cast<T>(r[hh][d][j]);
  return rt;
}

// Work items: (head, group of V lines); lines of all images of a head are grouped so small maps fill the lanes.
struct Items {
  int64_t n_lines, groups;
  Items(int64_t B, int64_t L, int V) : n_lines(B * L), groups((B * L + V - 1) / V) {}
};

// vs[c][x] = scale[c] * vs[c][x] + shift[c] for the dv channels of one head's gathered values (every lane; lanes
// beyond the group's lines are never written back).
template <typename T>
void affine(T* vs, int64_t dv, int64_t S, const float* scale, const float* shift) {
  constexpr int V = lanes<T>();
  for (int64_t c = 0; c < dv; ++c) {
    const T a = static_cast<T>(scale[c]), b = static_cast<T>(shift[c]);
    for (int64_t x = 0; x < S; ++x) store(vs + (c * S + x) * V, load(vs + (c * S + x) * V) * a + b);
  }
}

// X: the tensors' storage type; T: the arithmetic's (float for bfloat16/half). scale/shift: null, or h * dv floats
// applied to the values as they are loaded (an inference batch norm folded into the pass).
template <typename X, typename T>
void forward_impl(const at::Tensor& q_t, const at::Tensor& v_t, const at::Tensor& rows, const at::Tensor& out_t,
                  const float* scale, const float* shift) {
  constexpr int V = lanes<T>();
  const int64_t B = q_t.size(0), h = q_t.size(1), dk = q_t.size(2), L = q_t.size(3), S = q_t.size(4);
  const int64_t dv = v_t.size(2), J = 2 * S - 1;
  const std::vector<T> rt = offset_major<X, T>(rows);
  const Strided<X> q(q_t), v(v_t), out(out_t);
  const Items items(B, L, V);
  at::parallel_for(0, h * items.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qs(dk * S * V), vs(dv * S * V), os(dv * S * V), w(S * V);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hh = item / items.groups, n0 = item % items.groups * V;
      const Lanes<X, V> q_lanes(q, hh, n0, items.n_lines, L), v_lanes(v, hh, n0, items.n_lines, L);
      gather(q, q_lanes, dk, S, qs.data());
      gather(v, v_lanes, dv, S, vs.data());
      if (scale != nullptr) affine(vs.data(), dv, S, scale + hh * dv, shift + hh * dv);
      const T* rth = rt.data() + hh * J * dk;
      for (int64_t x = 0; x < S; ++x) {
        in_chunks(dk, [&]<int CB>(int64_t d0) {  // w[x'] = W[x, x']
          weight_row<T, CB>(qs.data() + (d0 * S + x) * V, S, rth + d0, dk, x, d0 > 0, w.data());
        });
        in_chunks(dv, [&]<int CB>(int64_t c0) {  // out[c][x] = sum_x' W[x, x'] v[c][x']
          apply<T, CB>(w.data(), V, vs.data() + c0 * S * V, S, S, os.data() + (c0 * S + x) * V, S * V);
        });
      }
      scatter(os.data(), dv, S, out, Lanes<X, V>(out, hh, n0, items.n_lines, L));
    }
  });
}

template <typename X, typename T>
at::Tensor backward_impl(const at::Tensor& q_t, const at::Tensor& v_t, const at::Tensor& rows, const at::Tensor& g_t,
                         const at::Tensor& gq_t, const at::Tensor& gv_t) {
  constexpr int V = lanes<T>();
  const int64_t B = q_t.size(0), h = q_t.size(1), dk = q_t.size(2), L = q_t.size(3), S = q_t.size(4);
  const int64_t dv = v_t.size(2), J = 2 * S - 1;
  const std::vector<T> rt = offset_major<X, T>(rows);
  const Strided<X> q(q_t), v(v_t), g(g_t), gq(gq_t), gv(gv_t);
  const Items items(B, L, V);
  // the embedding gradient summed over lines, still per lane: [head][j][d][lane]; each chunk of work items sums
  // into its own buffer, added here under a lock at its end (no dependence on thread numbering)
  std::vector<T> gr_sum(h * J * dk * V, T(0));
  std::mutex gr_lock;
  at::parallel_for(0, h * items.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qs(dk * S * V), vs(dv * S * V), gs(dv * S * V), gqs(dk * S * V), gvs(dv * S * V);
    std::vector<T> w(S * S * V), dw(S * S * V);  // W[x][x'] and dW[x][x'] of the item's lines
    std::vector<T> gr_chunk(h * J * dk * V, T(0));
    T* gr_thread = gr_chunk.data();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hh = item / items.groups, n0 = item % items.groups * V;
      const Lanes<X, V> q_lanes(q, hh, n0, items.n_lines, L), v_lanes(v, hh, n0, items.n_lines, L);
      gather(q, q_lanes, dk, S, qs.data());
      gather(v, v_lanes, dv, S, vs.data());
      gather(g, Lanes<X, V>(g, hh, n0, items.n_lines, L), dv, S, gs.data());
      const T* rth = rt.data() + hh * J * dk;
      for (int64_t x = 0; x < S; ++x) {
        in_chunks(dk, [&]<int CB>(int64_t d0) {  // W[x, x'] recomputed
          weight_row<T, CB>(qs.data() + (d0 * S + x) * V, S, rth + d0, dk, x, d0 > 0, w.data() + x * S * V);
        });
        in_chunks(dv, [&]<int CB>(int64_t c0) {  // dW[x, x'] = sum_c g[c][x] v[c][x']
          product_row<T, CB>(gs.data() + (c0 * S + x) * V, vs.data() + c0 * S * V, S, c0 > 0, dw.data() + x * S * V);
        });
        in_chunks(dk, [&]<int CB>(int64_t d0) {  // grad q[d][x] = sum_x' dW[x, x'] r[d][x' - x + S - 1]
          apply_table<T, CB>(dw.data() + x * S * V, S, rth + d0, dk, x, gqs.data() + (d0 * S + x) * V, S * V);
        });
      }
      for (int64_t xp = 0; xp < S; ++xp)
        in_chunks(dv, [&]<int CB>(int64_t c0) {  // grad v[c][x'] = sum_x W[x, x'] g[c][x]
          apply<T, CB>(w.data() + xp * V, S * V, gs.data() + c0 * S * V, S, S, gvs.data() + (c0 * S + xp) * V, S * V);
        });
      for (int64_t j = 0; j < J; ++j) {  // grad r[d][j] += sum_x q[d][x] dW[x, x + j - S + 1], per lane
        const int64_t lo = std::max<int64_t>(0, S - 1 - j), hi = std::min<int64_t>(S, J - j);
        const T* diag = dw.data() + (lo * S + lo + j - S + 1) * V;  // dW[lo, lo + j - S + 1], next at + (S + 1) V
        T* grj = gr_thread + (hh * J + j) * dk * V;
        in_chunks(dk, [&]<int CB>(int64_t d0) {
          apply<T, CB, true>(diag, (S + 1) * V, qs.data() + (d0 * S + lo) * V, S, hi - lo, grj + d0 * V, V);
        });
      }
      scatter(gqs.data(), dk, S, gq, Lanes<X, V>(gq, hh, n0, items.n_lines, L));
      scatter(gvs.data(), dv, S, gv, Lanes<X, V>(gv, hh, n0, items.n_lines, L));
    }
    const std::lock_guard<std::mutex> guard(gr_lock);
    for (size_t i = 0; i < gr_sum.size(); ++i) gr_sum[i] += gr_chunk[i];
  });
  // the sum over lanes, in T (float for bfloat16/half: the caller rounds it once)
  at::Tensor grad_rows = at::empty({h, dk, J}, rows.options().dtype(c10::CppTypeToScalarType<T>::value));
  auto gr = grad_rows.accessor<T, 3>();
  for (int64_t hh = 0; hh < h; ++hh)
    for (int64_t j = 0; j < J; ++j)
      for (int64_t d = 0; d < dk; ++d) {
        const Vec<T> sum = load(gr_sum.data() + ((hh * J + j) * dk + d) * V);
        T total = 0;
        for (int i = 0; i < V; ++i) total += sum[i];
        gr[hh][d][j] = total;
      }
  return grad_rows;
}

void check(const at::Tensor& q, const at::Tensor& v, const at::Tensor& rows) {
  TORCH_CHECK(q.device().is_cpu() && v.device().is_cpu() && rows.device().is_cpu(), "axial_rel_pos: CPU tensors only");
  TORCH_CHECK(q.dim() == 5 && v.dim() == 5 && rows.dim() == 3, "axial_rel_pos: q, v (B, h, C, L, S), rows (h, dk, 2S-1)");
  TORCH_CHECK(q.scalar_type() == v.scalar_type() && q.scalar_type() == rows.scalar_type(),
              "axial_rel_pos: q, v and rows must share a dtype");
  const int64_t S = q.size(4);
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(3) == q.size(3) && v.size(4) == S,
              "axial_rel_pos: q and v disagree in (B, h, L, S)");
  TORCH_CHECK(rows.size(0) == q.size(1) && rows.size(1) == q.size(2) && rows.size(2) == 2 * S - 1,
              "axial_rel_pos: rows must be (h, dk, 2S-1)");
}

void check_like(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.sizes() == like.sizes() && t.scalar_type() == like.scalar_type() && t.device().is_cpu(),
              "axial_rel_pos: ", name, " must match its input in shape and dtype");
}

void axial_forward(const at::Tensor& q, const at::Tensor& v, const at::Tensor& rows, const at::Tensor& out,
                   const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  check(q, v, rows);
  check_like(out, v, "out");
  TORCH_CHECK(scale.has_value() == shift.has_value(), "axial_rel_pos: scale and shift come together");
  at::Tensor scale_c, shift_c;
  if (scale.has_value()) {
    const int64_t n = q.size(1) * v.size(2);
    for (const auto* t : {&*scale, &*shift})
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == n && t->device().is_cpu(),
                  "axial_rel_pos: scale and shift must be float32 CPU tensors of h * dv = ", n, " values");
    scale_c = scale->contiguous();
    shift_c = shift->contiguous();
  }
  const float* a = scale_c.defined() ? scale_c.data_ptr<float>() : nullptr;
  const float* b = shift_c.defined() ? shift_c.data_ptr<float>() : nullptr;
  const auto rows_c = rows.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "axial_rel_pos_forward",
                                  [&] { forward_impl<scalar_t, at::opmath_type<scalar_t>>(q, v, rows_c, out, a, b); });
}

at::Tensor axial_backward(const at::Tensor& q, const at::Tensor& v, const at::Tensor& rows, const at::Tensor& grad,
                          const at::Tensor& grad_q, const at::Tensor& grad_v) {
  check(q, v, rows);
  check_like(grad, v, "grad");
  check_like(grad_q, q, "grad_q");
  check_like(grad_v, v, "grad_v");
  const auto rows_c = rows.contiguous();
  at::Tensor grad_rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "axial_rel_pos_backward", [&] {
    grad_rows = backward_impl<scalar_t, at::opmath_type<scalar_t>>(q, v, rows_c, grad, grad_q, grad_v);
  });
  return grad_rows;
}

// 2x2 average pool in ceil mode over contiguous (planes, H, W) -> (planes, ceil(H/2), ceil(W/2)): an odd last row or
// column is averaged over the elements its window holds. One pass: each input element read once, each output written
// once; sums in T (float for bfloat16/half).
template <typename X, typename T>
void pool2_impl(const X* x, int64_t planes, int64_t H, int64_t W, X* out) {
  const int64_t Ho = (H + 1) / 2, Wo = (W + 1) / 2, Wf = W / 2;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t i = 0; i < Ho; ++i) {
        const X* r0 = x + (p * H + 2 * i) * W;
        const bool two = 2 * i + 1 < H;
        const X* r1 = two ? r0 + W : r0;
        const T rows = two ? T(2) : T(1);
        X* o = out + (p * Ho + i) * Wo;
        for (int64_t j = 0; j < Wf; ++j)  // a single last row is read twice (r1 = r0): a quarter of the sum either way
          o[j] = static_cast<X>((static_cast<T>(r0[2 * j]) + static_cast<T>(r0[2 * j + 1]) + static_cast<T>(r1[2 * j]) +
                                 static_cast<T>(r1[2 * j + 1])) * T(0.25));
        if (Wo > Wf) {  // odd W: the last column alone
          const T sum = static_cast<T>(r0[W - 1]) + (two ? static_cast<T>(r1[W - 1]) : T(0));
          o[Wo - 1] = static_cast<X>(sum / rows);
        }
      }
  });
}

// Its adjoint: grad_in[r][c] = grad[r / 2][c / 2] / (the count of the window (r / 2, c / 2)).
template <typename X, typename T>
void pool2_backward_impl(const X* g, int64_t planes, int64_t H, int64_t W, X* gin) {
  const int64_t Ho = (H + 1) / 2, Wo = (W + 1) / 2;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t r = 0; r < H; ++r) {
        const int64_t i = r / 2;
        const T rows = 2 * i + 1 < H ? T(2) : T(1);
        const X* gi = g + (p * Ho + i) * Wo;
        X* d = gin + (p * H + r) * W;
        const T inv2 = T(1) / (T(2) * rows);
        for (int64_t c = 0; c + 1 < W; c += 2) {
          const X v = static_cast<X>(static_cast<T>(gi[c / 2]) * inv2);
          d[c] = v;
          d[c + 1] = v;
        }
        if (W % 2) d[W - 1] = static_cast<X>(static_cast<T>(gi[Wo - 1]) / rows);
      }
  });
}

void check_pool(const at::Tensor& x, const at::Tensor& out, int64_t H, int64_t W, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && out.device().is_cpu() && x.is_contiguous() && out.is_contiguous(),
              "pool2: contiguous CPU tensors only");
  TORCH_CHECK(x.scalar_type() == out.scalar_type() && x.dim() >= 2 && out.dim() == x.dim(), "pool2: ", name,
              " must have the input's dtype and rank");
  TORCH_CHECK(H > 0 && W > 0, "pool2: empty spatial size");
}

void pool2(const at::Tensor& x, const at::Tensor& out) {
  const int64_t H = x.size(-2), W = x.size(-1), planes = H * W ? x.numel() / (H * W) : 0;
  check_pool(x, out, H, W, "out");
  TORCH_CHECK(out.size(-2) == (H + 1) / 2 && out.size(-1) == (W + 1) / 2 &&
                  out.numel() == planes * out.size(-2) * out.size(-1),
              "pool2: out must be (..., ceil(H/2), ceil(W/2))");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pool2", [&] {
    pool2_impl<scalar_t, at::opmath_type<scalar_t>>(x.const_data_ptr<scalar_t>(), planes, H, W,
                                                    out.data_ptr<scalar_t>());
  });
}

void pool2_backward(const at::Tensor& grad, const at::Tensor& grad_in) {
  const int64_t H = grad_in.size(-2), W = grad_in.size(-1), planes = H * W ? grad_in.numel() / (H * W) : 0;
  check_pool(grad_in, grad, H, W, "grad");
  TORCH_CHECK(grad.size(-2) == (H + 1) / 2 && grad.size(-1) == (W + 1) / 2 &&
                  grad.numel() == planes * grad.size(-2) * grad.size(-1),
              "pool2_backward: grad must be (..., ceil(H/2), ceil(W/2))");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "pool2_backward", [&] {
    pool2_backward_impl<scalar_t, at::opmath_type<scalar_t>>(grad.const_data_ptr<scalar_t>(), planes, H, W,
                                                             grad_in.data_ptr<scalar_t>());
  });
}

}  // namespace

// TORCH_LIBRARY pastes its namespace argument into identifiers; one more macro level expands ours first.
#define GSANET_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
GSANET_LIBRARY(GSANET_OPS_NAMESPACE, m) {
  m.def("forward(Tensor q, Tensor v, Tensor rows, Tensor(a!) out, Tensor? scale=None, Tensor? shift=None) -> ()");
  m.def("backward(Tensor q, Tensor v, Tensor rows, Tensor grad, Tensor(a!) grad_q, Tensor(b!) grad_v) -> Tensor");
  m.def("pool2(Tensor x, Tensor(a!) out) -> ()");
  m.def("pool2_backward(Tensor grad, Tensor(a!) grad_in) -> ()");
  m.impl("forward", c10::DispatchKey::CPU, TORCH_FN(axial_forward));
  m.impl("pool2", c10::DispatchKey::CPU, TORCH_FN(pool2));
  m.impl("pool2_backward", c10::DispatchKey::CPU, TORCH_FN(pool2_backward));
  m.impl("backward", c10::DispatchKey::CPU, TORCH_FN(axial_backward));
}
