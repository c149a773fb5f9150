# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Every row of the paper's tables, trained for each seed through the bundle's own configs.

A row is never a code path of its own: it is ``run training`` / ``run train_anchors`` ... ``run align`` of
train.yaml and text.yaml with overrides (an ablation file, ``label_mode``, another text encoder, the seed), exactly
what a user would type. Each finished run leaves a ``<run_id>.done`` marker, so an interrupted evaluation resumes
where it stopped and a finished one is only re-scored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

from medsora.atomic_io import write_json_atomic
from medsora.literal_options import literal_overrides
from medsora.text.soft_labels import LABEL_MODES, uses_anchors

__all__ = ["Alignment", "ExperimentGrid", "slug"]

TEXT_FILES = ("text_anchors.pt", "text_model.pt", "domain_gate.pt")


def slug(name: str) -> str:
    """A directory name for a row name such as ``"2D+3D (cross-Attn)"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class Alignment:
    """One trained query model: an image structure, a text encoder and a labelling, for one seed."""

    seed: int
    structure: str
    encoder: str
    labeling: str

    @property
    def name(self) -> str:
        return f"{slug(self.structure)}-{slug(self.encoder)}-{slug(self.labeling)}"


class ExperimentGrid:
    """Train and score the image structures, labellings and text encoders of the paper's tables.

    Args:
        configs_dir: the bundle's ``configs`` directory (train.yaml, text.yaml, evaluate.yaml).
        work_dir: where every run writes its models and metrics (``seed<k>/...``).
        seeds: seeds of the repeated runs; each sets ``seed`` (image) and ``text_seed`` (text stages).
        image_structures: Table 3 row name -> ablation config file merged over train.yaml, or ``None`` for train.yaml
            itself (the cross-attention fusion).
        labelings: Table 2 row name -> ``label_mode`` (one of ``soft_labels.LABEL_MODES``).
        text_encoders: Table 4 row name -> overrides of ``text_encoder_def`` (``{}`` for the configured default).
        default_structure, default_labeling, default_encoder: the full Med-SORA model's row names; every other
            row changes one of them.
        overrides: config values handed to every run (data, label convention, corpus, device).
        schedule: epoch counts handed to every run (``epochs``, ``val_interval``, ``anchor_epochs``, ...).
        preset_files: config files merged over every run before the ablation (``paper.yaml`` for the paper preset).
    """

    def __init__(
        self,
        configs_dir: str,
        work_dir: str,
        seeds: Sequence[int],
        image_structures: Mapping[str, str | None],
        labelings: Mapping[str, str],
        text_encoders: Mapping[str, Mapping[str, Any]],
        default_structure: str,
        default_labeling: str,
        default_encoder: str,
        overrides: Mapping[str, Any],
        schedule: Mapping[str, Any] | None = None,
        preset_files: Sequence[str] = (),
    ) -> None:
        for name, table, value in (
            ("default_structure", image_structures, default_structure),
            ("default_labeling", labelings, default_labeling),
            ("default_encoder", text_encoders, default_encoder),
        ):
            if value not in table:
                raise ValueError(f"evaluation#{name} {value!r} is not one of the configured rows {list(table)}.")
        if not seeds:
            raise ValueError("evaluation#seeds is empty; give at least one seed.")
        for mode in labelings.values():
            if mode not in LABEL_MODES:
                raise ValueError(f"evaluation#labelings: label_mode must be one of {list(LABEL_MODES)}, got {mode!r}.")
        self.configs_dir, self.work_dir = configs_dir, work_dir
        self.seeds = [int(s) for s in seeds]
        self.image_structures, self.labelings = dict(image_structures), dict(labelings)
        self.text_encoders = {name: dict(values or {}) for name, values in text_encoders.items()}
        self.default = Alignment(-1, default_structure, default_encoder, default_labeling)
        self.schedule = dict(schedule or {})
        self.overrides = {**self.schedule, **overrides}
        self.preset_files = list(preset_files)

    def _config(self, name: str) -> str:
        return os.path.join(self.configs_dir, name)

    def alignments(self, seed: int) -> list[Alignment]:
        """The query models one seed needs: the full model, and one per row that changes one of its parts."""
        d = self.default
        rows = [Alignment(seed, s, d.encoder, d.labeling) for s in self.image_structures]
        rows += [Alignment(seed, d.structure, d.encoder, lab) for lab in self.labelings]
        rows += [Alignment(seed, d.structure, enc, d.labeling) for enc in self.text_encoders]
        return list(dict.fromkeys(rows))

    def config_files(self, structure: str, *extra: str) -> list[str]:
        """train.yaml, then ``extra`` (text.yaml, evaluate.yaml), the preset and the structure's ablation file."""
        ablation = self.image_structures[structure]
        return [
            self._config("train.yaml"),
            *(self._config(name) for name in extra),
            *self.preset_files,
            *([ablation] if ablation else []),
        ]

    def seed_dir(self, seed: int) -> str:
        return os.path.join(self.work_dir, f"seed{seed}")

    def image_dir(self, seed: int, structure: str) -> str:
        return os.path.join(self.seed_dir(seed), "image", slug(structure))

    def text_dir(self, seed: int, encoder: str, labeling: str) -> str:
        return os.path.join(self.seed_dir(seed), "text", f"{slug(encoder)}-{slug(labeling)}")

    def alignment_dir(self, alignment: Alignment) -> str:
        return os.path.join(self.seed_dir(alignment.seed), "align", alignment.name)

    def run_overrides(self, run_dir: str, seed: int, encoder: str | None = None, labeling: str | None = None) -> dict:
        """The overrides of one run: shared values, the seed, the run's own directories and its text choices."""
        values = {
            **self.overrides,
            "seed": seed,
            "text_seed": seed,
            "ckpt_dir": os.path.join(run_dir, "models"),
            "output_dir": os.path.join(run_dir, "eval"),
        }
        if encoder is not None:
            values.update({f"text_encoder_def#{key}": value for key, value in self.text_encoders[encoder].items()})
        if labeling is not None:
            values["label_mode"] = self.labelings[labeling]
        return values

    def _run(self, run_dir: str, config_files: list[str], run_id: str, overrides: Mapping[str, Any]) -> None:
        """Run one bundle workflow unless its marker says it finished before with the same settings."""
        marker = os.path.join(run_dir, f"{run_id}.done")
        settings = {
            "config_file": [os.path.basename(f) for f in config_files],
            "run_id": run_id,
            "overrides": json.loads(json.dumps(dict(overrides), sort_keys=True, default=str)),
        }
        if os.path.isfile(marker):
            with open(marker) as f:
                if json.load(f) == settings:
                    return
            raise RuntimeError(
                f"{run_dir} holds a finished {run_id} run with other settings (see {marker}); delete "
                "that directory to retrain it, or give another --evaluation#work_dir."
            )
        print(f"[evaluate] {run_id}: {os.path.relpath(run_dir, self.work_dir)}", flush=True)
        # MONAI logs two set-up notices for every workflow it builds; this command showed them once already
        notices = logging.getLogger("monai.bundle.workflows")
        level = notices.level
        notices.setLevel(logging.WARNING)
        try:
            workflow = ConfigWorkflow(
                config_file=config_files, workflow_type=None, run_id=run_id, **literal_overrides(overrides)
            )
        finally:
            notices.setLevel(level)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        write_json_atomic(marker, settings)

    def train_image(self, seed: int, structure: str) -> dict:
        """``run training`` then the image evaluation of one structure; returns its per-organ image metrics."""
        run_dir = self.image_dir(seed, structure)
        overrides = self.run_overrides(run_dir, seed)
        self._run(run_dir, self.config_files(structure), "training", overrides)
        self._run(run_dir, self.config_files(structure, "evaluate.yaml"), "evaluate_image", overrides)
        with open(os.path.join(run_dir, "eval", "image_metrics.json")) as f:
            return json.load(f)

    def train_text(self, seed: int, encoder: str, labeling: str) -> str:
        """The text stages that do not need the image network; returns the directory of their weights."""
        run_dir = self.text_dir(seed, encoder, labeling)
        files = self.config_files(self.default.structure, "text.yaml")
        overrides = self.run_overrides(run_dir, seed, encoder, labeling)
        if uses_anchors(self.labelings[labeling]):
            self._run(run_dir, files, "train_anchors", overrides)
        self._run(run_dir, files, "train_text_model", overrides)
        self._run(run_dir, files, "train_domain_gate", overrides)
        return os.path.join(run_dir, "models")

    def align(self, alignment: Alignment) -> dict:
        """``run align`` of one image structure with one text model; returns its ``text_metrics.json``."""
        run_dir = self.alignment_dir(alignment)
        models = os.path.join(run_dir, "models")
        os.makedirs(models, exist_ok=True)
        sources = {"model.pt": os.path.join(self.image_dir(alignment.seed, alignment.structure), "models")}
        text_models = os.path.join(self.text_dir(alignment.seed, alignment.encoder, alignment.labeling), "models")
        sources.update({name: text_models for name in TEXT_FILES})
        for name, source in sources.items():
            if os.path.isfile(os.path.join(source, name)):  # hard labels have no anchors
                shutil.copyfile(os.path.join(source, name), os.path.join(models, name))
        files = self.config_files(alignment.structure, "text.yaml")
        overrides = self.run_overrides(run_dir, alignment.seed, alignment.encoder, alignment.labeling)
        self._run(run_dir, files, "align", overrides)
        with open(os.path.join(run_dir, "eval", "text_metrics.json")) as f:
            return json.load(f)

    def parser(self, alignment: Alignment) -> ConfigParser:
        """The parsed config of a trained query model, for figures: its corpus, networks and weights."""
        parser = ConfigParser()
        parser.read_config(self.config_files(alignment.structure, "text.yaml"))
        overrides = self.run_overrides(
            self.alignment_dir(alignment), alignment.seed, alignment.encoder, alignment.labeling
        )
        parser.update(literal_overrides(overrides))
        return parser

    def run(self) -> dict[int, dict[str, Any]]:
        """Train and score everything.

        Returns:
            ``{seed: {"image": {structure: metrics}, "alignments": {Alignment: metrics}}}``.
        """
        results: dict[int, dict[str, Any]] = {}
        for seed in self.seeds:
            alignments = self.alignments(seed)
            image = {s: self.train_image(seed, s) for s in dict.fromkeys(a.structure for a in alignments)}
            for pair in dict.fromkeys((a.encoder, a.labeling) for a in alignments):
                self.train_text(seed, *pair)
            results[seed] = {"image": image, "alignments": {a: self.align(a) for a in alignments}}
        return results
