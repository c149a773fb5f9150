"""Frozen text encoders: MiniLM against sentence-transformers, the OpenAI client against a local HTTP server speaking
the embeddings protocol, and the on-disk embedding cache."""

import base64
import hashlib
import json
import logging
import math
import os
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from medsora.text.encoder_cache import CachedTextEncoder
from medsora.text.encoders import HFTextEncoder, default_minilm_path
from medsora.text.openai_encoder import OpenAIEmbeddingEncoder

TEXTS = [
    "pain in the upper right abdomen after fatty meals",
    "gallstones",
    "sprained ankle",
    "dark urine and yellow skin",
    "burning pain in the stomach relieved by eating, sometimes with black stools and nausea in the morning",
    "",
]
KEY = "sk-test-d41d8cd98f00b204e9800998ecf8427e"
SERVER_DIM = 12


@pytest.fixture(scope="module")
def minilm() -> HFTextEncoder:
    return HFTextEncoder()


def server_vector(text: str, dim: int = SERVER_DIM) -> np.ndarray:
    """The deterministic, unnormalised float32 vector the test server returns for ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class EmbeddingServer:
    """An OpenAI-compatible ``POST /v1/embeddings`` endpoint on 127.0.0.1 that records what it receives.

    ``failures`` holds HTTP statuses answered, in order, to the next requests (an ``"sleep"`` entry stalls the
    request for ``stall_s`` seconds instead); ``shuffle`` reverses the order of ``data`` in answers, ``mutate``, when
    set, rewrites the list of ``data`` items before they are sent, and ``floats_only`` answers float lists even when
    base64 was asked for.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.failures: list = []
        self.shuffle = False
        self.mutate = None
        self.floats_only = False
        self.stall_s = 1.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                authorization = self.headers["Authorization"]
                server.requests.append({"path": self.path, "body": body, "authorization": authorization})
                failure = server.failures.pop(0) if server.failures else None
                if failure == "sleep":
                    time.sleep(server.stall_s)
                elif failure is not None:
                    # a server that echoes the credential back, as careless ones do
                    message = f"failure {failure} for key {authorization}"
                    self.reply(failure, {"error": {"message": message, "type": "test", "code": str(failure)}})
                    return
                texts = body["input"]
                dim = body.get("dimensions", SERVER_DIM)
                data = []
                for i, text in enumerate(texts):
                    vector = server_vector(text, dim)
                    if body.get("encoding_format") == "base64" and not server.floats_only:
                        embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode()
                    else:
                        embedding = vector.tolist()
                    data.append({"object": "embedding", "index": i, "embedding": embedding})
                if server.shuffle:
                    data.reverse()
                if server.mutate is not None:
                    data = server.mutate(data)
                tokens = sum(len(t.split()) for t in texts)
                self.reply(
                    200,
                    {
                        "object": "list",
                        "data": data,
                        "model": body["model"],
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                    },
                )

            def reply(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    server = EmbeddingServer()
    yield server
    server.close()


@pytest.fixture
def openai_encoder(server, monkeypatch):
    monkeypatch.setenv("MEDSORA_TEST_KEY", KEY)

    def make(**kwargs) -> OpenAIEmbeddingEncoder:
        options = {
            "model": "test-embed",
            "base_url": server.base_url,
            "api_key_env": "MEDSORA_TEST_KEY",
            "backoff_s": 0.01,
            "timeout_s": 10.0,
            **kwargs,
        }
        return OpenAIEmbeddingEncoder(**options)

    return make


def expected_server_vectors(texts, normalize: bool = True, dim: int = SERVER_DIM) -> np.ndarray:
    vectors = np.stack([server_vector(t, dim) for t in texts])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if normalize else vectors


# --- HFTextEncoder ---


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    embeddings = minilm.encode(TEXTS)
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(TEXTS), 384) and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    reference = st.SentenceTransformer(default_minilm_path(), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(embeddings, reference, atol=1e-5)


def test_minilm_semantics_batching_and_empty_input(minilm):
    query, gallstones, ankle = minilm.encode(TEXTS[:3])
    assert query @ gallstones > query @ ankle + 0.05
    # length-sorted batches of two give the rows of one big batch, in input order
    small_batches = HFTextEncoder(batch_size=2)
    np.testing.assert_allclose(small_batches.encode(TEXTS), minilm.encode(TEXTS), atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="single string"):
        minilm.encode("gallstones")


def test_minilm_concurrent_callers(minilm):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda text: minilm.encode([text])[0], TEXTS * 2))
    np.testing.assert_allclose(np.stack(rows), minilm.encode(TEXTS * 2), atol=1e-5)


