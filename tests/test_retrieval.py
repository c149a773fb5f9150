"""Retrieval at query time: a real index of a small corpus written here, encoded by the packaged MiniLM, searched,
fused with a query model's scores and turned into evidence."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import ORGANS

from medsora.evaluation.scorer_ablation import scorer_ablation
from medsora.query import OrganQuery
from medsora.query.fusion import FusionParameters, fuse, fused_scores, load_fusion, query_fusion, retrieval_votes
from medsora.query.fusion_choice import choose_fusion
from medsora.query.printout import format_evidence
from medsora.text.alignment import TextImageAligner
from medsora.text.corpus import SymptomCorpus
from medsora.text.encoder_cache import CachedTextEncoder
from medsora.text.encoders import HFTextEncoder
from medsora.text.model import DomainGate, SymptomTextModel
from medsora.text.retrieval import TextIndex, build_text_index, load_text_index

TEXTS = {
    "liver": [
        "Yellow skin and eyes with dark urine and an enlarged tender liver.",
        "Jaundice with itching and pale stools after viral hepatitis.",
        "Swollen belly full of fluid from cirrhosis of the liver.",
        "Raised liver enzymes ALT and AST with tiredness.",
        "Confusion and a flapping tremor in liver failure.",
        "Fatty liver on ultrasound with mildly raised transaminases.",
    ],
    "pancreas": [
        "Severe upper abdominal pain boring through to the back with a raised lipase.",
        "Acute pancreatitis after heavy drinking, with vomiting.",
        "Greasy floating stools and weight loss from pancreatic insufficiency.",
        "New diabetes and painless jaundice with a mass in the head of the pancreas.",
        "Raised serum amylase with epigastric pain.",
        "Chronic pancreatitis with calcifications of the pancreas.",
    ],
    "kidney": [
        "Blood in the urine with pain in the flank.",
        "Reduced urine output and a rising creatinine.",
        "Frothy urine, swollen ankles and protein in the urine.",
        "Colicky loin to groin pain from a kidney stone.",
        "Fever with flank pain and burning on passing urine.",
        "Low eGFR with a high potassium in chronic kidney disease.",
    ],
    "gallbladder": [
        "Right upper quadrant pain after fatty meals with a positive Murphy sign.",
        "Gallstones causing biliary colic.",
        "Fever and tenderness under the right ribs from cholecystitis.",
        "Pain under the right ribs spreading to the shoulder blade after eating.",
        "Thickened gallbladder wall with stones on ultrasound.",
        "A gallbladder polyp found on a scan.",
    ],
    "spleen": [
        "Enlarged spleen felt below the left ribs.",
        "Left upper abdominal pain after a fall with low blood pressure from a ruptured spleen.",
        "Low platelets and anaemia with splenomegaly.",
        "Fullness in the left upper abdomen and early satiety from a big spleen.",
        "Howell-Jolly bodies on the blood film after splenectomy.",
        "Splenic infarct with sharp left upper quadrant pain.",
    ],
    "stomach": [
        "Burning pain in the upper stomach relieved by food, with black stools.",
        "Vomiting blood from a bleeding stomach ulcer.",
        "Early fullness and vomiting of undigested food from gastric outlet obstruction.",
        "Heartburn and indigestion with nausea after meals.",
        "Helicobacter pylori gastritis with upper abdominal discomfort.",
        "Gastric cancer with weight loss and loss of appetite.",
    ],
    "adrenal_gland": [
        "Episodes of pounding headache, sweating and palpitations with very high blood pressure.",
        "Moon face, purple stretch marks and central obesity.",
        "Salt craving, darkened skin and low blood pressure from adrenal insufficiency.",
        "High blood pressure with low potassium from too much aldosterone.",
        "Raised urinary metanephrines.",
        "An adrenal mass found by chance on CT.",
    ],
}
OUT_OF_DOMAIN = [
    "Sprained ankle after a football game.",
    "Blurred vision and pain in one eye.",
    "Cough with green sputum and fever.",
    "Itchy red rash on both arms.",
    "Knee swelling after a twisting injury.",
    "Ringing in the ears for weeks.",
    "Migraine with a visual aura.",
    "Low mood and poor sleep for months.",
    "Stiff painful shoulder that will not lift.",
    "Nosebleeds and a blocked nose.",
    "Palpitations and breathlessness climbing stairs.",
    "Numbness and tingling in both feet.",
]
#: paraphrases that name no organ, each pointing to one organ only
UNAMBIGUOUS = {
    "liver": "my eyes and skin have turned yellow and my pee is dark",
    "kidney": "there is blood when I pass water and my side hurts",
    "adrenal_gland": "attacks of sweating, a racing heart and headache with very high blood pressure",
}


def provenance(organ: str, number: int) -> dict:
    """HPO-style provenance for even texts, knowledge-table provenance for odd ones, as the corpus writes them."""
    if number % 2:
        return {
            "findings": [f"{organ} finding {number}"],
            "identifier": "clinical_presentations.yaml",
            "source": "clinical",
        }
    return {"findings": [f"HP:{number:07d}"], "identifier": f"OMIM:{600000 + number}", "source": "hpo", "title": organ}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus files, and a SymptomCorpus over them with MiniLM behind an on-disk cache."""
    root = tmp_path_factory.mktemp("retrieval")
    train = [
        {
            "id": f"{organ}-{n}",
            "group": f"{organ}-{n}",
            "organ": organ,
            "text": text,
            "provenance": provenance(organ, n),
        }
        for organ, texts in TEXTS.items()
        for n, text in enumerate(texts)
    ]
    ood = [{"id": f"ood-{n}", "group": f"ood-{n}", "labels": [], "text": text} for n, text in enumerate(OUT_OF_DOMAIN)]
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "ood_train.jsonl", ood)
    write_jsonl(root / "test.jsonl", [{"text": "Painless jaundice.", "labels": ["liver"]}])
    write_jsonl(root / "ood_test.jsonl", [{"text": "Broken wrist.", "labels": []}])
    encoder = CachedTextEncoder(HFTextEncoder(), str(root / "cache"))
    return SymptomCorpus(
        str(root),
        ORGANS,
        encoder,
        validation_fraction=0.3,
        seed=0,
        train_files=["train.jsonl"],
        ood_train_files=["ood_train.jsonl"],
    )


