"""Build the toy base model and its three experts (run once; the results are committed).

    python examples/toy/make_models.py

The base is trained briefly on all three targets; each expert continues from the base on its own
target alone, which makes it better at that skill and worse at the others.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from toy_tasks import TARGETS, forward, inputs, r2  # noqa: E402


def init(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"fc1": (32, 4), "fc2": (32, 32), "head": (3, 32)}
    w = {}
    for name, (o, i) in shapes.items():
        w[f"{name}.weight"] = torch.randn((o, i), generator=g) / i**0.5
        w[f"{name}.bias"] = torch.zeros(o)
    return w


def train(weights: dict[str, torch.Tensor], targets: list[str], *, steps: int, lr: float, seed: int) -> dict:
    w = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    opt = torch.optim.Adam(w.values(), lr=lr)
    x_all = inputs("train", 4096)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (128,), generator=g)
        x = x_all[idx]
        out = forward(w, x)
        loss = sum(((out[:, TARGETS[t][0]] - TARGETS[t][1](x)) ** 2).mean() for t in targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in w.items()}


def scores(w: dict[str, torch.Tensor]) -> dict[str, float]:
    x = inputs("validation")
    out = forward(w, x)
    return {t: round(r2(out[:, c], fn(x)), 3) for t, (c, fn) in TARGETS.items()}


def main() -> None:
    torch.manual_seed(0)
    out = HERE / "models"
    out.mkdir(exist_ok=True)
    base = train(init(0), list(TARGETS), steps=60, lr=3e-3, seed=1)
    save_file(base, str(out / "base.safetensors"))
    print("base", scores(base))
    for i, task in enumerate(TARGETS):
        expert = train(base, [task], steps=300, lr=1e-3, seed=10 + i)
        save_file(expert, str(out / f"{task}.safetensors"))
        print(task, scores(expert))


if __name__ == "__main__":
    main()