def test_minilm_model_id_is_stable_and_machine_independent(minilm):
    model_id = minilm.model_id
    assert model_id == HFTextEncoder(default_minilm_path()).model_id
    assert model_id.startswith("hf:model:sha256=") and "pooling=mean" in model_id and "max_length=256" in model_id
    assert os.sep + "model" not in model_id and "site-packages" not in model_id
    assert HFTextEncoder(pooling="cls").model_id != model_id
    assert HFTextEncoder(normalize=False).model_id != model_id
    assert HFTextEncoder(max_length=128).model_id != model_id


def test_unnormalised_mean_pooling(minilm):
    raw = HFTextEncoder(normalize=False).encode(TEXTS[:2])
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), minilm.encode(TEXTS[:2]), atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_auto_pooling_is_cls_without_sentence_transformers_config(tmp_path, minilm):
    from transformers import AutoModel, AutoTokenizer

    source = default_minilm_path()
    plain = tmp_path / "plain-bert"
    plain.mkdir()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        os.symlink(os.path.join(source, name), plain / name)
    encoder = HFTextEncoder(str(plain))
    assert minilm.pooling == "mean" and encoder.pooling == "cls"
    assert encoder.model_id.startswith("hf:plain-bert:") and minilm.model_id.split(":")[2] in encoder.model_id

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    with torch.no_grad():
        batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
        cls = torch.nn.functional.normalize(model(**batch).last_hidden_state[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(TEXTS[:3]), cls, atol=1e-5)


def test_bad_model_directories_are_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model.*does not exist"):
        HFTextEncoder(str(missing))
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty-model.*config.json"):
        HFTextEncoder(str(empty))
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="empty-model.*model.safetensors"):
        HFTextEncoder(str(empty))
    with pytest.raises(ValueError, match="pooling"):
        HFTextEncoder(pooling="max")


def test_unsupported_sentence_transformers_pooling_is_refused(tmp_path):
    source = default_minilm_path()
    model = tmp_path / "max-pooled"
    (model / "1_Pooling").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(source, name), model / name)
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        HFTextEncoder(str(model))
    assert HFTextEncoder(str(model), pooling="mean").pooling == "mean"


# --- OpenAIEmbeddingEncoder ---


