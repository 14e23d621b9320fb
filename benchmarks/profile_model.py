"""Where a training step of the reference Transformer spends its time, zenattn modules vs torch's.

    python benchmarks/profile_model.py                      # tiny and small, fp32 and bf16 autocast
    python benchmarks/profile_model.py --out benchmarks/results --tag run-a

The same models and steps as benchmarks/bench_model.py, run under torch.profiler (CPU activities)
for a few steps after warm-up. Each op's self time is put in one family (matmul, attention, norm,
other) and reported in ms per step for both builds, so the speed-up of bench_model.py can be read
off the part of the step zenattn replaces (zenattn's eager calls show up as its autograd Functions,
``<op>_eager`` and ``<op>_eagerBackward``). The profiler adds its own overhead to every op: read the
families against each other, not as absolute step times.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import zenattn
from zenattn.models.transformer import Transformer, TransformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import PRESETS, make_step  # noqa: E402

FAMILIES = {  # the first family whose marker is in the op's name
    "attention": ("attention", "scaled_dot_product"),
    "norm": ("layer_norm", "rms_norm"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
}


def family(name: str) -> str:
    return next((fam for fam, marks in FAMILIES.items() if any(m in name for m in marks)), "other")


def profile_build(model: Transformer, batch: int, seq_len: int, amp, steps: int) -> dict:
    step = make_step(model, batch, seq_len, torch.device("cpu"), amp)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    per_family = defaultdict(float)
    for event in prof.key_averages():
        per_family[family(event.key)] += event.self_cpu_time_total / steps / 1e3
    return dict(per_family)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="folder for the markdown result")
    parser.add_argument("--tag", default="run-a")
    args = parser.parse_args()
    lines = [f"# Reference Transformer training step by op family (cpu, {datetime.date.today()})", "",
             f"torch {torch.__version__}, zenattn {zenattn.__version__}, {torch.get_num_threads()} threads, "
             f"{platform.machine()}. Self CPU time per step under torch.profiler: the mean "
             f"of {args.steps} steps after 3 warm-up steps.", "",
             "| preset | dtype | build | matmul ms | attention ms | norm ms | other ms | total ms |",
             "|---|---|---|---|---|---|---|---|"]
    for preset, (opts, batch, seq_len) in PRESETS.items():
        for dtype_name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            torch.manual_seed(0)
            cfg = TransformerConfig(**opts)
            builds = {"zenattn": Transformer(cfg)}
            builds["torch"] = Transformer(dataclasses.replace(cfg, attn="torch", norm_impl="torch"))
            builds["torch"].load_state_dict(builds["zenattn"].state_dict())
            for name, model in builds.items():
                fams = profile_build(model, batch, seq_len, amp, args.steps)
                cells = [fams.get(f, 0.0) for f in ("matmul", "attention", "norm", "other")]
                row = (f"| {preset} | {dtype_name} | {name} | " + " | ".join(f"{c:.1f}" for c in cells)
                       + f" | {sum(cells):.1f} |")
                print(row, flush=True)
                lines.append(row)
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"model-profile-cpu-{datetime.date.today()}-{args.tag}.md"
        path.write_text(text)
        print(f"wrote {path}")
    else:
        print(text)


if __name__ == "__main__":
    main()
