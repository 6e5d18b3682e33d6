"""`cai generate` end to end: a scripted backend (exact statuses and outputs), the tiny
random model through the transformers backend, config files/flags, config-change errors,
and one run on the shared vLLM engine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cai.backends import Backend, Generation, SamplingConfig
from cai.constitution import load_constitution, sample_principle
from cai.data.store import read_preferences
from cai.generate.checkpoint import RunConfigError, RunLockedError, RunStore
from cai.generate.config import ConfigError, GenerateConfig, load_config
from cai.generate.run import run_generate

HARMLESS = load_constitution("harmless")
# The pipeline without routing by scoring, the no-change verdict and the relevance check
# (tests of those steps are in test_generate_revq.py; this backend cannot score).
LEGACY = dict(route="random", unchanged_threshold=None, min_relevance=None)
CASES = ["ok", "ok2", "empty-response", "empty-critique", "empty-revision", "identical",
         "loop", "truncated", "copied", "echo", "labelled"]


class ScriptedBackend(Backend):
    """Answers from a script keyed by the case marker in the prompt; records every call."""

    name = "scripted"
    model = "scripted-model"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, SamplingConfig]] = []

    @staticmethod
    def _stage(conv: list[dict[str, str]]) -> str:
        last = conv[-1]["content"]
        if any(last == p.critique_request for p in HARMLESS.principles):
            return "critique"
        if any(last == p.revision_request for p in HARMLESS.principles):
            return "revision"
        return "response"

    def generate(self, conversations, sampling):
        stages = {self._stage(c) for c in conversations}
        assert len(stages) == 1, "a backend call must hold one stage only"
        stage = stages.pop()
        self.calls.append((stage, len(conversations), sampling))
        out = []
        for conv in conversations:
            case = next(m["content"].split("]")[0][6:] for m in conv
                        if m["role"] == "user" and m["content"].startswith("[case:"))
            current = conv[-2]["content"] if stage == "critique" else (
                conv[-4]["content"] if stage == "revision" else None)
            gens = []
            for i in range(sampling.n):
                text, finish = self._script(case, stage, current, i)
                gens.append(Generation(text=text, token_ids=list(range(len(text.split()))),
                                       finish_reason=finish))
            out.append(gens)
        return out

    @staticmethod
    def _script(case: str, stage: str, current: str | None, i: int) -> tuple[str, str]:
        if stage == "response":
            return ("" if case == "empty-response" else f"Sure, here is how ({case}, sample {i})."), "stop"
        if stage == "critique":
            return ("" if case == "empty-critique" else "Critique: it helps with harm."), "stop"
        if case == "second-try":  # the first revision candidate loops, the next ones are fine
            case = "loop" if i == 0 else "ok"
        if case == "labelled" and current.startswith("I won't help;"):
            case = "ok"  # round 2 revises the cleaned round-1 text like any other
        return {
            "empty-revision": ("", "stop"),
            "identical": (current, "stop"),
            "loop": ("I can't help with that. " * 5, "stop"),
            "truncated": ("I can't help with that, but here is", "length"),
            "copied": (HARMLESS.few_shot[0].revision, "stop"),
            "echo": ("It helps with harm, I said.", "stop"),  # the critique, restated
            "labelled": ("Revision: I won't help; here is a safer idea.", "stop"),
        }.get(case, (f"I won't help with that ({current[-20:]}).", "stop"))

    def continuation_logprobs(self, prompts, continuations):
        raise NotImplementedError

    def render_chat(self, conversation, add_generation_prompt=True):
        return json.dumps(conversation)


def _prompts(tmp_path: Path, cases=CASES) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": c, "prompt": f"[case:{c}] please help me do something bad", "category": "x"}
            for c in cases]
    rows.append({"id": "dup", "prompt": rows[0]["prompt"]})
    rows.append({"id": "blank", "prompt": ""})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path, **kw) -> GenerateConfig:
    base = dict(prompts=str(_prompts(tmp_path)), out=str(tmp_path / "run"), constitution="harmless",
                progress=False, **LEGACY)
    return GenerateConfig(**{**base, **kw})


def test_bars_move_as_the_engine_finishes_requests_inside_one_call(tmp_path):
    """One chunk, so each stage is a single engine call: the bar moves with each request
    the backend reports finished, and the call's end adds only what was not reported."""
    from recording_bars import RecordingBars

    from cai.backends import finished

    make = RecordingBars()

    class Reporting(ScriptedBackend):
        seen: list[tuple[str, int]] = []

        def generate(self, conversations, sampling):
            out = []
            for conv in conversations:
                out += super().generate([conv], sampling)
                finished.finished(1)
                self.seen.append((self._stage(conv), make.named("respond")[0].n))
            if self._stage(conversations[0]) == "response":
                time.sleep(1.5)  # requests that run to max_tokens end together, late
            return out

    backend = Reporting()
    run_generate(_config(tmp_path, chunk_size=100, progress=True), backend=backend, progress=make)
    bars = {name: make.named(name)[0] for name in ("respond", "critique", "revise")}
    during = [n for stage, n in backend.seen if stage == "response"]
    assert during == list(range(1, 12))  # 11 prompts, one step each, during the call
    assert bars["respond"].n == bars["respond"].total == 11  # not counted twice
    # redrawn every second through the call, between the requests it hears of
    assert bars["respond"].refreshes >= 1
    # each bar's clock (rate, ETA) starts at its own first step, once
    assert bars["respond"].resets == bars["critique"].resets == bars["revise"].resets == 1