def test_openai_batches_and_restores_order(server, openai_encoder):
    texts = [f"symptom number {i}" for i in range(11)]
    server.shuffle = True
    encoder = openai_encoder(batch_size=4)
    embeddings = encoder.encode(texts)
    assert embeddings.dtype == np.float32 and embeddings.shape == (11, SERVER_DIM) and encoder.dim == SERVER_DIM
    np.testing.assert_allclose(embeddings, expected_server_vectors(texts), rtol=1e-6)
    assert len(server.requests) == math.ceil(len(texts) / 4)
    assert [r["body"]["input"] for r in server.requests] == [texts[0:4], texts[4:8], texts[8:11]]
    assert all(r["path"] == "/v1/embeddings" and r["body"]["model"] == "test-embed" for r in server.requests)
    assert all(r["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert encoder.model_id == f"openai:{server.base_url}:test-embed:None"
    assert KEY not in repr(encoder)


def test_openai_float_answers_unnormalised_and_dimensions(server, openai_encoder):
    encoder = openai_encoder(normalize=False, dimensions=5)
    assert encoder.dim == 5 and encoder.encode([]).shape == (0, 5) and not server.requests
    embeddings = encoder.encode(TEXTS[:3])
    np.testing.assert_allclose(embeddings, expected_server_vectors(TEXTS[:3], normalize=False, dim=5), rtol=1e-6)
    assert server.requests[0]["body"]["dimensions"] == 5
    # servers that ignore the client's encoding_format="base64" answer float lists
    server.floats_only = True
    embeddings = openai_encoder().encode(TEXTS[:3])
    np.testing.assert_allclose(embeddings, expected_server_vectors(TEXTS[:3]), rtol=1e-6)
    assert server.requests[-1]["body"]["encoding_format"] == "base64"


def test_openai_dim_is_learnt_with_one_request(server, openai_encoder):
    encoder = openai_encoder()
    assert encoder.dim == SERVER_DIM and len(server.requests) == 1
    assert encoder.encode([]).shape == (0, SERVER_DIM) and len(server.requests) == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_openai_retries_server_errors_and_rate_limits(server, openai_encoder, caplog, status):
    server.failures = [status, status]
    caplog.set_level(logging.DEBUG)
    embeddings = openai_encoder(max_retries=3).encode(TEXTS[:2])
    np.testing.assert_allclose(embeddings, expected_server_vectors(TEXTS[:2]), rtol=1e-6)
    assert len(server.requests) == 3
    retries = [r for r in caplog.records if r.name == "medsora.text.openai_encoder" and r.levelno == logging.WARNING]
    assert len(retries) == 2 and "test-embed" in retries[0].getMessage()
    assert KEY not in caplog.text


def test_openai_retries_timeouts(server, openai_encoder):
    server.failures, server.stall_s = ["sleep"], 1.0
    embeddings = openai_encoder(timeout_s=0.3).encode(TEXTS[:1])
    np.testing.assert_allclose(embeddings, expected_server_vectors(TEXTS[:1]), rtol=1e-6)
    assert len(server.requests) == 2


def test_openai_gives_up_after_max_retries(server, openai_encoder, caplog):
    server.failures = [500] * 3
    with pytest.raises(RuntimeError, match="test-embed.*after 3 attempts.*HTTP 500") as error:
        openai_encoder(max_retries=2).encode(TEXTS[:1])
    assert len(server.requests) == 3
    assert KEY not in "".join(traceback.format_exception(error.value)) and KEY not in caplog.text
    # the client's own retries are off: with max_retries=0 exactly one request is made
    server.requests.clear()
    server.failures = [500]
    with pytest.raises(RuntimeError, match="after 1 attempts"):
        openai_encoder(max_retries=0).encode(TEXTS[:1])
    assert len(server.requests) == 1


def test_openai_client_errors_fail_at_once(server, openai_encoder, caplog):
    server.failures = [400]
    with pytest.raises(RuntimeError, match=f"'test-embed' at {server.base_url}.*HTTP 400") as error:
        openai_encoder(max_retries=5).encode(TEXTS[:1])
    assert len(server.requests) == 1
    text = "".join(traceback.format_exception(error.value))
    assert KEY not in text and "***" in text and KEY not in caplog.text


def test_openai_connection_errors_are_retried(monkeypatch):
    monkeypatch.setenv("MEDSORA_TEST_KEY", KEY)
    closed = EmbeddingServer()
    base_url = closed.base_url
    closed.close()
    encoder = OpenAIEmbeddingEncoder(
        "test-embed", base_url=base_url, api_key_env="MEDSORA_TEST_KEY", max_retries=2, backoff_s=0.01, timeout_s=2.0
    )
    with pytest.raises(RuntimeError, match="after 3 attempts.*APIConnectionError") as error:
        encoder.encode(TEXTS[:1])
    assert KEY not in "".join(traceback.format_exception(error.value))


def test_openai_key_handling(server, monkeypatch):
    monkeypatch.delenv("MEDSORA_MISSING_KEY", raising=False)
    with pytest.raises(RuntimeError, match="MEDSORA_MISSING_KEY"):
        OpenAIEmbeddingEncoder("text-embedding-3-small", api_key_env="MEDSORA_MISSING_KEY")
    keyless = OpenAIEmbeddingEncoder("test-embed", base_url=server.base_url, api_key_env="MEDSORA_MISSING_KEY")
    assert keyless.encode(["gallstones"]).shape == (1, SERVER_DIM)
    assert server.requests[0]["authorization"] == "Bearer unused"
    assert keyless.model_id == f"openai:{server.base_url}:test-embed:None"
    monkeypatch.setenv("MEDSORA_TEST_KEY", KEY)
    hosted = OpenAIEmbeddingEncoder("text-embedding-3-small", api_key_env="MEDSORA_TEST_KEY", dimensions=256)
    assert hosted.model_id == "openai:api.openai.com:text-embedding-3-small:256"


def test_openai_malformed_answers_are_refused(server, openai_encoder):
    server.mutate = lambda data: data[:-1]
    with pytest.raises(RuntimeError, match="answered 1 embeddings .* for 2 texts"):
        openai_encoder().encode(TEXTS[:2])
    server.mutate = lambda data: [{**item, "index": 0} for item in data]
    with pytest.raises(RuntimeError, match=r"indices \[0, 0\] for 2 texts"):
        openai_encoder().encode(TEXTS[:2])
    server.mutate = lambda data: [data[0], {**data[1], "embedding": [0.5] * 3}]
    with pytest.raises(RuntimeError, match=r"shapes \[\(3,\), \(12,\)\], expected \(12,\)"):
        openai_encoder().encode(TEXTS[:2])
    server.mutate = None
    encoder = openai_encoder(dimensions=SERVER_DIM)
    server.mutate = lambda data: [{**item, "embedding": [1.0] * 4} for item in data]
    with pytest.raises(RuntimeError, match=r"expected \(12,\)"):
        encoder.encode(TEXTS[:2])


# --- CachedTextEncoder ---


class Counting:
    """A real encoder whose ``encode`` calls and texts are counted."""

    def __init__(self, encoder) -> None:
        self.encoder, self.calls, self.texts = encoder, 0, []

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def encode(self, texts):
        self.calls += 1
        self.texts.extend(texts)
        return self.encoder.encode(texts)


def test_cache_answers_repeats_without_encoding(tmp_path, server, openai_encoder):
    # with `dimensions` the encoder's width is known without a request, so a warm cache needs no server at all
    cached = CachedTextEncoder(openai_encoder(batch_size=2, dimensions=SERVER_DIM), str(tmp_path))
    first = cached.encode(TEXTS)
    assert len(server.requests) == 3 and (cached.hits, cached.misses) == (0, len(TEXTS))
    assert os.listdir(tmp_path) == [os.path.basename(cached.cache_path)]
    again = cached.encode(TEXTS[::-1])
    assert len(server.requests) == 3 and (cached.hits, cached.misses) == (len(TEXTS), len(TEXTS))
    np.testing.assert_array_equal(again, first[::-1])
    # a new instance reads the file: still no request, same vectors
    reloaded = CachedTextEncoder(openai_encoder(batch_size=2, dimensions=SERVER_DIM), str(tmp_path))
    np.testing.assert_array_equal(reloaded.encode(TEXTS), first)
    assert len(server.requests) == 3 and (reloaded.hits, reloaded.misses) == (len(TEXTS), 0)
    # a partly new call sends only the new text
    mixed = reloaded.encode(["gallstones", "new text"])
    assert server.requests[-1]["body"]["input"] == ["new text"] and reloaded.misses == 1
    np.testing.assert_allclose(mixed, expected_server_vectors(["gallstones", "new text"]), rtol=1e-6)
    assert cached.dim == SERVER_DIM and cached.model_id == reloaded.encoder.model_id
    assert cached.encode([]).shape == (0, SERVER_DIM)


def test_cache_deduplicates_and_keeps_input_order(tmp_path, minilm):
    counting = Counting(minilm)
    cached = CachedTextEncoder(counting, str(tmp_path))
    texts = ["gallstones", "sprained ankle", "gallstones", "dark urine", "sprained ankle"]
    embeddings = cached.encode(texts)
    assert counting.calls == 1 and counting.texts == ["gallstones", "sprained ankle", "dark urine"]
    assert (cached.hits, cached.misses) == (0, 3)
    np.testing.assert_allclose(embeddings, minilm.encode(texts), atol=1e-6)
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, 384)


def test_cache_is_per_model(tmp_path, minilm):
    mean = CachedTextEncoder(Counting(minilm), str(tmp_path))
    cls = CachedTextEncoder(Counting(HFTextEncoder(pooling="cls")), str(tmp_path))
    a, b = mean.encode(TEXTS[:2]), cls.encode(TEXTS[:2])
    assert cls.encoder.calls == 1 and mean.cache_path != cls.cache_path
    assert not np.allclose(a, b)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(c.cache_path) for c in (mean, cls))


