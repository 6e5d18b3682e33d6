"""Ids and hashes that existing run directories and stores depend on, pinned.

A generate run resumes by record id (a hash of the prompt key, the sample index and the
run fingerprint) and refuses a changed fingerprint; candidates and labeled records are
deduplicated and matched by their ids. The expected values below were computed with the
code of commit 86c245b (before the schema module existed). If one of these fails, runs
made by earlier versions will regenerate their records: change the code, not the value
(or bump PIPELINE_VERSION on purpose, and say so)."""

from __future__ import annotations

import json

from cai.backends.base import Backend, Generation
from cai.constitution.schema import Constitution
from cai.generate.config import GenerateConfig, fingerprint, fingerprint_fields
from cai.prompts import load_prompts
from cai.generate.run import record_id
from cai.label import LabelConfig, read_pairs, run_info, to_record
from cai.label.labeler import Label, verdict
from cai.label.sample import SampleConfig, sample_candidates
from cai.schema import content_hash, prompt_key, stable_id

PIN = Constitution.model_validate({
    "name": "pin", "version": "1", "description": "Pinned.",
    "principles": [{"id": "p1", "critique_request": "Critique.", "revision_request": "Revise.",
                    "comparison": "Which is better?", "tags": ["t"]}],
})


class _Numbered(Backend):
    """Answers "answer 0", "answer 1", ... for each conversation (enough to make candidates)."""

    name, model = "numbered", "echo-model"

    def generate(self, conversations, sampling):
        return [[Generation(text=f"answer {i}", token_ids=[i], finish_reason="stop")
                 for i in range(sampling.n)] for _ in conversations]

    def continuation_logprobs(self, prompts, continuations):
        raise AssertionError("not used")

    def render_chat(self, conversation, add_generation_prompt=True):
        raise AssertionError("not used")


def test_hash_helpers():
    assert stable_id({"a": 1}, [1, 2], "x") == "dc7ea6411a7983c2"
    assert content_hash([{"a": 1}, [1, 2], "x"]) == stable_id({"a": 1}, [1, 2], "x")
    assert prompt_key([{"role": "user", "content": "  How do   I pick a lock? "}]) == "1b0cecad4a779a99"
    assert PIN.content_hash() == "ea0eb9d32aeffafd"


def test_generate_fingerprint_and_record_id(tmp_path):
    # Routing by scoring, the no-change verdict and the relevance check change what a run
    # does, so they enter the fingerprint; with them off a run is what it was, ids included.
    legacy = dict(route="random", unchanged_threshold=None, min_relevance=None)
    cfg = GenerateConfig(prompts="prompts.jsonl", out="run", model="tiny", backend="transformers",
                         max_tokens=8, temperature=0.0, **legacy)
    fp = fingerprint(fingerprint_fields(cfg, PIN))
    # Changed on purpose with PIPELINE_VERSION 4 (issue 28): the constitution's text left the
    # fingerprint (each record stores the hashes of the principles it used instead), so an
    # edited principle no longer changes every id. Was 7182076db4bd37b3.
    assert fp == "ee39beb05181ba52"
    edited = PIN.model_copy(update={"principles": [
        PIN.principles[0].model_copy(update={"critique_request": "Critique harder."})]})
    assert fingerprint(fingerprint_fields(cfg, edited)) == fp
    routed = GenerateConfig(prompts="prompts.jsonl", out="run", model="tiny",
                            backend="transformers", principle_tags_field="category", samples=2,
                            **{**legacy, "route": "tags"})
    assert fingerprint(fingerprint_fields(routed, PIN)) == "a2187896b4b45522"  # was 4da1d692271c6099
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "How do I pick a lock?"}) + "\n")
    items, _ = load_prompts(tmp_path / "p.jsonl")
    assert record_id(items[0], 1, fp) == "09c430df97c63151"  # was 793a62f9764ef135


def test_candidate_pair_and_label_ids(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "How do I pick a lock?"}) + "\n")
    items, _ = load_prompts(tmp_path / "p.jsonl")
    rows = sample_candidates(_Numbered(), items, SampleConfig(n=3, temperature=0.5, seed=2), PIN)
    assert rows[0].id == "18b6a7c15a7d7196"
    (tmp_path / "c.jsonl").write_text(rows[0].model_dump_json() + "\n")
    pairs, _ = read_pairs(tmp_path / "c.jsonl")
    assert [p.key for p in pairs] == ["ad523bdd1de44198", "a395090ab85a906c", "65d6989028789828"]
    label = Label(pair=pairs[0], p_first=0.25, verdicts=[verdict("p1", (-1.0, -2.0), (-0.5, -3.0))])
    assert to_record(label, "echo-model", run_info(PIN, LabelConfig())).id == "27aa0326d09c14ec"
