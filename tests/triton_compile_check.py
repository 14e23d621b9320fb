"""Compile the Triton kernels for NVIDIA GPUs (sm_80, sm_90) without a GPU; used by
tests/test_triton_compile.py, which runs this file in a subprocess without TRITON_INTERPRET (under
the interpreter ``@triton.jit`` functions cannot be compiled).

    python tests/triton_compile_check.py      # prints one JSON object: case id -> result
"""

from __future__ import annotations

import json
import os
import sys

# (id, kernel, dtype, padded head dim or hidden size, every feature on, arch, config or None for
# the fixed one used without autotuning)
CASES = [
    ("attention fwd bf16 D128 all features sm90 largest autotune config", "fwd", "bf16", 128, True, 90,
     dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)),
    ("attention bwd_dkdv bf16 D128 all features sm90", "bwd_dkdv", "bf16", 128, True, 90,
     dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2)),
    ("attention bwd_dq bf16 D128 all features sm90", "bwd_dq", "bf16", 128, True, 90,
     dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2)),
    ("attention fwd fp16 D64 sm80 fixed", "fwd", "fp16", 64, False, 80, None),
    ("attention bwd_dkdv fp16 D64 sm80 fixed", "bwd_dkdv", "fp16", 64, False, 80, None),
    ("attention bwd_dq fp16 D64 sm80 fixed", "bwd_dq", "fp16", 64, False, 80, None),
    # fp32 at D = 256: the tightest fit in shared memory
    ("attention fwd fp32 D256 sm80 fixed", "fwd", "fp32", 256, False, 80, None),
    ("attention bwd_dkdv fp32 D256 sm80 fixed", "bwd_dkdv", "fp32", 256, False, 80, None),
    ("attention bwd_dq fp32 D256 sm80 fixed", "bwd_dq", "fp32", 256, False, 80, None),
    ("attention bwd_preprocess bf16 D128 sm90", "bwd_preprocess", "bf16", 128, True, 90, None),
    ("layer_norm fwd bf16 hidden 4096 sm90", "norm_fwd", "bf16", 4096, True, 90, None),
    ("layer_norm bwd bf16 hidden 4096 sm90", "norm_bwd", "bf16", 4096, True, 90, None),
    ("layer_norm fwd bf16 hidden 65536 sm80", "norm_fwd", "bf16", 65536, True, 80, None),
    ("layer_norm bwd bf16 hidden 65536 sm80", "norm_bwd", "bf16", 65536, True, 80, None),
    # the widest autotuning configuration, without the dropout
    ("layer_norm fwd fp16 hidden 1024 sm80 32 warps", "norm_fwd", "fp16", 1024, False, 80, dict(num_warps=32)),
    ("layer_norm bwd fp16 hidden 1024 sm80 32 warps", "norm_bwd", "fp16", 1024, False, 80, dict(num_warps=32)),
    # rotary: "every feature on" is the backward (the transpose)
    ("rotary fwd bf16 D128 sm90", "rotary", "bf16", 128, False, 90, None),
    ("rotary bwd fp32 D256 sm80", "rotary", "fp32", 256, True, 80, None),
]

# Shared memory a block may use after opting in (CUDA programming guide, compute capabilities).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
FLOAT_ARGS = {"scale", "softcap", "keep_scale", "eps", "drop_scale"}
INT64_ARGS = {"seed"}
INT_ARGS_UPPER = {"H", "G", "D", "DV", "N", "TUNE_N", "L", "HALF"}  # upper-case names that are not pointers


def compile_kernel(fn, pointers: dict, constexprs: dict, arch: int, **options):
    """Compile ``fn`` for sm_``arch``: ``pointers`` maps pointer args to Triton pointer types
    ("*bf16" ...), ``constexprs`` gives every constexpr; other args are i32 (floats and the seed as
    named above)."""
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    signature = {}
    for name in fn.arg_names:
        if name in pointers:
            signature[name] = pointers[name]
        elif name in constexprs:
            signature[name] = "constexpr"
        elif name in FLOAT_ARGS:
            signature[name] = "fp32"
        elif name in INT64_ARGS:
            signature[name] = "i64"
        else:
            assert not (name.isupper() and name not in INT_ARGS_UPPER), f"pointer arg {name} has no type"
            signature[name] = "i32"
    const = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    return triton.compile(ASTSource(fn, signature, const), target=GPUTarget("cuda", arch, 32), options=options)