@pytest.fixture(scope="module")
def index_file(corpus, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("index") / "text_index.pt")
    build_text_index(corpus, path)
    return path


def untrained_aligner(seed: int = 0) -> TextImageAligner:
    torch.manual_seed(seed)
    aligner = TextImageAligner(SymptomTextModel(384, 64, 32, 7), DomainGate(384), image_dim=16, num_slices=2)
    aligner.reference.normal_()
    return aligner


def test_the_index_holds_the_training_split_and_the_out_of_domain_texts(corpus, index_file):
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    train, ood = corpus.records["train"], corpus.records["ood_train"]
    assert 0 < len(corpus.records["validation"]) and len(index) == len(train) + len(ood)
    assert [r["text"] for r in index.records] == [r["text"] for r in train + ood]
    assert [index.organ(row) for row in range(len(index))] == [r["organ"] for r in train] + [None] * len(ood)
    held_out = {r["text"] for r in corpus.records["validation"]}
    assert not held_out & {r["text"] for r in index.records}
    np.testing.assert_allclose(index.embeddings.norm(dim=1).numpy(), 1.0, atol=1e-3)


def test_unambiguous_queries_find_their_organs_texts(corpus, index_file):
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    queries = torch.as_tensor(corpus.encoder.encode(list(UNAMBIGUOUS.values())))
    similarities, rows = index.search(queries, 3)
    assert torch.all(similarities[:, :-1] >= similarities[:, 1:])
    for organ, found in zip(UNAMBIGUOUS, rows.tolist()):
        assert index.organ(found[0]) == organ, (organ, [index.records[r]["text"] for r in found])
    votes, abdominal = retrieval_votes(index, similarities, rows, 0.05)
    assert [ORGANS[j] for j in votes.argmax(dim=1)] == list(UNAMBIGUOUS)
    assert torch.allclose(votes.sum(dim=1), torch.ones(3)) and torch.all(abdominal > 0.99)


