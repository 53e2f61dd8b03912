"""BenchBuilder: the criteria parser, topic clusters on real embeddings, the stage on the real model."""

from __future__ import annotations

import json

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.runs import Run
from synth.stages.select.benchbuilder import parse_criteria

COOKING = [
    "How long should I rest a steak after grilling it?",
    "What is the best way to keep homemade bread fresh for a week?",
    "Give me a vegetarian lasagna recipe for six people.",
    "Why does my risotto turn out gluey instead of creamy?",
    "How do I make a sourdough starter from scratch?",
    "What spices go into a classic chicken tikka masala?",
    "Can I freeze cooked rice, and how do I reheat it safely?",
    "How do I stop my pancakes from sticking to the pan?",
]
CODING = [
    "Write a Python function that merges overlapping intervals.",
    "How do I fix a segmentation fault in my C program that uses pointers?",
    "Explain the difference between a process and a thread with a Rust example.",
    "Write a SQL query that finds the second highest salary in each department.",
    "How do I implement an LRU cache in Java?",
    "Why does my JavaScript promise chain swallow errors?",
    "Write a Bash script that renames all .jpeg files in a folder to .jpg.",
    "How can I speed up a slow pandas groupby over ten million rows?",
]


def test_parse_criteria():
    assert parse_criteria("[1, 3, 7]") == [1, 3, 7]
    assert parse_criteria("The prompt meets [2,4, 4 ,6] of them.") == [2, 4, 6]
    assert parse_criteria("[]") == []
    assert parse_criteria("none of them") is None
    assert parse_criteria("[8, 9]") is None


def test_topic_clusters_separate_topics_and_absorb_outliers():
    pytest.importorskip("sentence_transformers")
    from synth.similarity.embed import sentence_encoder
    from synth.stages.select.topics import topic_clusters

    dishes = ["lasagna", "banana bread", "chicken curry", "mushroom risotto", "apple pie", "beef stew", "pad thai"]
    forms = ["How do I make {} at home?", "What goes wrong when my {} turns out dry?", "Which wine pairs with {}?",
             "Give me a quick {} recipe for four people.", "Can I freeze {} and reheat it later?"]  # fmt: skip
    tasks = ["reverse a linked list", "parse a CSV file", "implement binary search", "read a JSON config",
             "retry failed HTTP requests", "merge two sorted lists", "count words in a file"]  # fmt: skip
    cooking = [f.format(d) for d in dishes for f in forms]
    coding = [f"How do I {t} in {lang}?" for t in tasks for lang in ("Python", "Rust", "Java", "Go", "JavaScript")]
    vectors = sentence_encoder()([*cooking, *coding, "Tell me a joke."])
    clusters = topic_clusters(vectors, min_topic_size=4).tolist()
    assert len(set(clusters)) > 1 and -1 not in clusters  # outliers join their nearest topic
    assert not set(clusters[:35]) & set(clusters[35:70])  # no topic mixes cooking and coding
    assert topic_clusters(vectors[:7], min_topic_size=4).tolist() == [0] * 7  # too few rows: one topic


def test_benchbuilder_on_the_embedded_model_scores_or_fails_every_row(write, tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sentence_transformers")
    rows = [{"id": i, "instruction": t} for i, t in enumerate(COOKING[:3] + CODING[:3])]
    path = write(
        "p.yaml",
        f"""
        stages:
          - stage: load
            rows: {json.dumps(rows)}
          - stage: benchbuilder
            mode: complete
            max_tokens: 24
            prompt_threshold: 2
            cluster_threshold: 1
            min_topic_size: 3
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    stage = result.manifest["stages"][1]
    out = read_output(tmp_path / "run").to_pylist()
    dropped = list(Run(tmp_path / "run").iter_dropped("benchbuilder"))
    assert len(out) + len(dropped) == 6
    for row in out:
        assert row["criteria_score"] == len(row["criteria"]) >= 2 and row["cluster_mean_score"] >= 1
        assert all(1 <= c <= 7 for c in row["criteria"])
    reasons = {d["reason"] for d in dropped}
    assert reasons <= {"criteria_score_below_2", "cluster_mean_below_1", "unparsed_criteria"}
    assert sum(stage["filtered"].values()) + sum(stage["failed"].values()) == len(dropped)
    assert stage["failed"].get("unparsed_criteria", 0) < 6, "the model should manage some answers"