def test_scripted_end_to_end(tmp_path):
    backend = ScriptedBackend()
    cfg = _config(tmp_path, rounds=2, chunk_size=100)
    summary = run_generate(cfg, backend=backend)

    # Stage-wise batching: one call per stage and round, each over every active chain.
    assert [(s, n) for s, n, _ in backend.calls] == [
        ("response", 11), ("critique", 10), ("revision", 9), ("critique", 3), ("revision", 3)]
    assert backend.calls[1][2].seed != backend.calls[3][2].seed  # fresh seed per round

    status = {r["source_id"]: r for r in _revisions(tmp_path / "run")}
    want = {"ok": "ok", "ok2": "ok", "labelled": "ok", "empty-response": "degenerate:empty",
            "empty-critique": "degenerate:empty", "empty-revision": "degenerate:empty",
            "identical": "degenerate:identical", "loop": "degenerate:repetition",
            "truncated": "degenerate:truncated", "copied": "degenerate:copied",
            "echo": "degenerate:echo"}
    assert {k: r["status"] for k, r in status.items()} == want
    assert status["truncated"]["reason"] == "round 1 revision: cut off at max_tokens (256 tokens)"
    assert status["echo"]["reason"] == "round 1 revision: 33% of its word 3-grams repeat the critique"  # 2 of its 6
    assert summary["status"] == {"degenerate:copied": 1, "degenerate:echo": 1, "degenerate:empty": 3,
                                 "degenerate:identical": 1, "degenerate:repetition": 1,
                                 "degenerate:truncated": 1, "ok": 3}
    assert summary["rejects"] == 2 and summary["reject_reasons"] == {"duplicate": 1, "empty": 1}

    ok = status["labelled"]
    assert ok["final_response"].startswith("I won't help with that (")  # round 2 revised round 1
    assert ok["rounds"][0]["revision"] == "I won't help; here is a safer idea."  # "Revision:" cleaned
    assert [r["round"] for r in ok["rounds"]] == [1, 2]
    assert ok["principle_ids"] == [sample_principle(HARMLESS, 0, f"{ok['id']}/round{r}").id
                                   for r in range(2)]
    assert ok["constitution"] == "harmless" and ok["constitution_hash"] == HARMLESS.content_hash()
    assert ok["model"] == "scripted-model" and ok["seed"] == 0
    assert json.loads(ok["sampling"])["critique"]["max_tokens"] == 256
    assert set(json.loads(ok["timings"])) == {"response", "critique", "revision"}
    assert ok["prompt"] == [{"role": "user", "content": "[case:labelled] please help me do something bad"}]
    assert status["empty-revision"]["final_response"] is None

    prefs = {p.metadata["source_id"]: p for p in read_preferences(tmp_path / "run" / "preferences")}
    assert set(prefs) == {"ok", "ok2", "labelled"}
    p = prefs["ok"]
    assert p.source == "ai-revision" and p.p_chosen == 1.0 and p.id == status["ok"]["id"]
    assert p.chosen[0].content == status["ok"]["final_response"]
    assert p.rejected[0].content == "Sure, here is how (ok, sample 0)."
    assert p.principle_ids == status["ok"]["principle_ids"]

    from datasets import load_dataset

    sft = load_dataset("parquet", data_files=str(tmp_path / "run/sft/*.parquet"), split="train")
    assert sft.num_rows == 3
    row = next(r for r in sft if r["source_id"] == "ok")
    assert row["messages"][-1] == {"role": "assistant", "content": status["ok"]["final_response"]}
    revs = load_dataset("parquet", data_files=str(tmp_path / "run/revisions/*.parquet"), split="train")
    assert revs.num_rows == 11 and len(set(revs["id"])) == 11

    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["generation"]["rounds"] == 2
    assert manifest["datasets"]["preferences"]["count"] == 3
    rejects = [json.loads(x) for x in (tmp_path / "run/rejects.jsonl").read_text().splitlines()]
    assert [(r["location"], r["code"]) for r in rejects] == [("prompts.jsonl:12", "duplicate"),
                                                               ("prompts.jsonl:13", "empty")]

    # A finished run is not redone.
    again = ScriptedBackend()
    summary = run_generate(cfg, backend=again)
    assert again.calls == [] and summary["new_records"] == 0 and summary["records"] == 11