def test_corrupt_or_foreign_cache_files_are_rebuilt(tmp_path, minilm, caplog):
    counting = Counting(minilm)
    cached = CachedTextEncoder(counting, str(tmp_path))
    expected = cached.encode(TEXTS[:3])
    path = cached.cache_path
    size = os.path.getsize(path)

    def fresh_encode() -> np.ndarray:
        before = counting.calls
        encoder = CachedTextEncoder(counting, str(tmp_path))
        with caplog.at_level(logging.WARNING, logger="medsora.text.encoder_cache"):
            caplog.clear()
            result = encoder.encode(TEXTS[:3])
        assert counting.calls == before + 1 and "rebuilding" in caplog.text
        np.testing.assert_allclose(result, expected, atol=1e-6)
        return result

    with open(path, "r+b") as f:  # truncated
        f.truncate(size // 2)
    fresh_encode()
    with open(path, "r+b") as f:  # bytes flipped inside the vectors
        f.seek(size - 300)
        f.write(b"\xff" * 64)
    fresh_encode()
    # a well-formed file with vectors of the wrong width, or written for another model
    keys = np.load(path)["keys"]
    np.savez(path, model_id=np.array(minilm.model_id), keys=keys, vectors=np.zeros((len(keys), 7), np.float32))
    fresh_encode()
    np.savez(path, model_id=np.array("hf:other"), keys=keys, vectors=np.zeros((len(keys), 384), np.float32))
    fresh_encode()
    # after the rebuild the file is whole again
    assert CachedTextEncoder(counting, str(tmp_path)).encode(TEXTS[:3]).shape == (3, 384)
    assert counting.calls == 5
