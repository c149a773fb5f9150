"""The MONAI Label app (integrations/monai_label) serves the bundle: a real server on 127.0.0.1, real NIfTI uploads.

Needs the [label] extra, in an environment of its own; without it every test here is skipped, naming the command
that makes that environment.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

# the [label] extra pins pydicom<3, which breaks the [test] extra: an environment of its own (README.md, .ci/run)
NEEDS_EXTRA = (
    "MONAI Label app tests need the [label] extra in an environment of its own: python3 -m venv .venv-label && "
    ". .venv-label/bin/activate && pip install torch==2.13.0 && pip list --format=freeze | grep -E "
    "'^(torch|torchvision)==' > .venv-label/torch-pins.txt && PIP_CONSTRAINT=.venv-label/torch-pins.txt pip install "
    '-e ".[label]" pytest && pip uninstall -y torchvision && python -m pytest -q tests/test_monai_label_app.py'
)
pytest.importorskip("monailabel", reason=NEEDS_EXTRA)

import httpx  # noqa: E402  (monailabel depends on both)
from helpers import BTCV, BUNDLE_ROOT, INFERENCE, ORGANS, REPO_ROOT  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from requests_toolbelt.multipart.decoder import MultipartDecoder  # noqa: E402

from medsora.image import phantom  # noqa: E402
from medsora.query import run_query  # noqa: E402

APP_DIR = os.path.join(REPO_ROOT, "integrations", "monai_label")
MODEL = "med_sora"
BILIARY_COLIC = "colicky right upper quadrant pain after fatty meals"
STARTUP_TIMEOUT_S = 180
# the test segmentation bundle: a 1x1x1 convolution whose argmax thresholds HU (<=60: 0, 61..150: 1, >150: 2),
# mapped to BTCV ids 0, 6 (liver) and 2 (right kidney)
SEGMENTATION_IDS = {1: 6, 2: 2}


def write_segmentation_bundle(root):
    """A complete MONAI segmentation bundle in the model-zoo layout, with real (hand-set) weights and, like zoo bundles,
    its own code in a ``scripts`` package that its config imports."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "scripts").mkdir()
    (root / "scripts" / "__init__.py").write_text("from . import networks\n")
    (root / "scripts" / "networks.py").write_text(
        "import torch\n\n\nclass VoxelClassifier(torch.nn.Conv3d):\n"
        "    def __init__(self, classes):\n        super().__init__(1, classes, 1)\n"
    )
    config = {
        "imports": ["$import torch", "$import scripts"],
        "bundle_root": ".",
        "network_def": {"_target_": "scripts.networks.VoxelClassifier", "classes": 3},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": True, "ensure_channel_first": True},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": True,
                },
                {
                    "_target_": "MapLabelValued",
                    "keys": "pred",
                    "orig_labels": [0, 1, 2],
                    "target_labels": [0, SEGMENTATION_IDS[1], SEGMENTATION_IDS[2]],
                },
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"},
            ],
        },
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (root / "configs" / "metadata.json").write_text(json.dumps({"version": "0.0.1", "name": "threshold organs"}))
    network = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():  # logits 0, x - 60.5, 2x - 211: class 1 for 60.5 < x < 150.5, class 2 above
        network.weight.copy_(torch.tensor([0.0, 1.0, 2.0]).reshape(3, 1, 1, 1, 1))
        network.bias.copy_(torch.tensor([0.0, -60.5, -211.0]))
    torch.save(network.state_dict(), root / "models" / "model.pt")


def expected_segmentation(ct):
    return np.where(ct > 150, SEGMENTATION_IDS[2], np.where(ct > 60, SEGMENTATION_IDS[1], 0))


def check_torchvision():
    """A torchvision that cannot load next to this torch breaks transformers and so the bundle's text encoder."""
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # a CUDA build of torchvision next to a CPU torch raises RuntimeError
        pytest.fail(
            f"torchvision is installed but does not import next to torch {torch.__version__} ({e}); install "
            "the torchvision build that matches torch, or uninstall it (integrations/monai_label/README.md)"
        )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("monai_label")
    ct, label, affine = phantom.generate_case((9, 1), shape=(64, 64, 32))
    paths = {"ct_file": root / "ct.nii.gz", "label_file": root / "labels.nii.gz"}
    nib.save(nib.Nifti1Image(ct, affine), paths["ct_file"])
    nib.save(nib.Nifti1Image(label, affine), paths["label_file"])
    studies = root / "studies"  # the datastore: image "patient1" with its organ label map under the tag "organs"
    (studies / "labels" / "organs").mkdir(parents=True)
    shutil.copy(paths["ct_file"], studies / "patient1.nii.gz")
    shutil.copy(paths["label_file"], studies / "labels" / "organs" / "patient1.nii.gz")
    write_segmentation_bundle(root / "threshold_bundle")
    return {"root": root, "ct": ct, "label": label, "affine": affine, "studies": studies, **paths}


