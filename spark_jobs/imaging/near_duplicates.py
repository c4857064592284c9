"""Near-duplicate clusters of an image table, from the signatures ingest measured while decoding
(:mod:`spark_jobs.imaging.audit`), never by comparing all pairs:

1. candidates: LSH banding. Each image's whole-picture vector and its five crop views' vectors get
   ``bands`` keys of ``bits`` random-hyperplane signs each (one shuffle into buckets, one per band
   and key); the buckets of one entry are dropped in the JVM, the others, sorted along a random
   direction of their band, pair each whole view with the ``max_candidates`` entries either side,
   and each image keeps its ``max_candidates`` partners with the most such collisions (so a table
   of look-alikes costs no more than that per image);
2. verification, per candidate pair: the best view cosine must reach ``candidate_cosine``, then the
   aligned match score ``min_score`` with mean colours that fit it (:func:`audit.match`);
3. connected components of the verified pairs give the clusters: ``cluster_id`` is the smallest
   ``image_id`` of its cluster.

The verified pairs are ``near_duplicates.parquet`` (:data:`PAIRS_SCHEMA`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import numpy as np
import pandas as pd

from spark_jobs.core.ingest_config import AuditConfig
from spark_jobs.imaging import audit

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

METHOD: Final = "lsh-dct-views+aligned-detail"
PAIRS_SCHEMA: Final = (
    "image_id_a string, image_id_b string, source_uri_a string, source_uri_b string, "
    "distance double, score double, view_cosine double, method string"
)
_KEYS_SCHEMA = "id long, whole boolean, bucket long, order float"
# The pairing moves millions of (bucket, image) rows: it names an image by the first 15 hex digits
# of its image_id (a sha256) as a long, not by the 64-character string. Two images sharing those
# 60 bits (about one pair in 10^7 at a million images) are never paired with each other.
_ID_DIGITS: Final = 15
# Rows per Arrow batch of the pairing's Python steps: the project's default (256, sized for pixels)
# would cut a task's millions of small bucket entries into thousands of batches.
BATCH_ROWS: Final = 4096
_SCORED_SCHEMA = (
    "image_id_a string, image_id_b string, source_uri_a string, source_uri_b string, score double, view_cosine double"
)


def hyperplanes(cfg: AuditConfig) -> np.ndarray:
    """The ``bands * bits`` random hyperplanes of the LSH (the same for a seed everywhere)."""
    rng = np.random.default_rng(cfg.seed)
    return rng.standard_normal((cfg.bands * cfg.bits, audit.VECTOR_DIM)).astype(np.float32)


def band_keys(vectors: np.ndarray, planes: np.ndarray, bands: int, bits: int, centre: np.ndarray) -> np.ndarray:
    """``(images, views, bands)`` integer keys: each view's signs on a band's ``bits`` hyperplanes,
    taken about ``centre`` (the table's mean view vector: images of one kind, such as scans of ink
    on white, share a direction that would put them all in one bucket). ``vectors``:
    ``(images, VIEWS * VECTOR_DIM)``."""
    views = vectors.reshape(len(vectors), audit.VIEWS, audit.VECTOR_DIM) - centre
    signs = (views @ planes.T > 0).reshape(len(vectors), audit.VIEWS, bands, bits)
    return (signs.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=-1)


def buckets(keys: np.ndarray, bits: int) -> np.ndarray:
    """One long per ``(band, key)`` of :func:`band_keys` (``band << bits | key``: a bucket's name and
    the pairing's one sort key, which Spark sorts by its prefix alone; ``bits`` + 9 <= 63)."""
    return (np.arange(keys.shape[-1], dtype=np.int64) << bits) | keys


def short_id(column: str) -> Column:
    """The pairing's long name of an image (:data:`_ID_DIGITS`) from its ``image_id`` column."""
    from pyspark.sql import functions as F

    return F.conv(F.substring(column, 1, _ID_DIGITS), 16, 10).cast("long")


def _keys(frames: Iterator[pd.DataFrame], cfg: AuditConfig, centre: np.ndarray) -> Iterator[pd.DataFrame]:
    """``(id, whole, bucket, order)`` rows of each batch of ``(id, dup_vectors)``, one per view and
    band (``whole``: the whole-picture view; ``bucket``: :func:`buckets`; ``order``: the view's
    position along a random direction of its band, which sorts a bucket). A flat picture (no
    direction in its whole view) gets none: it is matched with nothing (its flags show it)."""
    planes, width = hyperplanes(cfg), audit.VIEWS * audit.VECTOR_DIM
    orders = np.random.default_rng(cfg.seed + 1).standard_normal((cfg.bands, audit.VECTOR_DIM)).astype(np.float32)
    for frame in frames:
        valid = [
            (i, v)
            for i, v in zip(frame["id"], frame["dup_vectors"], strict=True)
            if v is not None and len(v) == width and np.any(v[: audit.VECTOR_DIM])
        ]
        if not valid:
            continue
        n = len(valid)
        vectors = np.asarray([v for _, v in valid], dtype=np.float32)
        keys = band_keys(vectors, planes, cfg.bands, cfg.bits, centre)
        views = vectors.reshape(n, audit.VIEWS, audit.VECTOR_DIM) - centre
        yield pd.DataFrame(
            {
                "id": np.repeat(np.asarray([i for i, _ in valid], dtype=np.int64), audit.VIEWS * cfg.bands),
                "whole": np.tile(np.repeat(np.arange(audit.VIEWS) == 0, cfg.bands), n),
                "bucket": buckets(keys, cfg.bits).ravel(),
                "order": (views @ orders.T).ravel(),  # (image, view, band): each band's own direction
            }
        )


def mean_view(signatures: DataFrame) -> np.ndarray:
    """The mean of every view vector of the table (each task sums its rows: one small row each)."""
    width = audit.VIEWS * audit.VECTOR_DIM

    def sums(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        total, count = np.zeros(width, dtype=np.float64), 0
        for frame in frames:
            rows = [v for v in frame["dup_vectors"] if v is not None and len(v) == width]
            if rows:
                total += np.asarray(rows, dtype=np.float64).sum(axis=0)
                count += len(rows)
        yield pd.DataFrame({"n": [count], "total": [total]})

    parts = signatures.select("dup_vectors").mapInPandas(sums, "n long, total array<double>").collect()
    count = sum(r["n"] for r in parts)
    total = np.sum([np.asarray(r["total"]) for r in parts], axis=0) if parts else np.zeros(width)
    return (total / max(count, 1)).astype(np.float32).reshape(audit.VIEWS, audit.VECTOR_DIM).mean(axis=0)


def candidates(signatures: DataFrame, cfg: AuditConfig) -> DataFrame:
    """``(id_a, id_b)`` (:func:`short_id`) with a < b: pairs with views that share a band key and lie
    within ``max_candidates`` entries of each other in that bucket's order, each image keeping its
    ``max_candidates`` partners with the most such collisions (:func:`nearest`). The work grows
    with the table times ``max_candidates``, not with the square of a bucket. ``signatures``:
    ``image_id, dup_vectors``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    centre = mean_view(signatures)
    named = signatures.select(short_id("image_id").alias("id"), "dup_vectors")
    keys = named.mapInPandas(lambda it: _keys(it, cfg, centre), _KEYS_SCHEMA)
    # One shuffle puts each bucket's entries next to each other, in the band's order. Most buckets
    # hold one entry: a count over the bucket (on that same sort) drops them before Python; each
    # task then pairs the rest's neighbours in numpy (no per-bucket object in the JVM).
    arranged = keys.repartition("bucket").sortWithinPartitions("bucket", "order")
    shared = arranged.withColumn("_entries", F.count("*").over(Window.partitionBy("bucket")))
    shared = shared.where(F.col("_entries") > 1).drop("_entries")
    reach = cfg.max_candidates
    pairs = shared.mapInPandas(lambda it: _neighbours(it, reach), "id_a long, id_b long")
    return nearest(pairs.groupBy("id_a", "id_b").agg(F.count("*").alias("hits")), cfg.max_candidates)


def bucket_pairs(frame: pd.DataFrame, reach: int) -> pd.DataFrame:
    """``(id_a, id_b)``, a < b, of the entries of ``frame`` (sorted by bucket, order) that share a
    bucket, lie at most ``reach`` entries apart and include a whole view, once per such collision;
    an image is never paired with itself."""
    bucket, ids, whole = frame["bucket"].to_numpy(), frame["id"].to_numpy(), frame["whole"].to_numpy()
    out_a, out_b = [], []
    for step in range(1, min(reach, len(frame) - 1) + 1):
        near = (bucket[step:] == bucket[:-step]) & (whole[step:] | whole[:-step])
        a, b = ids[:-step][near], ids[step:][near]
        other = a != b
        out_a.append(np.minimum(a, b)[other])
        out_b.append(np.maximum(a, b)[other])
    if not out_a:
        return pd.DataFrame({"id_a": np.zeros(0, np.int64), "id_b": np.zeros(0, np.int64)})
    return pd.DataFrame({"id_a": np.concatenate(out_a), "id_b": np.concatenate(out_b)})


def _neighbours(frames: Iterator[pd.DataFrame], reach: int) -> Iterator[pd.DataFrame]:
    """:func:`bucket_pairs` over a task's sorted entries, batch by batch: the last bucket of a
    batch waits for the next one, where it may go on."""
    carry = None
    for frame in frames:
        rows = frame if carry is None else pd.concat([carry, frame], ignore_index=True)
        bucket = rows["bucket"].to_numpy()
        cut = int(np.argmax(bucket == bucket[-1]))  # the first row of the last bucket (sorted: the tail)
        carry = rows.iloc[cut:]
        if cut:
            yield bucket_pairs(rows.iloc[:cut], reach)
    if carry is not None and len(carry) > 1:
        yield bucket_pairs(carry, reach)


def nearest(hits: DataFrame, k: int) -> DataFrame:
    """``(id_a, id_b)`` of the pairs among either image's ``k`` partners with the most
    ``hits`` (band collisions: a copy collides in most bands, a look-alike in few). Verification
    then costs at most ``k`` pairs per image, however alike the images of a table are."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # Each pair once per end, from one pass over ``hits`` (a union of two selects would compute the
    # whole pairing twice).
    ends = hits.select(F.explode(F.array("id_a", "id_b")).alias("end"), "id_a", "id_b", "hits")
    rank = F.row_number().over(Window.partitionBy("end").orderBy(F.desc("hits"), "id_a", "id_b"))
    kept = ends.withColumn("_rank", rank).where(F.col("_rank") <= k)
    return kept.select("id_a", "id_b").distinct()


def view_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The best cosine of one picture's whole view against the other's views, both ways, for each
    row of ``a`` with the same row of ``b`` (``(pairs, VIEWS * VECTOR_DIM)``)."""
    va = a.reshape(len(a), audit.VIEWS, audit.VECTOR_DIM)
    vb = b.reshape(len(b), audit.VIEWS, audit.VECTOR_DIM)
    one = np.einsum("pd,pvd->pv", va[:, 0], vb).max(axis=1)
    return np.maximum(one, np.einsum("pd,pvd->pv", vb[:, 0], va).max(axis=1))


_SCORED_COLUMNS = [c.split()[0] for c in _SCORED_SCHEMA.split(", ")]


def _score(frames: Iterator[pd.DataFrame], cfg: AuditConfig) -> Iterator[pd.DataFrame]:
    """Verified pairs of each batch of candidates (with both signatures)."""
    width = audit.VIEWS * audit.VECTOR_DIM
    for frame in frames:
        cosines = view_cosines(
            np.stack(frame["vec_a"].to_numpy()).astype(np.float32).reshape(-1, width),
            np.stack(frame["vec_b"].to_numpy()).astype(np.float32).reshape(-1, width),
        )
        out = []
        for row, cosine in zip(frame.itertuples(index=False), cosines, strict=True):
            if cosine < cfg.candidate_cosine:
                continue
            score = audit.match(bytes(row.thumb_a), bytes(row.thumb_b), cfg)
            if score is not None:
                out.append((row.image_id_a, row.image_id_b, row.source_uri_a, row.source_uri_b, score, float(cosine)))
        yield pd.DataFrame(out, columns=_SCORED_COLUMNS)


def verified(signatures: DataFrame, pairs: DataFrame, cfg: AuditConfig) -> DataFrame:
    """The candidate ``pairs`` (:func:`candidates`) that are near-duplicates, as :data:`PAIRS_SCHEMA`
    rows. ``signatures``: ``image_id, source_uri, dup_thumb, dup_vectors``."""
    from pyspark.sql import functions as F

    side = {
        s: signatures.select(
            short_id("image_id").alias(f"id_{s}"),
            F.col("image_id").alias(f"image_id_{s}"),
            F.col("source_uri").alias(f"source_uri_{s}"),
            F.col("dup_thumb").alias(f"thumb_{s}"),
            F.col("dup_vectors").alias(f"vec_{s}"),
        )
        for s in ("a", "b")
    }
    both = pairs.join(side["a"], "id_a").join(side["b"], "id_b").drop("id_a", "id_b")
    # One pass: the URIs go through the scoring beside the ids (a join back would pair twice).
    scored = both.mapInPandas(lambda it: _score(it, cfg), _SCORED_SCHEMA)
    return scored.select(
        "image_id_a",
        "image_id_b",
        "source_uri_a",
        "source_uri_b",
        (1.0 - F.col("score")).alias("distance"),
        "score",
        "view_cosine",
        F.lit(METHOD).alias("method"),
    )


def clusters(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``{image_id: cluster_id}`` of every image in a verified pair: the connected components of
    the pairs, each named by its smallest image id (images in no pair are their own cluster)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = sorted({i for pair in pairs for i in pair})
    if not ids:
        return {}
    index = {i: n for n, i in enumerate(ids)}
    rows = [index[a] for a, _ in pairs]
    cols = [index[b] for _, b in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    smallest: dict[int, str] = {}
    for i in ids:  # sorted: the first of each component is its smallest id
        smallest.setdefault(int(labels[index[i]]), i)
    return {i: smallest[int(labels[index[i]])] for i in ids}
