"""Render docs/reliability.md from a test run.

    ZENATTN_RELIABILITY_JSON=run.json python -m pytest -q     # the whole suite, as CI runs it
    python tests/reliability_report.py run.json               # writes docs/reliability.md

The report lists what is tested (each DESIGN.md section 4 checklist item with the tests that cover
it; a listed test that does not exist stops the script), the run's outcomes per test file, how many
examples the property-based tests ran per backend, and the worst error each backend showed per op
and dtype, as a fraction of what the DESIGN.md rule allows (1.0 = at the bound) and as a multiple of
PyTorch's own error in the same dtype.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
OUT = ROOT / "docs" / "reliability.md"

CHECKLIST = [
    ("Parity grid: seq lens {1, 2, 17, 113, 127, 128, 129, 1023, 1025}, head dims {8, 40, 59, 64, 111, 128, 256}, "
     "fp32/bf16/fp16, causal, every backend",
     ["test_attention_parity.py::test_attention_seq_lens", "test_attention_parity.py::test_attention_head_dims"]),
    ("q longer and shorter than k, both causal alignments, windows, GQA/MQA, softcap, ALiBi, dropout",
     ["test_attention_parity.py::test_attention_features"]),
    ("Every broadcast shape of a 1-4-dim bool/float mask", ["test_attention_parity.py::test_attention_mask_broadcast"]),
    ("Non-contiguous, sliced, transposed and expanded (stride 0) inputs",
     ["test_attention_edge_cases.py::test_noncontiguous_inputs_match_contiguous",
      "test_norm_parity.py::test_norm_noncontiguous_input", "test_fuzz.py::test_attention_fuzz",
      "test_fuzz.py::test_norm_fuzz"]),
    ("Transposed upstream gradient", ["test_attention_edge_cases.py::test_transposed_upstream_gradient"]),
    ("Inputs scaled x5/x3, bf16 values near 1e5, fp16 near 6e4: no inf/NaN",
     ["test_attention_edge_cases.py::test_scaled_inputs_finite_and_within_rule",
      "test_attention_edge_cases.py::test_bf16_values_near_1e5", "test_norm_edge_cases.py::test_fp16_large_values"]),
    ("fp32 backward at scores near 200: the recomputed P carries no rounding of the saved LSE (lse_lo)",
     ["test_attention_edge_cases.py::test_backward_probabilities_at_large_scores"]),
    ("Fully masked rows: zeros, LSE -inf, zero gradients, no NaN", ["test_attention_edge_cases.py::test_fully_masked_rows"]),
    ("Batch 0 and sequence 0", ["test_attention_edge_cases.py::test_empty_inputs", "test_norm_edge_cases.py::test_empty_batch"]),
    ("LayerNorm constant rows, eps = 0, mean offset 1e6, hidden 65536",
     ["test_norm_edge_cases.py::test_layer_norm_constant_rows_give_bias", "test_norm_edge_cases.py::test_eps_zero",
      "test_norm_edge_cases.py::test_layer_norm_large_mean_offset", "test_norm_parity.py::test_layer_norm_parity"]),
    ("Norm fused residual and dropout: the reference mask on every backend, rate within 0.01 of p, same seed same result",
     ["test_norm_parity.py::test_norm_fused_residual", "test_norm_parity.py::test_norm_fused_dropout",
      "test_norm_edge_cases.py::test_dropout_draws_the_reference_mask", "test_norm_edge_cases.py::test_dropout_rate_and_scale",
      "test_norm_edge_cases.py::test_dropout_reproducible_from_the_generator", "test_norm_edge_cases.py::test_dropout_gradcheck"]),
    ("More than 2^31 elements (CPU; skipped with the reason when memory is short)",
     ["test_reliability.py::test_layer_norm_over_2_31_elements", "test_reliability.py::test_attention_over_2_31_elements"]),
    ("Peak memory of attention fwd+bwd linear in N (4k-32k), and the measurement shown to catch N x N; "
     "the cpu launchers' kept scratch let go by zenattn.empty_cache()",
     ["test_reliability.py::test_attention_memory_grows_linearly_in_n",
      "test_reliability.py::test_memory_measurement_sees_quadratic_growth",
      "test_reliability.py::test_empty_cache_lets_go_of_the_kept_scratch"]),
    ("deterministic=True bitwise repeatable over 50 runs on every backend (3 in Triton's interpreter, which runs its programs one at a time); torch.use_deterministic_algorithms",
     ["test_reliability.py::test_attention_bitwise_repeatable_over_many_runs",
      "test_reliability.py::test_norm_bitwise_repeatable_over_many_runs",
      "test_reliability.py::test_deterministic_algorithms_mode"]),
    ("Concurrent calls from several Python threads", ["test_reliability.py::test_concurrent_calls_from_threads",
      "test_reliability.py::test_concurrent_cpu_calls_sharing_the_kept_scratch"]),
    ("Bad inputs: a table of every rejected input with its exact message",
     ["test_attention_api.py::test_bad_input_errors", "test_norm_api.py::test_bad_input_errors",
      "test_attention_api.py::test_kernel_boundary_checks", "test_norm_api.py::test_kernel_boundary_checks",
      "test_cuda_attention.py::test_unsupported_names_the_feature"]),
    ("Property-based fuzzing of shapes, strides, dtypes, masks, windows, GQA, alignment, dropout, scales",
     ["test_fuzz.py::test_attention_fuzz", "test_fuzz.py::test_norm_fuzz"]),
]


# What the long fuzzing profile (ZENATTN_FUZZ=long, 600 random examples per test and backend) found
# when it was last run by hand; it stops at the first failure of each test, so each line is the
# shrunk first failure. Update this when it is run again.
LONG_PROFILE_FINDINGS = """\
Run again on 2026-12-08 (an AMD EPYC VM with AVX-512, torch 2.13.0, triton 3.9.0 in the interpreter),
after CI failed on an AVX2 machine:

