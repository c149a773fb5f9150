"""What the MONAI model zoo checks before it takes a bundle: files, metadata, version, large files, runnable configs."""

import fnmatch
import hashlib
import json
import os
import re

import pytest
import yaml
from helpers import BUNDLE_ROOT, CONFIGS, EVALUATE, INFERENCE, TINY_IMAGE, TRAIN
from monai.bundle import ConfigWorkflow, verify_metadata

import medsora

META_FILE = os.path.join(CONFIGS, "metadata.json")
SCHEMA = os.path.join(BUNDLE_ROOT, "docs", "meta_schema.json")
LOGGING = os.path.join(CONFIGS, "logging.conf")
LARGE_FILES = os.path.join(BUNDLE_ROOT, "large_files.yml")
MAX_FILE_BYTES = 25 * 1000 * 1000  # the model zoo's limit for a file kept in its repository
# written at run time, never part of a submission: generated data, logs and reports, caches, resumable training state
RUN_TIME_DIRS = {"data", "eval", "cache", "runs", "__pycache__"}
RUN_TIME_FILES = ["models/checkpoint_epoch=*.pt"]
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
# the model zoo's own tiny-data unit tests, adapted: five small phantom CTs, one epoch
TINY = {**TINY_IMAGE, "phantom#shape": [64, 64, 32], "epochs": 1}


def metadata() -> dict:
    with open(META_FILE) as f:
        return json.load(f)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def submitted_files() -> dict[str, int]:
    """Bundle files a model-zoo pull request would hold, relative to the bundle root, with their sizes."""
    files = {}
    for root, dirs, names in os.walk(BUNDLE_ROOT):
        if root == BUNDLE_ROOT:
            dirs[:] = [d for d in dirs if d not in RUN_TIME_DIRS]
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            path = os.path.relpath(os.path.join(root, name), BUNDLE_ROOT).replace(os.sep, "/")
            if not any(fnmatch.fnmatch(path, pattern) for pattern in RUN_TIME_FILES):
                files[path] = os.path.getsize(os.path.join(root, name))
    return files


@pytest.mark.parametrize(
    "path",
    [
        "configs/metadata.json",
        "configs/inference.yaml",
        "configs/logging.conf",
        "models",
        "docs/README.md",
        "docs/data_license.txt",
        "LICENSE",
        "large_files.yml",
    ],
)
def test_required_files_are_present(path):
    full = os.path.join(BUNDLE_ROOT, path)
    assert os.path.isdir(full) if path == "models" else os.path.isfile(full) and os.path.getsize(full) > 0, path


def test_metadata_has_the_fields_the_model_zoo_reads():
    meta = metadata()
    for field in (
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "task",
        "description",
        "authors",
        "copyright",
        "name",
    ):
        assert isinstance(meta.get(field), str) and meta[field].strip(), field
    packages = meta["required_packages_version"]
    assert packages and all(isinstance(v, str) and v for v in packages.values())
    for part in ("inputs", "outputs"):
        tensors = meta["network_data_format"][part]
        assert tensors, part
        for name, spec in tensors.items():
            assert {"type", "format", "num_channels", "spatial_shape", "dtype"} <= set(spec), f"{part}#{name}"


def test_version_is_semver_and_its_changelog_entry_is_the_newest():
    """Every change bumps `version` and adds its changelog entry first; the zoo refuses a version it has released."""
    meta = metadata()
    changelog = meta["changelog"]
    assert SEMVER.match(meta["version"]), meta["version"]
    assert all(SEMVER.match(key) for key in changelog), list(changelog)
    assert max(changelog, key=version_key) == meta["version"] == next(iter(changelog))
    assert all(isinstance(text, str) and text.strip() for text in changelog.values())


def test_the_library_the_configs_name_is_a_required_package_of_this_version():
    """A zoo user installs the required packages; the configs' medsora.* targets come from the med-sora library, which
    is released together with the bundle under the same version."""
    meta = metadata()
    assert meta["required_packages_version"]["med-sora"] == medsora.__version__ == meta["version"]


def test_metadata_validates_against_the_shipped_schema(tmp_path):
    digest = hashlib.md5(open(SCHEMA, "rb").read()).hexdigest()  # the schema's integrity is checked too
    verify_metadata(meta_file=META_FILE, filepath=SCHEMA, hash_val=digest)
    broken = {k: v for k, v in metadata().items() if k != "copyright"}
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    (tmp_path / "schema.json").write_text(open(SCHEMA).read())  # present, so nothing is downloaded
    with pytest.raises(ValueError, match="'copyright' is a required property"):
        verify_metadata(
            meta_file=str(tmp_path / "metadata.json"), filepath=str(tmp_path / "schema.json"), hash_val=digest
        )


def test_every_file_over_25_mb_is_listed_in_large_files_yml():
    with open(LARGE_FILES) as f:
        entries = yaml.safe_load(f)["large_files"]
    assert isinstance(entries, list)
    listed = set()
    for entry in entries:
        assert {"path", "url"} <= set(entry), entry
        assert not os.path.isabs(entry["path"]) and ".." not in entry["path"].split("/"), entry["path"]
        assert entry["url"].startswith("https://"), entry["url"]
        assert entry.get("hash_type", "") in ("", "md5", "sha1", "sha256", "sha512"), entry
        listed.add(entry["path"])
    files = submitted_files()
    assert "configs/metadata.json" in files and "configs/inference.yaml" in files
    unlisted = {path: size for path, size in files.items() if size > MAX_FILE_BYTES and path not in listed}
    assert not unlisted, f"files over 25 MB must be listed in {LARGE_FILES} (and left out of a submission): {unlisted}"


def workflow(config_file, workflow_type, **overrides) -> ConfigWorkflow:
    """A bundle workflow set up the way the model zoo's unit tests set one up."""
    flow = ConfigWorkflow(
        config_file=config_file,
        workflow_type=workflow_type,
        meta_file=META_FILE,
        logging_file=LOGGING,
        bundle_root=BUNDLE_ROOT,
        **overrides,
    )
    flow.initialize()
    return flow


def finish(flow: ConfigWorkflow) -> None:
    flow.run()
    flow.finalize()


@pytest.mark.slow
def test_train_evaluate_and_inference_run_in_process(tmp_path):
    dirs = {
        "phantom_dir": str(tmp_path / "phantom"),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
    }
    trainer = workflow(TRAIN, "train", **dirs, **TINY)
    assert trainer.check_properties() == []  # the model zoo's required train properties
    finish(trainer)
    assert os.path.isfile(tmp_path / "models" / "model.pt")

    finish(workflow([TRAIN, EVALUATE], "eval", **dirs, **TINY))  # evaluate.yaml overrides train.yaml: no property check
    report = json.loads((tmp_path / "eval" / "image_metrics.json").read_text())
    assert report["samples"] == 2 * 7

    with open(tmp_path / "phantom" / "dataset_0.json") as f:
        case = json.load(f)["validation"][0]
    output = tmp_path / "eval" / "predictions.json"
    inferrer = workflow(
        INFERENCE,
        "infer",
        ckpt_dir=dirs["ckpt_dir"],
        output_dir=dirs["output_dir"],
        output_file=str(output),
        image=str(tmp_path / "phantom" / case["image"]),
        label=str(tmp_path / "phantom" / case["label"]),
    )
    assert inferrer.check_properties() == []
    finish(inferrer)
    (predictions,) = json.loads(output.read_text()).values()
    assert sorted(predictions) == sorted(
        ["liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland"]
    )