def test_evidence_names_the_corpus_records_behind_each_top_organ(corpus, index_file):
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    query = OrganQuery(corpus.encoder, untrained_aligner(), ORGANS, index=index, fusion=FusionParameters())
    scores, flags, evidence, p_abdominal = query.score_with_evidence(list(UNAMBIGUOUS.values()))
    records = {r["text"]: r for r in corpus.records["train"]}
    embeddings = torch.nn.functional.normalize(torch.as_tensor(corpus.encoder.encode(list(UNAMBIGUOUS.values()))))
    # P(abdominal) is the fused scorer's own, the one in_domain compares with the threshold
    texts = list(UNAMBIGUOUS.values())
    fused_p = fuse(query.fusion, index, query.aligner, torch.as_tensor(corpus.encoder.encode(texts)).float(), texts)[1]
    np.testing.assert_allclose(p_abdominal, fused_p.numpy(), atol=1e-5)
    assert (flags == (p_abdominal >= query.threshold)).all()
    for row, items in enumerate(evidence):
        answer = query.answer(scores[row], flags[row], items, p_abdominal[row])
        assert answer["p_abdominal"] == pytest.approx(float(p_abdominal[row]), abs=1e-6)
        assert [item["organ"] for item in items] == [o for o in answer["ranking"][:3] for _ in range(2)]
        assert answer["evidence"] == items
        for item in items:
            record = records[item["text"]]
            assert item["organ"] == record["organ"] and item["provenance"] == record["provenance"]
            text = torch.nn.functional.normalize(torch.as_tensor(corpus.encoder.encode([item["text"]])))
            assert item["similarity"] == pytest.approx(float(embeddings[row] @ text[0]), abs=2e-3)
    # the best text of the query's own organ is among the evidence whenever that organ is among the top three
    liver = [item for item in evidence[0] if item["organ"] == "liver"]
    assert liver and liver[0]["text"] == TEXTS["liver"][0]


def test_fused_scores_stay_in_the_unit_interval():
    torch.manual_seed(0)
    votes = torch.softmax(torch.randn(50, 7) * 5, dim=1)
    votes[0] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])
    avg_sim = torch.empty(50, 7).uniform_(-1, 1)
    avg_sim[1] = 1.0
    gate, retrieval = torch.rand(50), torch.rand(50)
    gate[:2], retrieval[:2] = 1.0, 1.0
    for share in (0.0, 0.5, 1.0):
        for weight in (0.0, 0.5, 1.0):
            parameters = FusionParameters(retrieval_weight=weight, relative_share=share, learned_temperature=0.01)
            scores, abdominal = fused_scores(parameters, votes, retrieval, avg_sim, gate)
            assert scores.min() >= 0.0 and scores.max() <= 1.0
            assert torch.all(scores.max(dim=1).values <= abdominal + 1e-6)
    assert scores[0].max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="retrieval_weight must be in"):
        FusionParameters(retrieval_weight=1.5)


def test_a_query_model_scores_in_the_unit_interval_and_low_outside_the_abdomen(corpus, index_file):
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    query = OrganQuery(corpus.encoder, untrained_aligner(), ORGANS, index=index, fusion=FusionParameters())
    texts = [*UNAMBIGUOUS.values(), "a painful swollen big toe after a night of drinking", "itchy scaly rash on elbows"]
    scores, _ = query.score(texts)
    assert scores.shape == (5, 7) and scores.min() >= 0.0 and scores.max() <= 1.0
    assert scores[3:].max(axis=1).max() < scores[:3].max(axis=1).min()


def test_the_character_n_grams_vote_for_the_texts_that_share_a_finding_s_words(corpus, index_file):
    """Character n-grams are taken within words: a text's words in another order find that very text."""
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    organs = ["spleen", "adrenal_gland", "gallbladder"]
    rows = [next(row for row in range(len(index)) if index.organ(row) == organ) for organ in organs]
    texts = [" ".join(reversed(index.records[row]["text"].lower().split())) for row in rows]
    lexical = index.lexical.similarities(texts)
    assert lexical.shape == (3, len(index)) and lexical.min() >= 0.0 and lexical.max() <= 1.0 + 1e-6
    assert lexical.argmax(dim=1).tolist() == rows and torch.all(lexical.max(dim=1).values > 0.95)
    parameters = FusionParameters(neighbours=3, retrieval_weight=1.0, lexical_share=1.0)
    query = OrganQuery(corpus.encoder, untrained_aligner(), ORGANS, index=index, fusion=parameters)
    scores, _, evidence, _ = query.score_with_evidence(texts)
    assert [ORGANS[k] for k in scores.argmax(axis=1)] == organs
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    # the evidence is chosen as the texts voted: each query's own text first, with both of its similarities
    for query_row, (row, items) in enumerate(zip(rows, evidence)):
        assert items[0]["text"] == index.records[row]["text"]
        assert items[0]["lexical_similarity"] == pytest.approx(float(lexical[query_row, row]), abs=1e-4)
        assert all("lexical_similarity" in item for item in items)
        assert "lexical" in format_evidence(items[0])
    with pytest.raises(ValueError, match="one text per embedding"):
        fuse(parameters, index, query.aligner, torch.zeros(2, 384), texts)


