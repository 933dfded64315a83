"""The recipe of the demo's models and their cache: built on first use, reused afterwards.

A :class:`Recipe` says how the data are cut and how the base, the three experts and the
fine-tuned-on-everything baseline are trained. Its hash names a folder of the cache, so that a second
demo with the same recipe loads the models instead of training them, and a changed recipe never reuses
stale ones. The cache lives in ``$CYCLEQD_CACHE``, else ``$XDG_CACHE_HOME/cycleqd``, else
``~/.cache/cycleqd``.

The recipe (see the report): the base is pretrained briefly (200 steps) on 40 % generic format tasks and
60 % items of every template of the three skills, so that it knows the format and is weak at every
skill (about a third of the items right); each expert is fine-tuned from it on its skill with 30 %
replay of the base mix and sharpens that skill. Because every expert refines what the base already
half knows, half of an expert's task vector keeps much of its gain and merges combine skills, as with
large pretrained models. With ``base_templates="basic"`` the base sees only half of each skill's
templates and each expert learns the other half from scratch: measured on validation (seed 0, a
300-step base), half of an expert's task vector then keeps almost nothing of its gain (code 0.99 →
0.55, base 0.45), every merge stays near the base, and CycleQD cannot combine skills.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cycleqd.demo.data import Mix, MixPart, union_mix
from cycleqd.demo.model import ModelShape, build_tokenizer, load_model, new_model, save_hf_model
from cycleqd.demo.skills import SKILLS, SkillSplits, basic_templates, make_splits
from cycleqd.demo.train import TrainSettings, train
from cycleqd.errors import CycleQDError

#: Bumped whenever skills, data or training change in a way the recipe's fields do not show.
RECIPE_VERSION = "3"

#: Threads torch uses for training and evaluation (fixed: results must not depend on the machine).
THREADS = 2


@dataclass(frozen=True)
class Recipe:
    """How the demo's data are cut and its models trained.

    Attributes:
        seed: Seed of model initialisation and training batches.
        data_seed: Seed of the items (test inputs, tables, files) and of the splits.
        validation: Validation items per skill (they drive evolution and the baselines' grids).
        select: Select items per skill (they choose among the best candidates of each method).
        test: Test items per skill.
        shape: Model size.
        base: Pretraining of the base.
        expert: Fine-tuning of each expert.
        format_share: Share of generic format items in the base mix (the rest: skill items).
        replay: Share of the base mix replayed while fine-tuning an expert.
        base_templates: ``all``: the base mix draws from every template of each skill; ``basic``: from
            the basic half only (the other half is left to the experts).
    """

    seed: int = 0
    data_seed: int = 0
    validation: int = 250
    select: int = 250
    test: int = 250
    shape: ModelShape = field(default_factory=ModelShape)
    base: TrainSettings = field(default_factory=lambda: TrainSettings(steps=200, lr=2e-3))
    expert: TrainSettings = field(default_factory=lambda: TrainSettings(steps=120, lr=1e-3))
    format_share: float = 0.4
    replay: float = 0.3
    base_templates: str = "all"

    def __post_init__(self) -> None:
        if self.base_templates not in ("all", "basic"):
            raise ValueError(f"base_templates must be 'all' or 'basic', got {self.base_templates!r}")
        if not 0.0 <= self.format_share < 1.0 or not 0.0 <= self.replay < 1.0:
            raise ValueError(
                f"format_share and replay must lie in [0, 1), got {self.format_share} and {self.replay}"
            )

    def describe(self) -> dict[str, Any]:
        """JSON-ready form, with the version and the mixes it implies."""
        d = asdict(self)
        d["version"] = RECIPE_VERSION
        d["mixes"] = {
            "base": self.base_mix().describe(),
            **{f"expert-{s}": self.expert_mix(s).describe() for s in SKILLS},
        }
        return d

    @property
    def key(self) -> str:
        """Hash of the recipe: the name of its cache folder."""
        blob = json.dumps(self.describe(), sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()

    def with_seed(self, seed: int) -> Recipe:
        """The same recipe with another training seed."""
        return replace(self, seed=seed)

    def splits(self) -> dict[str, SkillSplits]:
        """Skill → its train, validation, select and test items."""
        return {
            s: make_splits(
                s, seed=self.data_seed, validation=self.validation, select=self.select, test=self.test
            )
            for s in SKILLS
        }

    def base_mix(self) -> Mix:
        """Generic format items and the skills' items (every template, or the basic ones)."""
        skill_share = (1.0 - self.format_share) / len(SKILLS)
        basic = self.base_templates == "basic"
        skills = (
            MixPart(s, skill_share, tuple(sorted(basic_templates(s))) if basic else None) for s in SKILLS
        )
        return Mix((MixPart("format", self.format_share), *skills))

    def expert_mix(self, skill: str) -> Mix:
        """All templates of one skill, with a share of the base mix replayed."""
        return Mix((MixPart(skill, 1.0 - self.replay), *self.base_mix().scaled(self.replay)))

    def union_mix(self) -> Mix:
        """The experts' data together (the fine-tuning-on-all-data baseline)."""
        return union_mix([self.expert_mix(s) for s in SKILLS])

    @property
    def union(self) -> TrainSettings:
        """Fine-tuning on all data: as many steps as the three experts together."""
        return replace(self.expert, steps=self.expert.steps * len(SKILLS))


def cache_root() -> Path:
    """The cache folder: ``$CYCLEQD_CACHE``, ``$XDG_CACHE_HOME/cycleqd`` or ``~/.cache/cycleqd``."""
    if os.environ.get("CYCLEQD_CACHE"):
        return Path(os.environ["CYCLEQD_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cycleqd"


@dataclass(frozen=True)
class RecipeModels:
    """The models of a recipe, as Hugging Face folders.

    Attributes:
        folder: The cache folder holding them.
        base: The base model.
        experts: Skill → expert.
        union: The model fine-tuned on all experts' data.
        trained: Whether they were trained by this call (else loaded from the cache).
        seconds: Training time per model (from when they were trained).
    """

    folder: Path
    base: Path
    experts: dict[str, Path]
    union: Path
    trained: bool
    seconds: dict[str, float]


Progress = Callable[[str, int, int, float | None], None]
"""Called as progress(model, step, steps, loss) while training."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a second demo waits for the first one's training
        yield


def models_folder(recipe: Recipe, root: Path | None = None) -> Path:
    """Where a recipe's models are cached."""
    return (root or cache_root()) / "demo-models" / recipe.key


def load_cached(recipe: Recipe, *, root: Path | None = None) -> RecipeModels | None:
    """The recipe's models if the cache holds them complete, else ``None``."""
    folder = models_folder(recipe, root)
    info_path = folder / "recipe.json"
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    return RecipeModels(
        folder=folder,
        base=folder / "base",
        experts={s: folder / f"expert-{s}" for s in SKILLS},
        union=folder / "union",
        trained=False,
        seconds=info.get("seconds", {}),
    )


def build_or_load(
    recipe: Recipe,
    *,
    root: Path | None = None,
    progress: Progress | None = None,
    splits: Mapping[str, SkillSplits] | None = None,
) -> RecipeModels:
    """Load a recipe's models from the cache, or train and cache them.

    The models are built in a temporary folder and renamed into place when all are saved, so an
    interrupted build leaves nothing that a later call would take for a finished one.

    Args:
        recipe: The recipe.
        root: Cache folder (default: :func:`cache_root`).
        progress: Training progress callback.
        splits: The recipe's splits, when the caller has them already.

    Returns:
        The models.

    Raises:
        CycleQDError: When the cache folder cannot be written.
    """
    cached = load_cached(recipe, root=root)
    if cached is not None:
        return cached
    folder = models_folder(recipe, root)
    with _locked(folder.with_name(folder.name + ".lock")):
        cached = load_cached(recipe, root=root)  # built by another process while we waited
        if cached is not None:
            return cached
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise CycleQDError(
                f"cannot write the model cache in {folder.parent}: {exc}; "
                "set CYCLEQD_CACHE to a writable folder"
            ) from exc
        try:
            seconds = _train_all(recipe, tmp, splits or recipe.splits(), progress)
            info = {"recipe": recipe.describe(), "key": recipe.key, "seconds": seconds}
            (tmp / "recipe.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    models = load_cached(recipe, root=root)
    assert models is not None
    return replace(models, trained=True)


def _train_all(
    recipe: Recipe, out: Path, splits: Mapping[str, SkillSplits], progress: Progress | None
) -> dict[str, float]:
    torch.set_num_threads(THREADS)
    tokenizer = build_tokenizer()
    seconds: dict[str, float] = {}

    def stage(name: str, start: Path | None, mix: Mix, settings: TrainSettings, seed: str) -> None:
        t0 = time.perf_counter()
        model = load_model(start) if start else new_model(recipe.shape, tokenizer, seed=recipe.seed)

        def report(step: int, loss: float) -> None:
            if progress is not None:
                progress(name, step + 1, settings.steps, loss)

        if progress is not None:
            progress(name, 0, settings.steps, None)
        train(model, tokenizer, mix, splits, settings, seed=hash_seed(recipe.seed, seed), progress=report)
        save_hf_model(model, tokenizer, out / name)
        seconds[name] = time.perf_counter() - t0

    stage("base", None, recipe.base_mix(), recipe.base, "base")
    for skill in SKILLS:
        stage(f"expert-{skill}", out / "base", recipe.expert_mix(skill), recipe.expert, skill)
    stage("union", out / "base", recipe.union_mix(), recipe.union, "union")
    return seconds


def hash_seed(*parts: object) -> int:
    """A seed derived from labels (stable across processes, unlike ``hash``)."""
    from cycleqd.seeding import derive_seed

    return derive_seed("demo", *parts) % (2**31)
