// The CUDA flash-attention forward for head dim 64 (one instantiation per file: builds parallelize).
#include "attention_fwd.cuh"

namespace zenattn {
namespace cuda {

cudaError_t launch_attention_fwd_hdim64(const AttnFwdParams& p, cudaStream_t stream) {
  return attn::launch_attention_fwd<64>(p, stream);
}

}  // namespace cuda
}  // namespace zenattn
