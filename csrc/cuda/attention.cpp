// Torch-facing launchers of the CUDA flash-attention kernels: input checks with messages that name
// the argument and the offending value, output allocation, then the kernels of
// attention_{fwd,bwd}_hdim{64,128}.cu on the stream the caller passes (torch's current stream of the
// inputs' device). Includes only torch/extension.h and the CUDA runtime, so it compiles without a GPU
// against a CPU torch (DESIGN.md section 7).
#include "cuda/attention.h"

#include <climits>
#include <cstdint>

#include "cuda/attention_params.h"

namespace zenattn {
namespace cuda {
namespace {

constexpr const char* kOp = "zenattn cuda attention";

DType half_dtype(const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, kOp, ": query has dtype ",
              t.scalar_type(), "; the cuda attention kernels take float16 and bfloat16 (backend='triton' takes "
              "float32 too)");
  return t.scalar_type() == at::kHalf ? DType::kFloat16 : DType::kBFloat16;
}

// A (B, H, N, D) operand: on q's device, q's dtype, a unit last stride and rows the kernels can copy
// 16 bytes at a time.
void check_operand(const at::Tensor& t, const at::Tensor& q, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == q.device(), kOp, ": ", name, " is on ", t.device(), ", expected ",
              q.device());
  TORCH_CHECK(t.dim() == 4, kOp, ": ", name, " must be 4-D (B, H, N, D), got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), kOp, ": ", name, " has dtype ", t.scalar_type(),
              " but query has dtype ", q.scalar_type());
  TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, kOp, ": ", name, " must have a unit last stride, got strides ",
              t.strides());
  const bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 &&
                       (t.size(2) <= 1 || t.stride(2) % 8 == 0) && (t.size(1) <= 1 || t.stride(1) % 8 == 0) &&
                       (t.size(0) <= 1 || t.stride(0) % 8 == 0);
  TORCH_CHECK(aligned, kOp, ": ", name, " rows must start on 16-byte boundaries (strides in elements a multiple "
              "of 8), got strides ", t.strides());
}

AttnShape shape_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                   int64_t window_left, int64_t window_right, bool bottom_right) {
  const DType dtype = half_dtype(q);
  check_operand(q, q, "query");
  check_operand(k, q, "key");
  check_operand(v, q, "value");
  const int64_t B = q.size(0), Hq = q.size(1), Nq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Nk = k.size(2);
  TORCH_CHECK(D == 64 || D == 128, kOp, ": head dim ", D, " is not supported; the cuda kernels are built for 64 "
              "and 128 (backend='triton' takes 1..256)");
  TORCH_CHECK(k.size(0) == B && v.size(0) == B, kOp, ": batch sizes differ: query ", B, ", key ", k.size(0),
              ", value ", v.size(0));
  TORCH_CHECK(k.size(3) == D && v.size(3) == D, kOp, ": key and value head dims must equal query's ", D,
              ", got ", k.size(3), " and ", v.size(3));
  TORCH_CHECK(v.size(1) == Hkv && v.size(2) == Nk, kOp, ": key ", k.sizes(), " and value ", v.sizes(),
              " must have the same heads and length");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, kOp, ": key/value heads (", Hkv, ") must divide query heads (", Hq, ")");
  TORCH_CHECK(Nq <= INT_MAX && Nk <= INT_MAX && B <= 65535 && Hq <= 65535, kOp, ": sizes over the grid limits: B ",
              B, ", Hq ", Hq, ", Nq ", Nq, ", Nk ", Nk);
  TORCH_CHECK(window_left >= -1 && window_right >= -1 && window_left <= INT_MAX && window_right <= INT_MAX, kOp,
              ": window sides must be -1 (unbounded) or >= 0, got (", window_left, ", ", window_right, ")");
  int device = q.get_device(), major = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess, kOp,
              ": could not read the compute capability of device ", device);
  TORCH_CHECK(major >= 8, kOp, ": the kernels need compute capability 8.0 or newer (mma.sync bf16, cp.async); "
              "device ", device, " is ", major, ".x");
  AttnShape s{};
  s.dtype = dtype;
  s.batch = B;
  s.heads_q = Hq;
  s.heads_kv = Hkv;
  s.len_q = Nq;
  s.len_k = Nk;
  s.offset = bottom_right ? Nk - Nq : 0;
  s.window_left = static_cast<int>(window_left);
  s.window_right = static_cast<int>(window_right);
  s.scale = static_cast<float>(scale);
  return s;
}

Strides strides_of(const at::Tensor& t) { return Strides{t.stride(0), t.stride(1), t.stride(2)}; }

// The operand fields both params structs share.
template <typename Params>
void set_operands(Params& p, const AttnShape& s, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  p.s = s;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_st = strides_of(q);
  p.k_st = strides_of(k);
  p.v_st = strides_of(v);
}

void check_status(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, kOp, ": ", what, " failed: ", cudaGetErrorString(status));
}

void check_stats(const at::Tensor& t, const at::Tensor& q, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == q.device() && t.scalar_type() == at::kFloat && t.dim() == 3 &&
                  t.size(0) == q.size(0) && t.size(1) == q.size(1) && t.size(2) == q.size(2),
              kOp, ": ", name, " must be float32 (B, Hq, Nq) = ", q.sizes().slice(0, 3), " on ", q.device(), ", got ",
              t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

}  // namespace

std::vector<at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                      int64_t window_left, int64_t window_right, bool bottom_right, int64_t stream) {
  const AttnShape s = shape_of(q, k, v, scale, window_left, window_right, bottom_right);
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor out_acc = at::empty(q.sizes(), q.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  at::Tensor lse = at::empty({s.batch, s.heads_q, s.len_q}, q.options().dtype(at::kFloat));
  AttnFwdParams p{};
  set_operands(p, s, q, k, v);
  p.out = out.data_ptr();
  p.out_acc = out_acc.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  check_status(q.size(3) == 64 ? launch_attention_fwd_hdim64(p, st) : launch_attention_fwd_hdim128(p, st),
               "the forward kernel launch");
  return {out, lse, out_acc};
}

std::vector<at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& lse, const at::Tensor& delta,
                                      double scale, int64_t window_left, int64_t window_right, bool bottom_right,
                                      int64_t stream) {
  const AttnShape s = shape_of(q, k, v, scale, window_left, window_right, bottom_right);
  check_operand(dout, q, "grad_output");
  TORCH_CHECK(dout.sizes() == q.sizes(), kOp, ": grad_output has shape ", dout.sizes(), ", expected ", q.sizes());
  check_stats(lse, q, "lse");
  check_stats(delta, q, "delta");
  const at::Tensor lse_c = lse.contiguous(), delta_c = delta.contiguous();
  const auto contiguous = [](const at::Tensor& t) {
    return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
  };
  at::Tensor dq = contiguous(q), dk = contiguous(k), dv = contiguous(v);
  AttnBwdParams p{};
  set_operands(p, s, q, k, v);
  p.dout = dout.data_ptr();
  p.do_st = strides_of(dout);
  p.lse = lse_c.data_ptr<float>();
  p.delta = delta_c.data_ptr<float>();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  check_status(q.size(3) == 64 ? launch_attention_bwd_hdim64(p, st) : launch_attention_bwd_hdim128(p, st),
               "the backward kernel launch");
  return {dq, dk, dv};
}

}  // namespace cuda
}  // namespace zenattn
