# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Domain randomisation of the phantom: contrast phases, slice thickness, coverage, habitus and pathologies change
the scan, not the patient; the config block is checked; a dataset records what each case drew."""

import json

import numpy as np
import pytest
from scipy import ndimage

from medsora.image import phantom
from medsora.image.phantom.domains import CaseDomain, Domains

SHAPE = (64, 64, 32)
SEED = (2, 1)


def _case(shape=SHAPE, **domain):
    return phantom.generate_case(SEED, shape=shape, domain=CaseDomain(seed=11, **domain))


def _core_mean(image, label, ids):
    mask = np.isin(label, ids)
    core = ndimage.binary_erosion(mask)
    return float(image[core if core.sum() > 20 else mask].mean())


def test_phases_change_intensities_not_anatomy():
    cases = {phase: _case(phase=phase) for phase in phantom.domains.PHASES}
    reference = phantom.generate_case(SEED, shape=SHAPE)
    for u, v in zip(cases["portal_venous"], reference):  # the reference phase is the reference phantom
        np.testing.assert_array_equal(u, v)
    for phase, (_, label, affine) in cases.items():
        np.testing.assert_array_equal(label, reference[1], err_msg=phase)  # same patient in every phase
        np.testing.assert_array_equal(affine, reference[2])
    mean = {phase: {k: _core_mean(c[0], c[1], [k]) for k in (1, 2, 6, 8)} for phase, c in cases.items()}
    assert mean["non_contrast"][6] < 80 and mean["non_contrast"][2] < 60 and mean["non_contrast"][8] < 70
    assert mean["arterial"][8] > 220 and mean["arterial"][8] > mean["portal_venous"][8] + 50  # bright aorta
    assert mean["portal_venous"][6] > mean["arterial"][6] + 15  # the liver enhances late
    assert mean["delayed"][6] < mean["portal_venous"][6] and mean["delayed"][8] < mean["portal_venous"][8]
    kidney_spread = {
        p: np.percentile(c[0][c[1] == 2], 80) - np.percentile(c[0][c[1] == 2], 20) for p, c in cases.items()
    }
    assert kidney_spread["arterial"] > kidney_spread["portal_venous"] > kidney_spread["non_contrast"]  # cortex


def test_slice_thickness_sets_spacing_and_blurs_along_z():
    thin, _, thin_affine = _case(slice_thickness_mm=1.0)
    thick, _, thick_affine = _case(slice_thickness_mm=5.0)
    scale = 64 / SHAPE[2]
    assert thin_affine[2, 2] == pytest.approx(2.0 * scale) and thick_affine[2, 2] == pytest.approx(5.0 * scale)
    assert thin.shape[2] > thick.shape[2]


def test_coverage_crop_cuts_organs_on_the_same_grid():
    full_image, full_label, full_affine = _case()
    image, label, affine = _case(z_coverage_mm=80.0, fov_fraction=0.8)
    spacing = full_affine[2, 2]
    assert label.shape[2] == max(8, round(80.0 / spacing)) < full_label.shape[2]
    assert label.shape[0] == round(0.8 * full_label.shape[0])
    start = np.rint(np.linalg.solve(full_affine[:3, :3], affine[:3, 3] - full_affine[:3, 3])).astype(int)
    box = tuple(slice(a, a + n) for a, n in zip(start, label.shape))
    np.testing.assert_array_equal(label, full_label[box])  # a crop of the same scan, the affine follows
    organs = set(np.unique(label).tolist()) - {0}
    assert organs, "the window lies on the organs"
    cut = [k for k in organs if (label[..., 0] == k).any() or (label[..., -1] == k).any()]
    assert cut  # some organ reaches the scan's edge


def test_habitus_and_pathologies():
    def body_width(image):
        inside = image[:, :, image.shape[2] // 2] > -500
        return int(inside.any(axis=1).sum())

    thin, obese = _case(habitus="cachectic")[0], _case(habitus="obese")[0]
    assert body_width(obese) > body_width(thin) + 10
    full = (128, 128, 64)  # stones of 3-10 mm need the full resolution
    plain_image, plain_label, _ = _case(full)
    sick_image, sick_label, _ = _case(full, pathologies=("splenomegaly", "fatty_liver", "stone"))
    assert (sick_label == 1).sum() > 1.5 * (plain_label == 1).sum()  # splenomegaly
    assert _core_mean(sick_image, sick_label, [6]) < _core_mean(plain_image, plain_label, [6]) - 30  # fatty liver
    stones = np.isin(sick_label, [2, 3, 4]) & (sick_image > 200)  # calcified, inside the gallbladder or a kidney
    assert stones.any() and not (np.isin(plain_label, [4]) & (plain_image > 200)).any()


def test_domains_config_is_checked():
    assert Domains.from_config(None) == phantom.REFERENCE_DOMAINS == Domains.from_config({})
    assert phantom.REFERENCE_DOMAINS.draw(np.random.default_rng(0)) == CaseDomain()
    held_out = Domains.from_config({"phases": ["arterial"], "slice_thickness_mm": [4, 5], "habitus": "obese"})
    draws = [held_out.draw(np.random.default_rng(i)) for i in range(20)]
    assert {d.phase for d in draws} == {"arterial"} and {d.habitus for d in draws} == {"obese"}
    assert all(4 <= d.slice_thickness_mm <= 5 for d in draws)
    every = [phantom.ALL_DOMAINS.draw(np.random.default_rng(i)) for i in range(60)]
    assert {d.phase for d in every} == set(phantom.domains.PHASES)
    assert any(d.z_coverage_mm for d in every) and any(d.pathologies for d in every)
    with pytest.raises(ValueError, match="phantom#domains: unknown keys \\['phase'\\]"):
        Domains.from_config({"phase": ["arterial"]})
    with pytest.raises(ValueError, match="phantom#domains#phases must list some of"):
        Domains.from_config({"phases": ["venous"]})
    with pytest.raises(ValueError, match="slice_thickness_mm must be a range"):
        Domains.from_config({"slice_thickness_mm": [5, 1]})
    with pytest.raises(ValueError, match="p_pathology must be a probability"):
        Domains.from_config({"p_pathology": 1.5})


def test_dataset_records_domains(tmp_path):
    domains = {"phases": ["non_contrast", "delayed"], "p_pathology": 1.0, "pathologies": ["cyst"]}
    path = phantom.generate_phantom_dataset(
        str(tmp_path), num_cases=3, num_validation=1, seed=4, shape=(48, 48, 24), domains=domains
    )
    with open(path) as f:
        datalist = json.load(f)
    assert datalist["phantom"]["domains"] == Domains.from_config(domains).as_dict()
    drawn = datalist["case_domains"]
    assert len(drawn) == 3 and {d["phase"] for d in drawn.values()} <= {"non_contrast", "delayed"}
    assert all(d["pathologies"] == ["cyst"] for d in drawn.values())
    assert drawn["imagesTr/img0002.nii.gz"] == phantom.case_domain(Domains.from_config(domains), 4, 2).as_dict()
    with pytest.raises(ValueError, match="domains"):  # other domains are other data: the directory is not reused
        phantom.generate_phantom_dataset(str(tmp_path), num_cases=3, num_validation=1, seed=4, shape=(48, 48, 24))