@pytest.fixture(scope="module")
def server(case):
    """`monailabel start_server` with the app, as a user runs it; its log is shown when it fails."""
    check_torchvision()
    root = case["root"]
    app = root / "app"  # a copy: the server creates model/, logs/ and bin/ in its app directory
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "model", "logs", "bin"))
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    command = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(case["studies"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--conf",
        "bundle_root",
        BUNDLE_ROOT,
        "--conf",
        "segmentation_bundle",
        str(root / "threshold_bundle"),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env)

    def log_tail():
        return log.read_text(errors="replace")[-6000:]

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the MONAI Label server exited with {process.returncode}; its log:\n{log_tail()}")
            try:
                if httpx.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the MONAI Label server did not answer /info/ in {STARTUP_TIMEOUT_S} s; its log:\n{log_tail()}"
                )
            time.sleep(0.5)
        yield {"url": url, "log": log_tail}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def infer(server, output, params, files=None, image=None):
    query = {"output": output, **({"image": image} if image else {})}
    response = httpx.post(
        f"{server['url']}/infer/{MODEL}",
        params=query,
        data={"params": json.dumps(params)},
        files=files or {},
        timeout=120,
    )
    return response


def parse_all(server, response, tmp_path):
    """The JSON and the label volume of an ``output=all`` answer."""
    assert response.status_code == 200, f"{response.status_code} {response.text[:2000]}\nserver log:\n{server['log']()}"
    parts = {}
    for part in MultipartDecoder(response.content, response.headers["content-type"]).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="')[1].split('"')[0]
        parts[name] = part.content
    assert set(parts) == {"params", "image"}
    path = tmp_path / "result.nii.gz"
    path.write_bytes(parts["image"])
    return json.loads(parts["params"]), nib.load(path)


def uploads(case, label=True):
    files = {"file": ("ct.nii.gz", case["ct_file"].read_bytes(), "application/octet-stream")}
    if label:
        files["label"] = ("labels.nii.gz", case["label_file"].read_bytes(), "application/octet-stream")
    return files


def check_answer(answer):
    assert list(answer["scores"]) == ORGANS
    assert all(0.0 <= s <= 1.0 for s in answer["scores"].values())
    assert sorted(answer["ranking"]) == sorted(ORGANS)
    ranked = [answer["scores"][o] for o in answer["ranking"]]
    assert ranked == sorted(ranked, reverse=True)


def check_on_ct_grid(result, case):
    assert result.shape == case["ct"].shape
    np.testing.assert_allclose(result.affine, case["affine"], atol=1e-4)


@pytest.fixture(scope="module")
def bundle_query(case, tmp_path_factory):
    """The bundle's own `query` workflow on the same CT, label map and text."""
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser["bundle_root"] = BUNDLE_ROOT
    (answer,) = run_query(
        parser.get_parsed_content("query_model"),
        text=BILIARY_COLIC,
        image=str(case["ct_file"]),
        label=str(case["label_file"]),
        maps_dir=str(tmp_path_factory.mktemp("maps")),
        organ_labels=parser.get_parsed_content("organ_labels"),
        image_network=parser.get_parsed_content("network_def"),
        image_weights=os.path.join(BUNDLE_ROOT, "models", "model.pt"),
        preprocessing=parser.get_parsed_content("preprocessing"),
        device="cpu",
        image_gate=os.path.join(BUNDLE_ROOT, "models", "image_gate.json"),
    )
    return answer


