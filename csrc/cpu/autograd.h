// What the C++ autograd of the eager cpu path (attention_autograd.cpp, norm_autograd.cpp) shares.
#pragma once

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>

namespace zenattn::cpu::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A saved or incoming tensor as the launchers take an optional one: absent when undefined.
inline std::optional<at::Tensor> present(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Called first in a backward. The kernels' gradients carry no graph, so a second backward through
// them would be silently zero: create_graph=True through `op` is refused here. (The Python path
// refuses at the second backward instead; in C++ the two cannot be told apart.)
inline void refuse_create_graph(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled(), "zenattn ", op, ": the backward is not differentiable (no double "
              "backward / create_graph=True through ", op, "); use backend='torch' for higher-order gradients");
}

}  // namespace zenattn::cpu::autograd
