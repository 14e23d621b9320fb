// Device helpers shared by the CUDA norm kernels: element conversions, 128-bit packed loads and
// stores, block-wide sums and dropout multipliers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/philox.h"
#include "norm_params.h"

namespace zenattn {
namespace cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// V consecutive elements moved as one access: V * sizeof(T) == 16 bytes gives 128-bit loads and
// stores (the launcher picks V = 1 when a row or pointer is not 16-byte aligned).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ void load(const T* ptr, float (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(ptr);
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = to_float(pack.v[i]);
}

template <typename T, int V>
__device__ __forceinline__ void store(T* ptr, const float (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int i = 0; i < V; ++i) pack.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Pack<T, V>*>(ptr) = pack;
}

// Sum of `v` over the block (every thread gets it); `scratch` holds 32 floats per value. The
// order of the additions depends only on blockDim, so the result is bitwise repeatable.
template <int K>
__device__ __forceinline__ void block_sum(float (&v)[K], float (*scratch)[K]) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  __syncthreads();  // scratch may still be read by an earlier call
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[warp][k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = lane < warps ? scratch[lane][k] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
  }
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// f(T{}) for the element type T of `dtype`: the launchers' one dtype switch.
// Dropout multipliers of columns j .. j + V - 1 of `row` (j a multiple of V, V a power of two):
// d.scale where kept, 0 where dropped. One Philox call covers four columns.
template <int V>
__device__ __forceinline__ void dropout_multipliers(const NormDropout& d, int64_t row, int64_t j, float (&m)[V]) {
  const DropoutRng rng{d.seed, d.threshold};
  uint32_t bits = 0;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int64_t c = j + i;
    if (i == 0 || (c & 3) == 0) bits = rng.keep4(0, uint64_t(row), uint64_t(c >> 2));
    m[i] = (bits >> (c & 3)) & 1u ? d.scale : 0.0f;
  }
}

template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace zenattn

// kernel<T, V, RMS><<<grid, threads, 0, stream>>>(p) with V = 16 / sizeof(T) (128-bit accesses) when
// `vec`, else 1, and RMS from p.rms: the four instantiations each norm kernel is launched through.
#define ZENATTN_LAUNCH_NORM_KERNEL(kernel, T, vec, grid, threads, stream, p)       \
  do {                                                                            \
    constexpr int kPack = 16 / sizeof(T);                                         \
    if (vec) {                                                                    \
      if ((p).rms) kernel<T, kPack, true><<<grid, threads, 0, stream>>>(p);       \
      else kernel<T, kPack, false><<<grid, threads, 0, stream>>>(p);              \
    } else {                                                                      \
      if ((p).rms) kernel<T, 1, true><<<grid, threads, 0, stream>>>(p);           \
      else kernel<T, 1, false><<<grid, threads, 0, stream>>>(p);                  \
    }                                                                             \
  } while (0)