def test_organs_on_the_reference_features_keep_their_text_only_fused_scores(corpus, index_file):
    """The image gate's promise under the fused scorer: only the organs read on the patient's CT move."""
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    aligner = untrained_aligner()
    query = OrganQuery(corpus.encoder, aligner, ORGANS, index=index, fusion=FusionParameters())
    texts = list(UNAMBIGUOUS.values())
    text_only, _ = query.score(texts)
    patient = aligner.reference.clone()
    patient[[0, 4]] = torch.randn_like(patient[[0, 4]])  # liver and spleen read on the CT, the rest on the reference
    on_ct, _ = query.score(texts, patient)
    np.testing.assert_array_equal(np.delete(on_ct, [0, 4], axis=1), np.delete(text_only, [0, 4], axis=1))
    assert not np.allclose(on_ct[:, [0, 4]], text_only[:, [0, 4]])
    assert on_ct.min() >= 0.0 and on_ct.max() <= 1.0


def test_the_paper_scorer_is_the_aligners_and_keeps_evidence(corpus, index_file):
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    aligner = untrained_aligner()
    texts = list(UNAMBIGUOUS.values())
    paper = OrganQuery(corpus.encoder, aligner, ORGANS, index=index, fusion=query_fusion("paper", "unused.json"))
    scores, flags, evidence, p_abdominal = paper.score_with_evidence(texts)
    embeddings = torch.as_tensor(corpus.encoder.encode(texts))
    np.testing.assert_allclose(scores, aligner.organ_scores(embeddings).numpy(), atol=1e-6)
    np.testing.assert_allclose(p_abdominal, aligner.abdominal_probability(embeddings)[:, 0].numpy(), atol=1e-6)
    assert (flags == aligner.in_domain(embeddings).numpy()).all()
    assert paper.scorer == "paper" and paper.threshold == float(aligner.threshold)
    assert all(len(items) == 6 for items in evidence)
    assert OrganQuery(corpus.encoder, aligner, ORGANS).score_with_evidence(texts)[2] == [[], [], []]
    with pytest.raises(ValueError, match="query_scorer must be one of"):
        query_fusion("fusion", "unused.json")


def test_an_index_of_another_encoder_is_refused_naming_both(corpus, index_file):
    with pytest.raises(ValueError, match="hf:another-model") as error:
        load_text_index(index_file, "hf:another-model", ORGANS)
    assert corpus.encoder.model_id in str(error.value) and "run build_index" in str(error.value)

    class Another:
        model_id = "hf:another-model"

    index = load_text_index(index_file)
    with pytest.raises(ValueError, match="configured encoder is 'hf:another-model'"):
        OrganQuery(Another(), untrained_aligner(), ORGANS, index=index)
    with pytest.raises(ValueError, match="holds organs"):
        load_text_index(index_file, organs=list(reversed(ORGANS)))


def test_a_missing_or_corrupt_index_names_the_file_and_the_command(index_file, tmp_path):
    missing = str(tmp_path / "text_index.pt")
    with pytest.raises(FileNotFoundError, match="run build_index") as error:
        load_text_index(missing)
    assert missing in str(error.value)
    garbage = tmp_path / "garbage" / "text_index.pt"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a torch file")
    truncated = tmp_path / "truncated" / "text_index.pt"
    truncated.parent.mkdir()
    truncated.write_bytes(open(index_file, "rb").read()[:2000])
    other = tmp_path / "other" / "text_index.pt"
    other.parent.mkdir()
    torch.save({"format": "something else"}, other)
    broken = tmp_path / "broken" / "text_index.pt"
    broken.parent.mkdir()
    state = torch.load(index_file, weights_only=True)
    torch.save({**state, "organ_index": state["organ_index"][:-1]}, broken)
    for path in (garbage, truncated, other, broken):
        with pytest.raises(ValueError, match="unusable.*run build_index") as error:
            load_text_index(str(path))
        assert str(path) in str(error.value)


