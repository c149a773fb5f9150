# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The ``medsora`` verbs: thin layers over the bundle's own runs, for people who do not know MONAI bundles.

Every verb runs the same configs as ``python -m monai.bundle run ...`` (which stays the interface for MONAI users);
what a verb adds is a default run directory, resuming, and short output.
"""

import json
import os
import re
import shutil
import subprocess
import sys

from medsora.cli.pipeline import Stage, run_pipeline
from medsora.cli.runner import find_bundle_root, parse_configs
from medsora.progress import format_duration

__all__ = ["Commands", "DEMO_QUERY"]

TRAIN = ("train.yaml",)
TEXT = ("train.yaml", "text.yaml")
EVALUATE = ("train.yaml", "evaluate.yaml")
#: the demo's closing example, a classic presentation whose answer a reader can check
DEMO_QUERY = "Colicky pain in the right upper quadrant after fatty meals, with nausea"
SHIPPED_FILES = ("model.pt", "text_anchors.pt", "text_model.pt", "domain_gate.pt", "alignment.pt")
CONVENTION_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
#: `--quick`: five small phantom CTs and short schedules, to check a set-up quickly (the models are weak)
QUICK = {
    "phantom#num_cases": 5,
    "phantom#num_validation": 2,
    "epochs": 2,
    "batch_size": 3,
    "anchor_epochs": 20,
    "text_epochs": 20,
    "gate_epochs": 20,
    "align_epochs": 10,
}


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _image_summary(run_dir: str) -> str:
    report = _read_json(os.path.join(run_dir, "eval", "image_metrics.json"))
    return f"organ accuracy {report['accuracy']:.3f} on {report['samples']} held-out organ samples"


def _text_summary(run_dir: str) -> str:
    """The test split's scores of the scorer `query` uses: the fused one when the run built it."""
    test = _read_json(os.path.join(run_dir, "eval", "text_metrics.json"))["test"]
    fused = "Med-SORA fused (retrieval + learned)" in test
    scores = test["Med-SORA fused (retrieval + learned)" if fused else "Med-SORA"]
    ood = test["out-of-domain, fused" if fused else "out-of-domain"]
    return (
        f"test Rank-1 {scores['Rank-1']:.3f}, class-wise mAP {scores['mAP (class-wise)']:.3f}, "
        f"out-of-domain AUROC {ood['AUROC']:.3f}"
    )


PREPARE = Stage("data", "generate the phantom CTs", TRAIN, "prepare_data", ("data/phantom/dataset_0.json",), 20)
TRAIN_IMAGE = Stage("image", "train the image network", TRAIN, "training", ("models/model.pt",), 195)
EVALUATE_IMAGE = Stage(
    "evaluate",
    "score it on the held-out CTs",
    EVALUATE,
    "evaluate_image",
    ("eval/image_metrics.json",),
    5,
    _image_summary,
)
TRAIN_TEXT = Stage("text", "train the text side", TEXT, "train_text", ("models/alignment.pt",), 65, _text_summary)


def _convention(name: str) -> str:
    """A label convention name reaches the config as a name, never as an expression."""
    if not isinstance(name, str) or not CONVENTION_NAME.match(name):
        raise ValueError(
            f"--label_convention must be a convention name such as btcv or totalsegmentator, got {name!r}."
        )
    return name


def _run_overrides(run_dir: str, dataset_dir: str | None, label_convention: str) -> dict:
    """Everything a pipeline writes goes under ``run_dir``; ``dataset_dir`` (real data) is only read."""
    overrides = {
        "phantom_dir": os.path.join(run_dir, "data", "phantom"),
        "ckpt_dir": os.path.join(run_dir, "models"),
        "output_dir": os.path.join(run_dir, "eval"),
        "text_cache_dir": os.path.join(run_dir, "cache"),
        "label_convention": _convention(label_convention),
    }
    if dataset_dir is not None:
        if not os.path.isdir(dataset_dir):
            raise FileNotFoundError(f"--dataset_dir {dataset_dir} is not a directory.")
        overrides["dataset_dir"] = os.path.abspath(dataset_dir)
    return overrides


