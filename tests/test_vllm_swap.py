"""One vLLM engine, several checkpoints of one architecture (`cai.backends.vllm_swap`, the
run's `EnginePool`): a view swaps its model's weights in before each call.

Three tiny random Llamas on the embedded tokenizer: A and B the same network with other
seeds (one family), C one layer more (another family). The vLLM tests share one engine on
A for the module, plus one fresh engine on B (what a swapped-in B must equal) and one on C
(the fallback). Run them under the vLLM lock:
    flock /tmp/cai-vllm.lock python -m pytest -q tests/test_vllm_swap.py -m vllm
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cai.backends import SamplingConfig
from cai.backends.vllm_swap import weights_family



def vllm_test(fn):
    """A test that starts vLLM engines (marked so `-m "not vllm"` leaves it out)."""
    skip = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")
    return pytest.mark.vllm(skip(fn))


# small: the KV cache of a 2-layer, 2-KV-head, 64-dim model is 2 KiB a token
OPTIONS = {"max_model_len": 2048, "kv_cache_memory_bytes": 64 << 20}
# long enough to fill whole KV blocks, the unit the prefix cache keeps
LONG = "The committee met on Tuesday to discuss the budget for the coming year. " * 24
CONVERSATIONS = [[{"role": "user", "content": "Name a primary colour."}],
                 [{"role": "user", "content": LONG}]]
PROMPTS = [LONG, "Question: is the sky blue?\nAnswer:", LONG]
CONTINUATIONS = [" Yes", " (A)", " and the meeting ran late into the evening because nobody "
                 "could agree on the numbers that the treasurer had brought with him."]


def _save(tokenizer, path: Path, seed: int, layers: int = 2) -> str:
    from conftest import build_tiny_llama

    model = build_tiny_llama(tokenizer, seed=seed, head_dim=64)
    if layers != 2:
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        model.config.num_hidden_layers = layers
        model = LlamaForCausalLM(model.config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path.resolve())


@pytest.fixture(scope="module")
def models(tmp_path_factory, embedded_tokenizer) -> dict[str, str]:
    root = tmp_path_factory.mktemp("swap")
    return {"A": _save(embedded_tokenizer, root / "a", seed=0),
            "B": _save(embedded_tokenizer, root / "b", seed=1),
            "C": _save(embedded_tokenizer, root / "c", seed=2, layers=3)}


def results(backend) -> tuple[list[list[int]], list[float]]:
    """Greedy answers' token ids and continuation log-probs (short ones per cached prefix,
    the long one from prompt log-probs)."""
    out = backend.generate(CONVERSATIONS, SamplingConfig(temperature=0.0, max_tokens=12))
    return [g[0].token_ids for g in out], backend.continuation_logprobs(PROMPTS, CONTINUATIONS)


def same(a, b) -> bool:
    return a[0] == b[0] and all(abs(x - y) <= 1e-5 for x, y in zip(a[1], b[1]))


# ------------------------------------------------------------------ which models share an engine


def test_weights_family_ignores_names_and_dtype_and_sees_architecture_and_tokenizer(models, tmp_path):
    import shutil

    found = {k: weights_family(m, OPTIONS) for k, m in models.items()}
    assert found["A"][1] == models["A"] and found["B"][1] == models["B"]  # where weights load from
    family = {k: f[0] for k, f in found.items()}
    assert family["A"] == family["B"] != family["C"]  # C: one layer more
    assert weights_family(models["A"], {**OPTIONS, "max_model_len": 1024})[0] != family["A"]

    renamed = Path(shutil.copytree(models["B"], tmp_path / "renamed"))
    config = json.loads((renamed / "config.json").read_text())
    config.update(_name_or_path="somewhere/else", dtype="bfloat16", torch_dtype="bfloat16",
                  transformers_version="0")
    (renamed / "config.json").write_text(json.dumps(config))
    assert weights_family(str(renamed), OPTIONS)[0] == family["A"]  # CPU: float32 either way
    assert weights_family(str(renamed), OPTIONS, cuda=True)[0] != \
        weights_family(models["A"], OPTIONS, cuda=True)[0]  # GPU auto: the checkpoint's dtype
    (renamed / "chat_template.jinja").write_text("{{ messages }}")
    assert weights_family(str(renamed), OPTIONS)[0] != family["A"]

    adapter = Path(shutil.copytree(models["A"], tmp_path / "adapter"))
    (adapter / "adapter_config.json").write_text("{}")
    assert weights_family(str(adapter), OPTIONS) is None
    assert weights_family("some-org/some-model", OPTIONS) is None  # a hub id: nothing fetched
    assert weights_family(str(tmp_path / "missing"), OPTIONS) is None
    assert weights_family(models["A"], {**OPTIONS, "enforce_eager": False}) is None  # CPU compile


# ------------------------------------------------------------------ real engines


@pytest.fixture(scope="module")
def fresh_b(models):
    """B's results from an engine started on B (closed before the shared engine starts)."""
    from cai.backends.vllm_backend import VLLMBackend

    with VLLMBackend(models["B"], **OPTIONS) as engine:
        return results(engine)