- **Fixed:** fp32 attention dV on the CI profile, on the AVX2 CI machine (triton dv 5.4e-6 against a
  bound of 2.9e-6). The backward recomputed P = exp(S - lse) from the LSE rounded to fp32, which is off
  by up to half an ulp of |lse| for every P of a row alike, and dV = P^T dO sums that error (the cpu
  kernel had it too). The forward now also keeps lse_lo, what that rounding lost, and the backward
  uses exp((S - lse) - lse_lo): on the CI failure's shape, the worst dV error over 100 draws went
  from 1.40x the bound to 0.39x.
- **Still found, rounding-level:** one allowed key per row (the exact dk/dq is 0, PyTorch gives 0,
  zenattn 2.4e-6: delta = rowsum(dO * O) and dP = dO V^T round differently), `cpu` and `triton`;
  `triton` fp32 dq 5.7e-6 against 2.8e-6 with two keys at |s| ~ 100 (delta's cancellation).
- **Other draws of the CI profile's 30 shapes** (8 seeds, recorded, not asserted): `triton` bf16 dq/dk
  up to 4.1x the bound, mostly at |s| 20-70 (the open item below), `triton` fp32 dk up to 1.55x at |s| 17-33,
  and the pure-PyTorch `torch` backend fp32 dq/dk up to 3.3x in 7 of the 8 seeds: at large scores
  the rule leans on one example's SDPA error. The `cpu` kernel passed every seed.

Run on 2026-11-29 (the Intel CPU VM, torch 2.13.0, triton 3.9.0 in the interpreter).

- **Fixed:** bf16/fp16 attention gradients. The backward computed `delta = rowsum(dO * O)` from the
  output rounded to bf16, which shifts every dS of a row alike: the CPU kernel's dq/dk errors reached
  40x those of an fp32 computation rounded once (D = 1, |q|, |k| ~ 3; 8-10x at D = 64). The forward now
  also keeps the fp32 output for the backward; the CPU kernel's bf16 gradients now equal the
  fp32-then-rounded ones in every probed case.
- **Rounding-level, at the rule's fixed floor:** fp32 cases where PyTorch's result is exactly right
  and zenattn's is off by one or two fp32 rounding steps of the case's intermediate magnitudes, above
  the rule's absolute floor (2e-6): attention `cpu` dq 2.3e-6 with one key (the exact gradient is 0)
  and dropout; with the floors x4 (exploration only) `cpu` dk 8.2e-6 and `triton` dk 1.4e-5 with one
  key, the pure-PyTorch `torch` backend dq 2.1e-5 (|q|, |k| ~ 3, GQA); LayerNorm `torch` backend dx
  1.1e-4 at hidden 1 with eps 1e-6 (rstd = 1000 amplifies the rounding; torch's F.layer_norm shows
  3e-5 on neighbouring seeds). The cpu and triton norm kernels passed all 600 examples each.
- **Open (Triton, bf16/fp16 gradients):** the Triton kernels round P and dS to the input dtype for the
  tensor-core products, as FlashAttention does. Probed directly, their dq/dk errors reach 41x an
  fp32-then-rounded result at D = 1 with |q|, |k| ~ 3 (1.6x at D = 64 with unit inputs). In the
  interpreter they are judged against PyTorch's CPU SDPA, which computes bf16 in fp32; on a GPU the
  fair baseline (PyTorch's CUDA flash / efficient kernels, which round the same way) has not been
  measured. The CI profile's 30 cases stay within the rule.
"""


def _existing_tests() -> set:
    found = set()
    for path in TESTS.glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.add(f"{path.name}::{node.name}")
    return found


def render(run: dict) -> str:
    existing = _existing_tests()
    missing = [t for _, tests in CHECKLIST for t in tests if t not in existing]
    if missing:
        raise SystemExit(f"reliability_report: the checklist names tests that do not exist: {missing}")
    v = run["versions"]
    total = {k: sum(c.get(k, 0) for c in run["outcomes"].values()) for k in ("passed", "failed", "skipped")}
    lines = ["# zenattn reliability report", "",
             f"Generated by `tests/reliability_report.py` from a run of the whole test suite on {run['date'][:10]} "
             f"({run['device']} tensors; torch {v['torch']}, zenattn {v['zenattn']}, triton {v['triton']}, Python "
             f"{v['python']}): {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped.", "",
             "## What is tested", "", "| checklist item (DESIGN.md section 4) | tests |", "|---|---|"]
    lines += [f"| {item} | {', '.join(f'`{t}`' for t in tests)} |" for item, tests in CHECKLIST]
    lines += ["", "Every parity check compares a backend with a float64 reference and with PyTorch's own "
              "implementation in the same dtype: zenattn's max error must be at most 2x PyTorch's (3x for "
              "gradients) plus a per-dtype floor of about one rounding step (tests/parity.py).", "",
              "## Outcomes per test file", "", "| file | passed | failed | skipped |", "|---|---|---|---|"]
    for name, c in sorted(run["outcomes"].items()):
        lines.append(f"| {name} | {c.get('passed', 0)} | {c.get('failed', 0)} | {c.get('skipped', 0)} |")
    lines += ["", f"## Property-based fuzzing (profile `{run['fuzz_profile']}`)", "",
              "| test | backend | examples run |", "|---|---|---|"]
    lines += [f"| {name} | {backend} | {n} |" for name, backend, n in sorted(run["fuzz_examples"])]
    lines += ["", "## Worst observed error per backend", "",
              "Over every check made through the shared harness (`check_attention_parity` / `check_norm_parity` "
              "of tests/parity.py: the parity grid and the fuzzing): the number of checked results, the worst error as a fraction of the rule's bound (must stay <= 1), and the worst "
              "error as a multiple of PyTorch's own error on the same result (where PyTorch's is not 0).", "",
              "| op | backend | dtype | checks | worst error / bound | result | worst error / PyTorch's |",
              "|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for op, backend, dtype, name, ours, theirs, bound in run["records"]:
        g = groups.setdefault((op, backend, dtype), {"n": 0, "frac": (0.0, ""), "mult": 0.0})
        g["n"] += 1
        if bound > 0 and ours / bound > g["frac"][0]:
            g["frac"] = (ours / bound, name)
        if theirs > 0:
            g["mult"] = max(g["mult"], ours / theirs)
    for (op, backend, dtype), g in sorted(groups.items()):
        lines.append(f"| {op} | {backend} | {dtype} | {g['n']} | {g['frac'][0]:.3f} | {g['frac'][1]} | "
                     f"{g['mult']:.2f}x |")
    lines += ["", "## What the long fuzzing profile finds", "", LONG_PROFILE_FINDINGS.rstrip()]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run = json.loads(Path(sys.argv[1]).read_text())
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render(run))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