def test_fusion_parameters_are_chosen_on_the_validation_split_and_read_back(corpus, index_file, tmp_path):
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    grid = {
        "neighbours": [3, 10],
        "temperature": [0.05, 0.1],
        "lexical_share": [0.0, 0.5],
        "retrieval_weight": [0.5, 1.0],
        "relative_share": [0.0],
    }
    path = str(tmp_path / "fusion.json")
    chosen = choose_fusion(untrained_aligner(), index, corpus, grid, 0.1, path)
    assert chosen.neighbours in (3, 10) and chosen.temperature in (0.05, 0.1) and chosen.retrieval_weight in (0.5, 1.0)
    assert chosen.lexical_share in (0.0, 0.5)
    assert 0.0 <= chosen.threshold <= 1.0
    assert load_fusion(path) == chosen == query_fusion("fused", path)
    saved = json.load(open(path))
    assert saved["choice"]["queries"]["in_domain"] == len(corpus.records["validation"])
    assert saved["choice"]["validation"]["Rank-1"] > 0.5  # the retrieval votes rank the held-out paraphrases
    with pytest.raises(ValueError, match="exactly"):
        choose_fusion(untrained_aligner(), index, corpus, {**grid, "neighbors": [5]})


def test_missing_or_malformed_fusion_parameters_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="fusion.json not found: run .*run build_index"):
        load_fusion(str(tmp_path / "fusion.json"))
    bad = tmp_path / "bad" / "fusion.json"
    os.makedirs(bad.parent)
    for content in ("{", json.dumps({"parameters": {"neighbours": 0}}), json.dumps({"parameters": {"k": 3}})):
        bad.write_text(content)
        with pytest.raises(ValueError, match="unusable.*run build_index"):
            load_fusion(str(bad))


def test_an_index_refuses_inconsistent_parts():
    with pytest.raises(ValueError, match="N organ indices"):
        TextIndex(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), [{}] * 3, ORGANS, "id")
    with pytest.raises(ValueError, match="organ indices must lie"):
        TextIndex(torch.zeros(1, 4), torch.tensor([7]), [{}], ORGANS, "id")


def test_the_scorer_ablation_scores_every_row_on_labelled_queries(corpus, index_file, tmp_path):
    queries = tmp_path / "queries.jsonl"
    lines = [{"text": text, "labels": [organ]} for organ, text in UNAMBIGUOUS.items()]
    lines += [{"text": "a painful swollen big toe after a night of drinking", "labels": []}]
    write_jsonl(queries, lines)
    index = load_text_index(index_file, corpus.encoder.model_id, ORGANS)
    aligner, fusion = untrained_aligner(), FusionParameters()
    result = scorer_ablation(aligner, corpus, index, fusion, str(queries), str(tmp_path / "ablation.json"))
    rows = result["rows"]
    assert len(rows) == 11 and list(rows)[0].startswith("paper scorer") and list(rows)[-1].startswith("fused")
    for row in rows.values():
        assert 0.0 <= row["Rank-1"] <= row["Rank-2"] <= row["Rank-3"] <= 1.0 and 0.0 <= row["OOD AUROC"] <= 1.0
    assert rows["retrieval votes alone"]["Rank-1"] == 1.0  # the paraphrases' nearest texts are their organs'
    embeddings = torch.as_tensor(corpus.encoder.encode([line["text"] for line in lines]))
    paper = aligner.organ_scores(embeddings).numpy()
    labels = np.array([[o in line["labels"] for o in ORGANS] for line in lines[:3]])
    top = paper[:3].argmax(axis=1)
    assert rows["paper scorer (W_align, image projection, phantom organ features, gate)"]["Rank-1"] == pytest.approx(
        labels[np.arange(3), top].mean()
    )
    table = (tmp_path / "ablation.md").read_text()
    assert table.startswith("3 abdominal and 1 non-abdominal queries") and table.count("\n| ") == 13
    assert json.loads((tmp_path / "ablation.json").read_text())["rows"] == rows
    write_jsonl(queries, lines[:3])
    with pytest.raises(ValueError, match="needs abdominal and non-abdominal queries"):
        scorer_ablation(aligner, corpus, index, fusion, str(queries))