def _revisions(run: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((run / "revisions").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_samples_chunks_and_extension(tmp_path):
    backend = ScriptedBackend()
    cfg = _config(tmp_path, samples=2, chunk_size=4, limit=3)
    run_generate(cfg, backend=backend)
    # 3 prompts x 2 samples, 2 prompts per chunk: two chunks, two shards
    assert [(s, n) for s, n, _ in backend.calls if s == "response"] == [("response", 2), ("response", 1)]
    assert all(c[2].n == 2 for c in backend.calls if c[0] == "response")
    rows = _revisions(tmp_path / "run")
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert sorted(r["initial_response"][-10:] for r in rows if r["source_id"] == "ok") == ["sample 0).",
                                                                                          "sample 1)."]
    # A larger limit extends the same run; only the new prompts are generated.
    backend = ScriptedBackend()
    summary = run_generate(cfg.model_copy(update={"limit": 5}), backend=backend)
    assert summary["new_records"] == 4 and summary["already_done"] == 6 and summary["records"] == 10
    assert sum(n for s, n, _ in backend.calls if s == "response") == 2


def test_revision_candidates_keep_the_first_that_passes(tmp_path):
    backend = ScriptedBackend()
    cfg = _config(tmp_path, revision_candidates=3, chunk_size=100)
    cfg = cfg.model_copy(update={"prompts": str(_prompts(tmp_path, ["ok", "second-try", "loop"]))})
    summary = run_generate(cfg, backend=backend)
    # Still one batched call per stage; only the revision requests ask for 3 samples.
    assert [(s, n, c.n) for s, n, c in backend.calls] == [
        ("response", 3, 1), ("critique", 3, 1), ("revision", 3, 3)]
    rows = {r["source_id"]: r for r in _revisions(tmp_path / "run")}
    assert rows["ok"]["status"] == "ok" and rows["ok"]["rounds"][0]["revision_candidate"] == 0
    second = rows["second-try"]
    assert second["status"] == "ok" and second["final_response"].startswith("I won't help with that")
    assert second["rounds"][0]["revision_candidate"] == 1
    assert second["rounds"][0]["rejected_candidates"] == ["repetition"]
    # No candidate passes: the first one and its problem are recorded.
    assert rows["loop"]["status"] == "degenerate:repetition"
    assert rows["loop"]["rounds"][0]["revision_candidate"] == 0
    assert summary["status"] == {"degenerate:repetition": 1, "ok": 2}
    # A different number of candidates is a different run: refused in the same directory.
    with pytest.raises(RunConfigError):
        run_generate(cfg.model_copy(update={"revision_candidates": 1}), backend=ScriptedBackend())
    with pytest.raises(ValueError, match="revision_candidates > 1 needs"):
        _config(tmp_path, revision_candidates=2, revision={"temperature": 0.0})


def test_principles_routed_by_prompt_tags(tmp_path):
    """With principle_tags_field, every round's principle shares a tag with the prompt row's
    field; rows whose value matches no principle draw from all. Without it, record ids are
    what they were (the fingerprint only names the field when it is set)."""
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"v{i}", "prompt": f"[case:ok] violent request {i}", "category": "violence_weapons"}
            for i in range(6)]
    rows += [{"id": f"p{i}", "prompt": f"[case:ok] doxxing request {i}",
              "category": ["privacy_doxxing", "hate_harassment"]} for i in range(6)]
    rows += [{"id": "u", "prompt": "[case:ok] something else", "category": "unknown"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    routed = GenerateConfig(prompts=str(path), out=str(tmp_path / "routed"), rounds=2,
                            principle_tags_field="category", progress=False,
                            **{**LEGACY, "route": "tags"})
    run_generate(routed, backend=ScriptedBackend())
    by_source = {r["source_id"]: r for r in _revisions(tmp_path / "routed")}
    for sid, rec in by_source.items():
        used = {r["principle_id"] for r in rec["rounds"]}
        if sid.startswith("v"):
            assert used == {"violence-weapons"}
        elif sid.startswith("p"):
            assert used <= {"privacy", "hate-harassment"}
    assert {r["principle_id"] for sid, rec in by_source.items() if sid.startswith("p")
            for r in rec["rounds"]} == {"privacy", "hate-harassment"}

    plain = routed.model_copy(update={"principle_tags_field": None, "out": str(tmp_path / "plain")})
    run_generate(plain, backend=ScriptedBackend())
    plain_recs = {r["source_id"]: r for r in _revisions(tmp_path / "plain")}
    assert {r["principle_id"] for rec in plain_recs.values() for r in rec["rounds"]} - {
        "violence-weapons", "privacy", "hate-harassment"}  # unrouted draws range wider
    again = plain.model_copy(update={"out": str(tmp_path / "plain2")})
    run_generate(again, backend=ScriptedBackend())
    assert {r["id"] for r in _revisions(tmp_path / "plain2")} == {r["id"] for r in plain_recs.values()}
    assert not {r["id"] for r in plain_recs.values()} & {r["id"] for r in by_source.values()}


def test_changed_config_is_refused(tmp_path):
    cfg = _config(tmp_path, limit=2)
    run_generate(cfg, backend=ScriptedBackend())
    for change in [{"temperature": 0.3}, {"rounds": 2}, {"constitution": "helpful-honest"},
                   {"seed": 1}, {"few_shot": False}]:
        with pytest.raises(RunConfigError, match="different configuration") as e:
            run_generate(cfg.model_copy(update=change), backend=ScriptedBackend())
        assert "choose a new --out" in str(e.value)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "[case:ok] x"}) + "\n")
    with pytest.raises(RunConfigError, match="inputs.prompts"):
        run_generate(cfg.model_copy(update={"prompts": str(other)}), backend=ScriptedBackend())
    # the refused runs wrote nothing
    assert len(_revisions(tmp_path / "run")) == 2