@pytest.fixture(scope="module")
def pool(models, fresh_b):
    from cai.pipeline.engines import EnginePool

    lines: list[str] = []
    pool = EnginePool(lines.append)
    pool.lines = lines
    yield pool
    pool.close()


@vllm_test
def test_a_swapped_view_answers_as_a_fresh_engine_on_its_model(models, pool, fresh_b):
    view_a = pool.get("vllm", models["A"], OPTIONS)
    view_b = pool.get("vllm", models["B"], OPTIONS)
    assert pool.starts == 1 and view_a.engine is view_b.engine
    first_a = results(view_a)  # the engine started on A: no swap
    assert pool.swaps == 0
    swapped_b = results(view_b)
    assert same(swapped_b, fresh_b)
    assert not same(swapped_b, first_a)  # two models: the comparison can fail
    assert same(results(view_a), first_a)  # A back in: as when the engine started
    assert pool.swaps == 2 and pool.swap_s > 0
    swapped = [line.split(" (")[0] for line in pool.lines if "swapped" in line]
    assert swapped == [f"  swapped {models[m]}'s weights into the vllm engine" for m in "BA"]


@vllm_test
def test_alternating_views_each_score_with_their_own_weights(models, pool, fresh_b):
    """The same long prompt on A, B, A, B: B's scores must not come from A's cached KV."""
    view_a = pool.get("vllm", models["A"], OPTIONS)
    view_b = pool.get("vllm", models["B"], OPTIONS)
    a = view_a.continuation_logprobs(PROMPTS, CONTINUATIONS)
    swaps = pool.swaps
    for _ in range(2):
        assert view_b.continuation_logprobs(PROMPTS, CONTINUATIONS) == pytest.approx(fresh_b[1], abs=1e-5)
        assert view_a.continuation_logprobs(PROMPTS, CONTINUATIONS) == pytest.approx(a, abs=1e-5)
    assert pool.swaps == swaps + 4
    assert max(abs(x - y) for x, y in zip(a, fresh_b[1])) > 1e-2


@vllm_test
def test_another_architecture_gets_its_own_engine(models, pool, fresh_b):
    starts, swaps = pool.starts, pool.swaps
    engine_c = pool.get("vllm", models["C"], OPTIONS)
    view_b = pool.get("vllm", models["B"], OPTIONS)
    assert engine_c.model == models["C"] and engine_c.engine is not view_b.engine
    assert engine_c.engine.weights == models["C"]  # started on C, nothing swapped in
    assert pool.starts == starts + 1 and len(pool.engines) == 2
    c = results(engine_c)
    assert not same(c, fresh_b)
    # the shared engine is untouched by C's: B still answers as B
    assert same(results(view_b), fresh_b)
    assert pool.swaps in (swaps, swaps + 1)  # + 1 when the shared engine held A


@vllm_test
def test_cai_run_serves_generate_and_evals_policy_and_reference_from_one_engine(models, tmp_path):
    """The real runner: generate on A, eval of B against A, all on the engine generate
    started; eval's stage.json counts its swaps (B in, then A for the reference)."""
    from typer.testing import CliRunner

    from cai.cli import app
    from cai.pipeline.manifest import read_manifest
    from pipeline_yaml import generate_then_eval

    path = generate_then_eval(tmp_path / "p.yaml", f"name: t, out: {tmp_path / 'run'}, "
                              f"model: {models['A']}, backend: vllm, "
                              f"backend_options: {json.dumps(OPTIONS)}",
                              models["B"], models["A"])
    r = CliRunner().invoke(app, ["run", str(path)])
    assert r.exit_code == 0, r.output
    assert r.output.count("starting the vllm engine") == 1
    assert f"swapped {models['B']}'s weights into the vllm engine" in r.output
    m = read_manifest(tmp_path / "run" / "eval")
    assert m["status"] == "done" and m["engine_starts"] == 0 and m["engine_swaps"] >= 2
    assert m["summary"]["kl"]["mean"] != 0.0  # two models: B's answers scored against A