def compile_case(kernel: str, dtype: str, size: int, features: bool, arch: int, config):
    import triton.language as tl  # noqa: PLC0415

    from zenattn.triton import attention, norm, rotary  # noqa: PLC0415

    t = f"*{dtype}"
    stat = "*fp64" if dtype == "fp64" else "*fp32"
    acc = tl.float64 if dtype == "fp64" else tl.float32
    if kernel == "bwd_preprocess":
        return compile_kernel(attention._attn_bwd_preprocess_kernel, dict(O=t, DO=t, DLSE=stat, DELTA=stat),
                              dict(BLOCK_R=32, BLOCK_DV=size, HAS_DLSE=features, ACC=acc), arch, num_warps=4)
    if kernel == "rotary":
        block_half = size // 2
        return compile_kernel(rotary._rotary_kernel, dict(X=t, Y=t, COS=stat, SIN=stat),
                              dict(ACC=acc, BACKWARD=features, ROUND_BF16=False, BLOCK_HALF=block_half,
                                   BLOCK_L=rotary.BLOCK_ELEMENTS // (2 * block_half)), arch, num_warps=4)
    if kernel.startswith("norm"):
        const = dict(RMS=False, HAS_W=True, ACC=acc, BLOCK_N=size, ROUND_BF16=False)
        if kernel == "norm_fwd":
            fn = norm._norm_fwd_kernel
            pointers = dict(X=t, R=t, W=t, B=t, Y=t, S=t, MEAN=stat, RSTD=stat)
            const.update(HAS_RESIDUAL=True, HAS_DROPOUT=features, HAS_B=True)
        else:
            fn = norm._norm_bwd_kernel
            pointers = dict(DY=t, DSUM=t, X=t, W=t, MEAN=stat, RSTD=stat, DX=t, DRES=t, DW_PART=stat,
                            DB_PART=stat)
            const.update(HAS_DSUM=True, HAS_DROPOUT=features, HAS_DRES=features, HAS_DB=True)
        return compile_kernel(fn, pointers, const, arch, num_warps=(config or {}).get("num_warps", norm._warps(size)))
    fn = {"fwd": attention._attn_fwd_kernel, "bwd_dkdv": attention._attn_bwd_dkdv_kernel,
          "bwd_dq": attention._attn_bwd_dq_kernel}[kernel]
    config = dict(config or attention.gpu_fixed_config(size, size))
    const = dict(HAS_MASK=features, MASK_BOOL=features, HAS_ALIBI=features, HAS_SOFTCAP=features,
                 HAS_WL=features, HAS_WR=True, HAS_DROPOUT=features, ACC=acc,
                 PRECISION="ieee" if dtype in ("fp32", "fp64") else "tf32", ROUND_BF16=False,
                 BLOCK_D=size, BLOCK_DV=size, BLOCK_M=config.pop("BLOCK_M"), BLOCK_N=config.pop("BLOCK_N"))
    pointers = dict(Q=t, K=t, V=t, O=t, DO=t, DQ=t, DK=t, DV_OUT=t, LSE=stat, LSE_LO=stat, DELTA=stat, MASK="*i1",
                    SLOPES="*fp32")
    return compile_kernel(fn, pointers, const, arch, **config)


def main() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    results = {}
    for case_id, kernel, dtype, size, features, arch, config in CASES:
        try:
            compiled = compile_case(kernel, dtype, size, features, arch, config)
            results[case_id] = dict(ok="cubin" in compiled.asm, shared=compiled.metadata.shared,
                                    limit=SMEM_LIMIT[arch], error=None)
        except Exception as e:  # reported per case by the test
            results[case_id] = dict(ok=False, shared=None, limit=SMEM_LIMIT[arch], error=f"{type(e).__name__}: {e}")
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
