from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from toyrun import cli, write_toy_config

from cycleqd.config import load_config
from cycleqd.errors import ConfigError


def _edit(path: Path, fn) -> Path:
    raw = yaml.safe_load(path.read_text())
    fn(raw)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_and_invalid_fields_are_named(tmp_path: Path) -> None:
    cfg = write_toy_config(tmp_path)

    def bad(raw):
        raw["mutation"]["rhoo"] = 0.1
        raw["selection"]["method"] = "best"
        raw["archive"]["bins"] = 0
        raw["generatoins"] = 3

    _edit(cfg, bad)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    msg = str(err.value)
    assert "mutation.rhoo: unknown field" in msg
    assert "selection.method" in msg
    assert "archive.bins" in msg
    assert "generatoins: unknown field" in msg


def test_experts_must_match_tasks(tmp_path: Path) -> None:
    cfg = _edit(write_toy_config(tmp_path), lambda r: r["models"]["experts"].pop("abs"))
    with pytest.raises(ConfigError, match="no expert for task\\(s\\) abs; give one expert per task"):
        load_config(cfg)


def test_config_errors_come_before_any_model_is_loaded(tmp_path: Path) -> None:
    # The base path is not a model at all: any attempt to load it would fail with a load error.
    cfg = write_toy_config(tmp_path, generations=2)
    _edit(cfg, lambda r: r["tasks"][0]["params"].update(targett="sine"))
    (tmp_path / "not_a_model.txt").write_text("nope")
    _edit(cfg, lambda r: r["models"].update(base=str(tmp_path / "not_a_model.txt")))
    proc = cli("run", str(cfg), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert "task sine" in proc.stderr
    assert "targett" in proc.stderr
    assert "not a weights file" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_relative_folder_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    cfg = _edit(write_toy_config(tmp_path), lambda r: r["models"]["experts"].update(abs="experts/abs"))
    proc = cli("run", str(cfg), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert f"models.experts.abs: {tmp_path / 'experts' / 'abs'} does not exist" in proc.stderr
    assert "relative ones are relative to its folder" in proc.stderr
    assert "written hf:ORG/NAME" in proc.stderr
    assert "huggingface" not in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_missing_model_path_is_reported_before_the_run_starts(tmp_path: Path) -> None:
    cfg = _edit(
        write_toy_config(tmp_path), lambda r: r["models"]["experts"].update(abs=str(tmp_path / "gone"))
    )
    proc = cli("run", str(cfg), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert f"models.experts.abs: {tmp_path / 'gone'} does not exist" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (
            "selection",
            {"alpha_low": 0.9, "alpha_high": 0.5},
            "alpha_low \\(0.9\\) must not exceed alpha_high",
        ),
        (
            "archive",
            {"low_factor": 1.2, "high_factor": 0.8},
            "low_factor \\(1.2\\) must not exceed high_factor",
        ),
        ("crossover", {"mean": 0.0, "std": 0.01}, "must be more than 3 std"),
        ("archive", {"bins": 1}, "bins: must be at least 2, got 1: with one bin each archive holds"),
        ("mutation", {"skip": ["norm("]}, "'norm\\(' is not a regular expression"),
    ],
)
def test_inconsistent_settings_are_refused_up_front(tmp_path: Path, section, values, message) -> None:
    cfg = write_toy_config(tmp_path, **{section: values})
    with pytest.raises(ConfigError, match=message) as err:
        load_config(cfg)
    assert f"{section}" in str(err.value)


def test_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from cycleqd.engine.state import RunState
    from cycleqd.errors import CycleQDError

    ck = tmp_path / "checkpoint.json"
    ck.write_text(
        '{"version": 1, "seed": 0, "tasks": [], "generation": 0, "generations": 1, '
        '"archives": {"format": "nope"}, "registry": [], "in_flight": [], "finished": false}'
    )
    with pytest.raises(CycleQDError, match="is not a readable checkpoint"):
        RunState.load(ck)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"preset": "fast"}, "preset: unknown preset 'fast'; choose one of paper, offplane"),
        ({"crossover": {"layer_std": 0.1}}, "layer_std applies to per-layer crossover; set per_layer: true"),
        ({"crossover": {"method": "slerp"}}, "slerp merges 1 model(s) with the base; a crossover merges two"),
        ({"crossover": {"method": "tie"}}, "unknown merge method 'tie'; choose one of linear"),
        ({"crossover": {"method": "ties", "params": {"densty": 0.5}}}, "ties has no parameter 'densty'"),
        ({"crossover": {"params": {"weight": 0.5}}}, "weight is drawn by the crossover"),
        ({"crossover": {"scale_std": -0.1}}, "crossover.scale_std"),
        ({"init": {"merges": [{"method": "slerp", "params": {"t": 0.5}}]}}, "slerp merges exactly 1 model"),
        ({"init": {"merges": [{"method": "ties", "params": {"lambda": "big"}}]}}, "lambda must be a number"),
        ({"final": {"top_k": 0}}, "final.top_k"),
    ],
)
def test_options_beyond_the_paper_are_checked(tmp_path: Path, change: dict, message: str) -> None:
    cfg = write_toy_config(tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert message in str(err.value)


def test_a_preset_sets_defaults_under_the_file(tmp_path: Path) -> None:
    cfg = load_config(write_toy_config(tmp_path, preset="offplane", crossover={"mean": 1.0, "std": 0.05}))
    assert cfg.preset == "offplane"
    assert cfg.crossover.std == 0.05  # the file wins
    assert cfg.crossover.per_layer  # the preset's
    assert cfg.crossover.scale_std == 0.1
    assert [m.method for m in cfg.init.merges] == [
        "linear",
        "task_arithmetic",
        "task_arithmetic",
        "task_arithmetic",
    ]
    assert cfg.init.distill is not None
    assert cfg.init.distill.optional
    assert cfg.init.distill.steps == 100
    (tmp_path / "paper").mkdir()
    paper = load_config(write_toy_config(tmp_path / "paper", preset="paper"))
    assert paper.crossover.std == 0.3  # examples/toy.yaml's own
    assert not paper.init.merges
    assert paper.init.distill is None
    (tmp_path / "own").mkdir()  # a field of the preset's distill section given by the file
    own = load_config(write_toy_config(tmp_path / "own", preset="offplane", init={"distill": {"steps": 7}}))
    assert own.init.distill is not None
    assert own.init.distill.steps == 7
    assert own.init.distill.optional
    assert len(own.init.merges) == 4


def _text_task(tmp_path: Path, lines: str) -> Path:
    """The toy config with its first task made a text task on ``lines``, and a base that is no model."""
    (tmp_path / "em.jsonl").write_text(lines)
    (tmp_path / "not_a_model.txt").write_text("nope")

    def edit(raw):
        raw["tasks"][0] = {"name": "sine", "kind": "exact_match", "data": str(tmp_path / "em.jsonl")}
        raw["models"]["base"] = str(tmp_path / "not_a_model.txt")

    return _edit(write_toy_config(tmp_path, generations=2), edit)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "".join(
                f'{{"id": 1, "prompt": "2+2=", "answer": "4", "split": "{split}"}}\n'
                for split in ("validation", "select", "test")
            ),
            "task(s) sine need a language-model backend, but evaluation.backend is weights",
        ),
        ("\n\n", "em.jsonl holds no items; write one JSON object per line"),
    ],
    ids=["text-task-on-weights", "empty-data-file"],
)
def test_task_errors_come_before_any_model_is_read_and_write_nothing(
    tmp_path: Path, lines: str, message: str
) -> None:
    cfg = _text_task(tmp_path, lines)
    proc = cli("run", str(cfg), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "not a weights file" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert not (tmp_path / "run" / "eval_cache.sqlite").exists()


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (
            "mutation",
            {"kind": "svd-self", "rho": 0.3},
            "rho is a setting of the svd-expert mutation, not of svd-self",
        ),
        (
            "mutation",
            {"kind": "none", "sigma": 0.1},
            "sigma is a setting of the gaussian mutation, not of none",
        ),
        (
            "selection",
            {"method": "uniform", "alpha_high": 0.9},
            "alpha_high is a setting of the elite selection",
        ),
        ("runner", {"kind": "local", "workers": 4}, "workers apply to the ray runner, not to local"),
    ],
)
def test_a_setting_of_another_kind_is_refused_naming_its_kind(
    tmp_path: Path, section, values, message
) -> None:
    raw = yaml.safe_load(write_toy_config(tmp_path).read_text())
    raw[section] = values
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "config.yaml")


