// The CUDA flash-attention forward for head dim 128 (one instantiation per file: builds parallelize).
#include "attention_fwd.cuh"

namespace zenattn {
namespace cuda {

cudaError_t launch_attention_fwd_hdim128(const AttnFwdParams& p, cudaStream_t stream) {
  return attn::launch_attention_fwd<128>(p, stream);
}

}  // namespace cuda
}  // namespace zenattn
