"""The in-memory global stages as they were before they worked out of core (synth 0.1 before
issue 18), kept as the oracle the out-of-core path must match row for row: each function takes the
whole input as an Arrow table and returns (kept table, [(row, reason)] dropped), as the old
`process_all` methods did."""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.similarity.duplicates import _SPACE, from_pairs, minhash_signatures


def sort(table: pa.Table, by: str, key: str = "value", descending: bool = False, top: int | None = None):
    column = table.column(by)
    if key == "length":
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = pc.list_value_length(column)
        else:
            column = pc.utf8_length(column.cast(pa.string()))
    keyed = pa.table(
        {"missing": pc.is_null(column), "key": column, "position": pa.array(range(table.num_rows), pa.int64())}
    )
    order = pc.sort_indices(
        keyed,
        sort_keys=[
            ("missing", "ascending"),
            ("key", "descending" if descending else "ascending"),
            ("position", "ascending"),
        ],
    )
    dropped = []
    if top is not None:
        dropped = [(table.slice(i, 1).to_pylist()[0], f"not_in_top_{top}") for i in order[top:].to_pylist()]
        order = order[:top]
    return table.take(order), dropped


def limit(table: pa.Table, n: int):
    return table.slice(0, n), [(row, f"beyond_first_{n}") for row in table.slice(n).to_pylist()]


def sample(table: pa.Table, seed: int, n: int | None = None, fraction: float | None = None, shuffle: bool = False):
    total = table.num_rows
    k = min(total, n) if n is not None else round(total * fraction)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(total, size=k, replace=False)
    if not shuffle:
        chosen = np.sort(chosen)
    kept = np.zeros(total, dtype=bool)
    kept[chosen] = True
    dropped = [(row, "not_sampled") for row in table.filter(pa.array(~kept)).to_pylist()]
    return table.take(pa.array(chosen, type=pa.int64())), dropped


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return _SPACE.sub(" ", text).strip()


def group_identical(texts):
    seen: dict[str, int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    first: list[int] = []
    for i, t in enumerate(texts):
        u = seen.setdefault(t, len(seen))
        if u == len(first):
            first.append(i)
        inverse[i] = u
    count = np.bincount(inverse, minlength=len(first)).astype(np.int64)
    return list(seen), inverse, np.asarray(first, dtype=np.int64), count


def dedup_exact(texts, normalize: bool = True):
    _, inverse, first, count = group_identical([normalize_text(t) if normalize else t for t in texts])
    return first[inverse], count[inverse] - 1


def dedup_minhash(texts, threshold=0.7, ngram=5, unit="char", num_perm=128):
    from datasketch import MinHashLSH

    uniq, inverse, first, count = group_identical([normalize_text(t) for t in texts])
    signatures = minhash_signatures(uniq, ngram, unit, num_perm)
    values = np.stack([m.hashvalues for m in signatures])
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for u, m in enumerate(signatures):
            session.insert(u, m)
    a, b = [], []
    for u, m in enumerate(signatures):
        for v in lsh.query(m):
            if v > u:
                a.append(u)
                b.append(v)
    a_arr, b_arr = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    jaccard = (values[a_arr] == values[b_arr]).mean(axis=1) if len(a_arr) else np.zeros(0)
    ok = jaccard >= threshold
    rep, repeat = from_pairs(len(uniq), a_arr[ok], b_arr[ok], first, count)
    return rep[inverse], repeat[inverse]


def dedup(table: pa.Table, column: str, representative, repeat, method: str, id_column: str | None, keep_all=False):
    """The old dedup stage's table work around a (representative, repeat_count) result."""
    ids = table.column(id_column).to_pylist() if id_column else list(range(table.num_rows))
    out = table.append_column("representative_id", pa.array([ids[r] for r in representative.tolist()]))
    out = out.append_column("repeat_count", pa.array(repeat, pa.int64()))
    if keep_all:
        return out, []
    keep = representative == np.arange(len(representative))
    dropped = [(row, f"duplicate_{method}") for row in out.filter(pa.array(~keep)).to_pylist()]
    return out.filter(pa.array(keep)), dropped


# ---- the row filters as they were on dicts, before their Arrow path became their only one ----


def filter_rows(stage, rows: list[dict]):
    """`filter`: the first condition a row fails is its reason, its value the detail."""
    out, dropped = [], []
    for row in rows:
        failed = next((c for c in stage.params.where if not c.holds(row)), None)
        if failed is None:
            out.append(row)
        else:
            dropped.append((row, str(failed), f"{failed.column} = {row.get(failed.column)!r}", False))
    return out, dropped


def length_rows(stage, rows: list[dict]):
    """`length`: characters and tokens against the bounds, the first one broken is the reason."""
    from synth.records import text_of

    p = stage.params
    texts = [text_of(r.get(p.column)) for r in rows]
    out, dropped = [], []
    for row, text, tokens in zip(rows, texts, stage._tokens(texts), strict=True):
        chars = len(text)
        checks = (
            ("too_short_chars", p.min_chars is not None and chars < p.min_chars, f"{chars} chars"),
            ("too_long_chars", p.max_chars is not None and chars > p.max_chars, f"{chars} chars"),
            ("too_short_tokens", p.min_tokens is not None and tokens < p.min_tokens, f"{tokens} tokens"),
            ("too_long_tokens", p.max_tokens is not None and tokens > p.max_tokens, f"{tokens} tokens"),
        )
        failed = next((c for c in checks if c[1]), None)
        if failed:
            dropped.append((row, failed[0], failed[2], False))
        else:
            out.append({**row, p.output: chars} if p.output else row)
    return out, dropped


def regex_rows(stage, rows: list[dict]):
    """`regex`: the first rule that matches (or none, with keep_matching); a timeout fails the row."""
    from synth.records import text_of

    p = stage.params
    out, dropped = [], []
    for row in rows:
        text = text_of(row.get(p.column))
        try:
            hit = next(((m, r) for rx, r in stage._rules if (m := rx.search(text, timeout=p.timeout))), None)
        except TimeoutError:
            dropped.append((row, "regex_timeout", f"a pattern took over {p.timeout:g} s on this row", True))
            continue
        if p.keep_matching:
            if hit:
                out.append(row)
            else:
                dropped.append((row, p.reason or "no_pattern_matched", "", False))
        elif hit:
            dropped.append((row, hit[1], f"matched {hit[0].group(0)!r}", False))
        else:
            out.append(row)
    return out, dropped
