"""The portable kernel dialect: one prelude of macros with a CUDA branch and an OpenCL
branch, so that one kernel text compiles as CUDA C and as OpenCL C.

Rules the generated code follows (each one a difference between the two languages):
pointer parameters are written GLOBAL; local (shared) arrays are declared only at kernel
scope and passed to helpers as LOCAL pointers; float literals carry an `f`; math goes
through the macros below (OpenCL has no `expf`); dynamic local memory is the last kernel
parameter in OpenCL (DYN_SHARED_PARAM) and an `extern __shared__` array in CUDA.
"""

PRELUDE = r"""/* lstmc portable kernel dialect: compiles as CUDA C and as OpenCL C. */
#ifdef __OPENCL_VERSION__
#define KERNEL __kernel void
#define DEVICE static inline
#define GLOBAL __global
#define LOCAL __local
#define SHARED __local
#define RESTRICT restrict
#define LID ((int)get_local_id(0))
#define LSZ ((int)get_local_size(0))
#define GID ((int)get_group_id(0))
#define NGROUPS ((int)get_num_groups(0))
#define BARRIER() barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE)
#define DYN_SHARED_PARAM , __local float* dyn_smem
#define DYN_SHARED_DECL
#define LD(p) (*(p))
#define EXPF(x) exp(x)
/* OpenCL allows tanh a few ulp: PoCL gives 1 - 2^-24 for large |x|. Beyond 9.1,
   tanh rounds to +-1 in float32 (as CUDA's tanhf and the CPU give): saturate exactly. */
#define TANHF(x) (fabs(x) > 9.1f ? copysign(1.0f, (x)) : tanh(x))
#define LOGF(x) log(x)
#define SQRTF(x) sqrt(x)
#define FABSF(x) fabs(x)
#define FMINF(a, b) fmin(a, b)
#define FMAXF(a, b) fmax(a, b)
#define LOG1PF(x) log1p(x)
#define EXPM1F(x) expm1(x)
#define ERFF(x) erf(x)
#define SINF(x) sin(x)
#define COSF(x) cos(x)
#define FLOORF(x) floor(x)
#define FMODF(a, b) fmod(a, b)
#define POWF(a, b) pow(a, b)
#define COPYSIGNF(a, b) copysign(a, b)
#define COUNTER volatile __global unsigned int
/* Grid-wide barrier for the persistent kernel: every work-group must be resident. */
DEVICE void grid_sync(COUNTER* counter, unsigned int target) {
  barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
  if (get_local_id(0) == 0) {
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    atomic_inc(counter);
    while (atomic_add(counter, 0u) < target) {}
    mem_fence(CLK_GLOBAL_MEM_FENCE);
  }
  barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
}
#else
#define KERNEL extern "C" __global__ void
#define DEVICE static __device__ __forceinline__
#define GLOBAL
#define LOCAL
#define SHARED __shared__
#define RESTRICT __restrict__
#define LID ((int)threadIdx.x)
#define LSZ ((int)blockDim.x)
#define GID ((int)blockIdx.x)
#define NGROUPS ((int)gridDim.x)
#define BARRIER() __syncthreads()
#define DYN_SHARED_PARAM
#define DYN_SHARED_DECL extern __shared__ float dyn_smem[];
/* Values other blocks wrote during a persistent kernel: read past the (incoherent) L1. */
#define LD(p) __ldcg(p)
#define EXPF(x) expf(x)
#define TANHF(x) tanhf(x)
#define LOGF(x) logf(x)
#define SQRTF(x) sqrtf(x)
#define FABSF(x) fabsf(x)
#define FMINF(a, b) fminf(a, b)
#define FMAXF(a, b) fmaxf(a, b)
#define LOG1PF(x) log1pf(x)
#define EXPM1F(x) expm1f(x)
#define ERFF(x) erff(x)
#define SINF(x) sinf(x)
#define COSF(x) cosf(x)
#define FLOORF(x) floorf(x)
#define FMODF(a, b) fmodf(a, b)
#define POWF(a, b) powf(a, b)
#define COPYSIGNF(a, b) copysignf(a, b)
#define COUNTER unsigned int
DEVICE void grid_sync(COUNTER* counter, unsigned int target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    while (atomicAdd(counter, 0u) < target) {}
    __threadfence();
  }
  __syncthreads();
}
#endif
#define SIGMOIDF(x) (1.0f / (1.0f + EXPF(-(x))))
/* torch.remainder: the sign of b (Python's %) */
DEVICE float lstmc_remainder(float a, float b) {
  const float r = FMODF(a, b);
  return (r != 0.0f && ((b < 0.0f) != (r < 0.0f))) ? r + b : r;
}
/* torch's div(a, b, rounding_mode='floor'), which its remainder gradient uses */
DEVICE float lstmc_floor_divide(float a, float b) {
  if (b == 0.0f) return a / b;
  const float r = FMODF(a, b);
  float q = (a - r) / b;
  if (r != 0.0f && ((b < 0.0f) != (r < 0.0f))) q -= 1.0f;
  if (q == 0.0f) return COPYSIGNF(0.0f, a / b);
  float f = FLOORF(q);
  if (q - f > 0.5f) f += 1.0f;
  return f;
}
#define REMAINDERF(a, b) lstmc_remainder(a, b)
#define FLOORDIVF(a, b) lstmc_floor_divide(a, b)
#ifdef __OPENCL_VERSION__
typedef uint u32;
typedef ulong u64;
#else
typedef unsigned int u32;
typedef unsigned long long u64;
#endif
/* Dropout and zoneout masks (lstmc/ir/masks.py defines them): Philox-4x32-10 of the
   counter (unit, row, step, site) under the key rng[0], rng[1]; `hit` where the first
   word's top 24 bits are below `threshold`, else `miss`; `expected` when rng[2] is 0
   (a training pass without masks). */
DEVICE float lstmc_mask(GLOBAL const u32* rng, u32 step, u32 row, u32 unit, u32 site,
                        u32 threshold, float hit, float miss, float expected) {
  if (!rng[2]) return expected;
  u32 c0 = unit, c1 = row, c2 = step, c3 = site, k0 = rng[0], k1 = rng[1];
  for (int r = 0; r < 10; ++r) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    const u64 p0 = (u64)0xD2511F53u * c0, p1 = (u64)0xCD9E8D57u * c2;
    c0 = (u32)(p1 >> 32) ^ c1 ^ k0; c1 = (u32)p1;
    c2 = (u32)(p0 >> 32) ^ c3 ^ k1; c3 = (u32)p0;
  }
  return (c0 >> 8) < threshold ? hit : miss;
}
"""