def test_uploaded_ct_label_map_and_text_give_the_probability_map_and_the_ranking(server, case, bundle_query, tmp_path):
    response = infer(server, "all", {"text": BILIARY_COLIC}, uploads(case))
    answer, result = parse_all(server, response, tmp_path)
    check_answer(answer)
    assert answer["text"] == BILIARY_COLIC and answer["in_domain"] is True
    assert answer["p_abdominal"] == pytest.approx(bundle_query["p_abdominal"], abs=1e-6)  # what in_domain compared
    assert answer["ranking"][0] == "gallbladder"  # biliary colic, on this patient's organs
    assert answer["absent_organs"] == [] and answer["label_source"] == "request"
    assert answer["result_map"] == "probability" and answer["organ_labels"] == BTCV
    # the same answer as the bundle's query workflow on the same files
    assert answer["ranking"] == bundle_query["ranking"]
    assert answer["image_features"] == bundle_query["image_features"] and set(answer["image_features"]) == set(ORGANS)
    assert answer["cut_organs"] == bundle_query["cut_organs"]
    for organ in ORGANS:
        assert answer["scores"][organ] == pytest.approx(bundle_query["scores"][organ], abs=1e-5)
    # and the same evidence: corpus texts for the top organs, with their provenance
    assert answer["evidence"] == bundle_query["evidence"] and answer["evidence"][0]["organ"] == "gallbladder"
    assert all(item["provenance"]["source"] and item["provenance"]["identifier"] for item in answer["evidence"])
    check_on_ct_grid(result, case)
    assert result.get_data_dtype() == np.float32
    values, ids = result.get_fdata(), case["label"]
    for organ, organ_ids in BTCV.items():
        assert np.allclose(values[np.isin(ids, organ_ids)], answer["scores"][organ], atol=1e-6), organ
    assert np.all(values[~np.isin(ids, sum(BTCV.values(), []))] == 0.0)  # background, esophagus, vessels
    np.testing.assert_allclose(values, nib.load(bundle_query["probability_map"]).get_fdata(), atol=1e-5)


def test_a_request_without_text_is_refused_naming_the_text_field(server, case):
    for params in ({}, {"text": "   "}):
        response = infer(server, "json", params, uploads(case))
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert 'params must hold "text"' in detail and "'text' is empty" in detail


def test_a_datastore_image_uses_its_organs_label_and_the_ranking_map_names_the_organs(server, case, tmp_path):
    """What 3D Slicer's MONAI Label module does: "Next Sample" fetches a datastore image (images with a final label
    are not offered), then its auto-segmentation sends the image id, no uploads, the params from the model's options."""
    sample = httpx.post(f"{server['url']}/activelearning/random", json={}, timeout=30)
    assert sample.status_code == 200 and sample.json()["id"] == "patient1", sample.text
    response = infer(
        server, "all", {"text": "painless jaundice and weight loss", "result_map": "ranking"}, image="patient1"
    )
    answer, result = parse_all(server, response, tmp_path)
    check_answer(answer)
    assert answer["label_source"] == "datastore" and answer["result_map"] == "ranking"
    ranks = answer["rank_values"]
    assert ranks == {organ: rank for rank, organ in enumerate(answer["ranking"], 1)}
    assert answer["label_names"] == {f"{o} {answer['scores'][o]:.3f}": r for o, r in ranks.items()}
    check_on_ct_grid(result, case)
    values, ids = np.asarray(result.dataobj), case["label"]
    for organ, organ_ids in BTCV.items():
        assert np.all(values[np.isin(ids, organ_ids)] == ranks[organ]), organ
    assert np.all(values[~np.isin(ids, sum(BTCV.values(), []))] == 0)


def test_a_ct_without_label_map_is_segmented_by_the_configured_segmentation_bundle(server, case, tmp_path):
    response = infer(server, "all", {"text": BILIARY_COLIC}, uploads(case, label=False))
    answer, result = parse_all(server, response, tmp_path)
    check_answer(answer)
    assert answer["label_source"] == "segmentation_bundle"
    # the threshold bundle labels only liver (6) and right kidney (2); the other organs keep their reference score
    assert answer["absent_organs"] == ["pancreas", "gallbladder", "spleen", "stomach", "adrenal_gland"]
    check_on_ct_grid(result, case)
    values, segmentation = result.get_fdata(), expected_segmentation(case["ct"])
    assert np.allclose(values[segmentation == 6], answer["scores"]["liver"], atol=1e-6)
    assert np.allclose(values[segmentation == 2], answer["scores"]["kidney"], atol=1e-6)
    assert np.all(values[segmentation == 0] == 0.0)
    assert not (case["root"] / "threshold_bundle" / "eval").exists()  # the bundle's SaveImaged is skipped


def test_without_label_map_or_segmentation_bundle_the_error_names_both(case):
    spec = importlib.util.spec_from_file_location(
        "med_sora_label_organ_query", os.path.join(APP_DIR, "lib", "infers", "organ_query.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = module.OrganQueryInfer(BUNDLE_ROOT)  # no segmenter
    with pytest.raises(Exception) as raised:
        task({"image": str(case["ct_file"]), "text": BILIARY_COLIC, "device": "cpu"})
    message = getattr(raised.value, "msg", str(raised.value))
    assert "no organ label map" in message
    assert "'label'" in message and "segmentation_bundle" in message