def _install(run_dir: str, bundle_root: str) -> None:
    """Copy the run's trained weights over the bundle's shipped ones (only when asked)."""
    for name in SHIPPED_FILES:
        shutil.copyfile(os.path.join(run_dir, "models", name), os.path.join(bundle_root, "models", name))
    print(f"installed the trained weights into {os.path.join(bundle_root, 'models')}")


class Commands:
    """Med-SORA: rank the abdominal organs a symptom text points to, on reference organs or on a patient's own CT.

    Every verb takes --bundle_root DIR (default: the bundle of this checkout, or $MEDSORA_BUNDLE) and --debug (show
    the traceback of an error). `medsora VERB --help` lists a verb's options with their defaults.
    """

    def query(
        self,
        text: str | None = None,
        queries_file: str | None = None,
        output_file: str | None = None,
        image: str | None = None,
        label: str | None = None,
        label_convention: str = "btcv",
        maps_dir: str | None = None,
        ckpt_dir: str | None = None,
        bundle_root: str | None = None,
    ) -> None:
        """Rank the seven organs for a symptom text (or every line of a JSONL file), optionally on a patient's CT.

        A score is an organ's relevance to the symptoms, in [0, 1]; scores are not probabilities and need not sum to
        one. The printout also says whether the text points to the abdomen (its P(abdominal) against the threshold)
        and names the corpus text behind each top organ.

        Args:
            text: the symptom text, e.g. "painless jaundice and weight loss".
            queries_file: instead of text: a JSONL file, one {"text": ...} per line.
            output_file: where the answers to --queries_file go (JSONL, one answer per line).
            image: the patient's CT: a NIfTI file or a DICOM series directory.
            label: its organ label map on the same grid, ids in --label_convention.
            label_convention: the label ids of --label: btcv (liver 6, pancreas 11, kidneys 2 and 3, gallbladder 4,
                spleen 1, stomach 7, adrenals 12 and 13) or totalsegmentator (TotalSegmentator v2 "total").
            maps_dir: where the probability maps and pictures of --image go (default: the bundle's eval/query_maps).
            ckpt_dir: the trained weights to use (default: the bundle's shipped models/).
            bundle_root: the Med-SORA bundle directory.
        """
        from medsora.query import run_query

        root = find_bundle_root(bundle_root)
        answers = {"text": text, "queries_file": queries_file, "output_file": output_file}
        overrides = {"label_convention": _convention(label_convention), "image": image, "label": label, **answers}
        if ckpt_dir is not None:
            overrides["ckpt_dir"] = os.path.abspath(ckpt_dir)
        if maps_dir is not None:
            overrides["maps_dir"] = maps_dir
        parser = parse_configs(root, ("inference.yaml",), overrides)
        if image is None and label is None:  # text only: the image side is not built
            run_query(parser.get_parsed_content("query_model"), **answers)
        else:  # the bundle's own query on a CT, the same config item `run query` instantiates
            parser.get_parsed_content("query_answers")

    def demo(
        self, run_dir: str | None = None, quick: bool = False, install: bool = False, bundle_root: str | None = None
    ) -> None:
        """The whole pipeline on generated phantom CTs and the shipped corpus, then an example query.

        Stages: generate the phantom, train the image network, score it on held-out CTs, train the text side, rank
        the organs for an example. A rerun skips the stages whose outputs are current, so an interrupted demo
        continues where it stopped. The shipped weights in the bundle are never touched unless --install is given.

        Args:
            run_dir: where every output goes (data, models, metrics); default: the bundle's runs/demo.
            quick: five small CTs and short schedules: checks a set-up; the models are weak.
            install: copy the trained weights over the bundle's shipped ones at the end.
            bundle_root: the Med-SORA bundle directory.
        """
        root = find_bundle_root(bundle_root)
        run_dir = os.path.abspath(run_dir or os.path.join(root, "runs", "demo"))
        stages = (PREPARE, TRAIN_IMAGE, EVALUATE_IMAGE, TRAIN_TEXT)
        overrides = {**_run_overrides(run_dir, None, "btcv"), **(QUICK if quick else {})}
        elapsed = run_pipeline(stages, root, run_dir, overrides)
        print(f"all stages done in {format_duration(elapsed)}; the example query on the trained models:\n")
        self.query(DEMO_QUERY, ckpt_dir=os.path.join(run_dir, "models"), bundle_root=root)
        if install:
            _install(run_dir, root)

    def train(
        self,
        dataset_dir: str | None = None,
        label_convention: str = "btcv",
        run_dir: str | None = None,
        install: bool = False,
        bundle_root: str | None = None,
    ) -> None:
        """Train the image network, score it on the validation CTs, then train the text side against it.

        Args:
            dataset_dir: CTs in the BTCV layout (imagesTr/, labelsTr/, dataset_0.json with training and validation
                lists); without it, generated phantom CTs.
            label_convention: the label ids of the label maps (btcv, totalsegmentator, or one added to the configs).
            run_dir: where every output goes (default: the bundle's runs/train); a rerun resumes at the first stage
                that is not current.
            install: copy the trained weights over the bundle's shipped ones at the end.
            bundle_root: the Med-SORA bundle directory.
        """
        root = find_bundle_root(bundle_root)
        run_dir = os.path.abspath(run_dir or os.path.join(root, "runs", "train"))
        stages = (TRAIN_IMAGE, EVALUATE_IMAGE, TRAIN_TEXT)
        elapsed = run_pipeline(stages, root, run_dir, _run_overrides(run_dir, dataset_dir, label_convention))
        print(f"trained in {format_duration(elapsed)}: weights in {os.path.join(run_dir, 'models')}")
        if install:
            _install(run_dir, root)

    def evaluate(
        self,
        ckpt_dir: str | None = None,
        dataset_dir: str | None = None,
        label_convention: str = "btcv",
        run_dir: str | None = None,
        tables: bool = False,
        bundle_root: str | None = None,
    ) -> None:
        """Score the image network on the validation CTs; with --tables, regenerate the paper's tables and figures.

        Args:
            ckpt_dir: the trained weights to score (default: the bundle's shipped models/).
            dataset_dir: CTs in the BTCV layout; default: generated phantom CTs.
            label_convention: the label ids of the label maps.
            run_dir: where metrics, reports and figures go (default: the bundle's runs/evaluate).
            tables: also retrain every row of the paper's Tables 2-4 over three seeds (19 minutes on two shared CPU
                cores) and write report.md with the figures.
            bundle_root: the Med-SORA bundle directory.
        """
        from medsora.cli.runner import run_workflow

        root = find_bundle_root(bundle_root)
        run_dir = os.path.abspath(run_dir or os.path.join(root, "runs", "evaluate"))
        overrides = _run_overrides(run_dir, dataset_dir, label_convention)
        overrides["ckpt_dir"] = os.path.abspath(ckpt_dir) if ckpt_dir else os.path.join(root, "models")
        run_workflow(root, EVALUATE, "evaluate" if tables else "evaluate_image", overrides)  # prints the report
        if tables:
            print(f"tables and figures: {os.path.join(run_dir, 'eval', 'report.md')}")

    def serve(
        self,
        studies: str,
        address: str = "127.0.0.1",
        port: int = 8000,
        label_convention: str = "btcv",
        bundle_root: str | None = None,
    ) -> None:
        """Serve the bundle from MONAI Label (3D Slicer or HTTP): CT, label map and symptom text in, the organ
        probability map and ranking out. Needs the MONAI Label environment (README.md).

        Args:
            studies: the MONAI Label datastore directory (CTs, and organ label maps under labels/organs/).
            address: the address to listen on.
            port: the port to listen on.
            label_convention: the label ids of the label maps.
            bundle_root: the Med-SORA bundle directory.
        """
        root = find_bundle_root(bundle_root)
        app = os.path.join(os.path.dirname(root), "integrations", "monai_label")
        executable = shutil.which("monailabel")
        if executable is None or not os.path.isdir(app):
            raise FileNotFoundError(
                "serving needs MONAI Label and the repository's integrations/monai_label app: create the .venv-label "
                "environment with README.md's MONAI Label command and run medsora serve from it."
            )
        command = [
            executable,
            "start_server",
            "--app",
            app,
            "--studies",
            studies,
            "--host",
            address,
            "--port",
            str(port),
        ]
        command += ["--conf", "bundle_root", root, "--conf", "label_convention", _convention(label_convention)]
        print(f"MONAI Label at http://{address}:{port} (Ctrl-C stops it)", flush=True)
        sys.exit(subprocess.call(command))