GEMM = r"""
/* C[m, n] (+)= sum_k A[m*sam + k*sak] * B[k*sbk + n*sbn], for m < M, n < N, k < K;
   C row-major with leading dimension ldc. A: (M, K) by strides (sam 0 broadcasts one
   row), B: (K, N) by strides, C: (M, N). Offsets are in elements. One work-group
   computes a 64x64 tile of C with 256 work-items, 4x4 values each; K in steps of 16. */
#define GEMM_TILE 64
#define GEMM_KSTEP 16
KERNEL lstmc_gemm(int M, int N, int K,
                  GLOBAL const float* RESTRICT A, int a_off, int sam, int sak,
                  GLOBAL const float* RESTRICT Bm, int b_off, int sbk, int sbn,
                  GLOBAL float* RESTRICT C, int c_off, int ldc, int accumulate) {
  SHARED float As[GEMM_KSTEP][GEMM_TILE + 1];
  SHARED float Bs[GEMM_KSTEP][GEMM_TILE + 1];
  const int tiles_n = (N + GEMM_TILE - 1) / GEMM_TILE;
  const int m0 = (GID / tiles_n) * GEMM_TILE, n0 = (GID % tiles_n) * GEMM_TILE;
  const int tr = LID / 16, tc = LID % 16;
  float acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  A += a_off; Bm += b_off; C += c_off;
  for (int k0 = 0; k0 < K; k0 += GEMM_KSTEP) {
    for (int e = LID; e < GEMM_KSTEP * GEMM_TILE; e += 256) {
      const int kk = e / GEMM_TILE, mm = e % GEMM_TILE;
      const int k = k0 + kk, m = m0 + mm, n = n0 + mm;
      As[kk][mm] = (k < K && m < M) ? A[m * sam + k * sak] : 0.0f;
      Bs[kk][mm] = (k < K && n < N) ? Bm[k * sbk + n * sbn] : 0.0f;
    }
    BARRIER();
    for (int kk = 0; kk < GEMM_KSTEP; ++kk) {
      float a[4], b[4];
      for (int i = 0; i < 4; ++i) a[i] = As[kk][tr + 16 * i];
      for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tc + 16 * j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    BARRIER();
  }
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + tr + 16 * i;
    if (m >= M) continue;
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tc + 16 * j;
      if (n < N) C[m * ldc + n] = accumulate ? C[m * ldc + n] + acc[i][j] : acc[i][j];
    }
  }
}
"""

GEMM_THREADS = 256
GEMM_TILE = 64
REGION_THREADS = 128
PERSISTENT_THREADS = 256