def test_a_section_naming_another_kind_replaces_the_presets_section() -> None:
    from cycleqd.presets import merge_sections

    merged = merge_sections(
        {"mutation": {"kind": "svd-expert", "rho": 0.5}, "crossover": {"std": 0.1}},
        {"mutation": {"kind": "gaussian", "sigma": 0.01}, "crossover": {"mean": 1.0}},
    )
    assert merged == {"mutation": {"kind": "gaussian", "sigma": 0.01}, "crossover": {"std": 0.1, "mean": 1.0}}
    same = merge_sections({"kind": "svd-expert", "rho": 0.5}, {"kind": "svd-expert", "rank": 4})
    assert same == {"kind": "svd-expert", "rho": 0.5, "rank": 4}


def test_the_resolved_config_of_an_older_run_still_loads(tmp_path: Path) -> None:
    # Older run folders list every mutation field whatever the kind; unchanged defaults are accepted.
    raw = yaml.safe_load(write_toy_config(tmp_path).read_text())
    raw["mutation"] = {
        "kind": "gaussian",
        "rho": 0.1,
        "rank": None,
        "low": 0.9,
        "high": 1.1,
        "randomized_above": None,
        "randomized_rank": 256,
        "sigma": 0.002,
        "skip": ["norm"],
        "svd_cache": None,
    }
    raw["selection"] = {"method": "uniform", "alpha_low": 0.5, "alpha_high": 0.8}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.mutation.settings.model_dump() == {"sigma": 0.002}
    assert cfg.selection.settings.model_dump() == {}
