// The CUDA flash-attention backward for head dim 128 (one instantiation per file: builds parallelize).
#include "attention_bwd.cuh"

namespace zenattn {
namespace cuda {

cudaError_t launch_attention_bwd_hdim128(const AttnBwdParams& p, cudaStream_t stream) {
  return attn::launch_attention_bwd<128>(p, stream);
}

}  // namespace cuda
}  // namespace zenattn