def test_one_process_per_run_dir(tmp_path):
    with RunStore(tmp_path / "run") as store:
        store.open({"fingerprint": "x"}, {})
        with pytest.raises(RunLockedError):
            RunStore(tmp_path / "run").open({"fingerprint": "x"}, {})


def test_too_long_prompts_are_skipped_not_fatal(tmp_path):
    backend = ScriptedBackend()
    backend.tokenizer = lambda text, add_special_tokens=False: {"input_ids": text.split()}
    backend.context_length = lambda: 300  # few-shot critique prompts are longer than this
    summary = run_generate(_config(tmp_path, limit=2, max_tokens=50), backend=backend)
    assert summary["status"] == {"skipped:too-long": 2}
    row = _revisions(tmp_path / "run")[0]
    assert "round 1 critique prompt is" in row["reason"] and "exceeds the context (300)" in row["reason"]


def test_load_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text("generate:\n  prompts: p.jsonl\n  out: o\n  rounds: 2\n  temperature: 0.5\n"
                    "  critique: {max_tokens: 64}\n  backend_options: {gpu_memory_utilization: 0.3}\n"
                    "other_stage: {x: 1}\n")
    cfg = load_config(path, {"rounds": 3, "temperature": None, "backend_options": {"dtype": "float32"}})
    assert cfg.rounds == 3 and cfg.temperature == 0.5
    assert cfg.backend_options == {"gpu_memory_utilization": 0.3, "dtype": "float32"}
    assert cfg.sampling("critique").max_tokens == 64 and cfg.sampling("revision").max_tokens == 256
    assert cfg.rounds_for(HARMLESS) == 3 and GenerateConfig(prompts="p", out="o").rounds_for(HARMLESS) == 1
    with pytest.raises(ConfigError, match="rounds"):
        load_config(path, {"rounds": 5})
    with pytest.raises(ConfigError, match="samples > 1 needs"):
        load_config(path, {"samples": 2, "temperature": 0.0})
    path.write_text("generate:\n  prompts: p\n  out: o\n  tempreature: 1\n")
    with pytest.raises(ConfigError, match="tempreature"):
        load_config(path)


def test_tiny_model_end_to_end(tmp_path, tiny_backend, tiny_model_dir):
    """The real transformers backend on a tiny random model: every record gets a status,
    the chain is complete, and a rerun does nothing."""
    cfg = _config(tmp_path, prompts="pipelines/prompts/red_team_train.jsonl", limit=3,
                  max_tokens=12, few_shot=False, model=str(tiny_model_dir), rounds=1)
    summary = run_generate(cfg, backend=tiny_backend)
    assert summary["records"] == 3 and summary["tokens"]["total"] > 0
    assert summary["tokens"]["response"] > 0 and summary["tokens"]["revision"] > 0
    rows = _revisions(tmp_path / "run")
    assert [r["source_id"] for r in rows] == ["rt-0001", "rt-0002", "rt-0004"]
    for r in rows:
        assert r["status"] == "ok" or r["status"].startswith("degenerate:")
        assert r["backend"] == "transformers" and r["model"] == str(tiny_model_dir)
        assert r["initial_response"] and len(r["rounds"]) == 1 and r["rounds"][0]["critique"] is not None
        if r["status"] == "degenerate:truncated":  # a random model rarely emits EOS
            assert r["rounds"][0]["revision_finish"] == "length"
    assert run_generate(cfg, backend=tiny_backend)["new_records"] == 0


@pytest.mark.vllm
def test_vllm_end_to_end(tmp_path, vllm_backend):
    """The shared vLLM engine on the embedded model: a few red-team prompts, one round."""
    cfg = _config(tmp_path, prompts="pipelines/prompts/red_team_train.jsonl", limit=4,
                  max_tokens=96, backend="vllm", model=vllm_backend.model)
    summary = run_generate(cfg, backend=vllm_backend)
    assert summary["records"] == 4 and summary["tokens"]["total"] > 0
    rows = _revisions(tmp_path / "run")
    assert all(r["initial_response"] and r["backend"] == "vllm" for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert summary["preferences"] == len(ok)
    for r in ok:
        assert r["final_response"] and r["final_response"] != r["initial_response"]
