"""Near-duplicate clusters of an image table, from the signatures ingest measured while decoding
(:mod:`spark_jobs.imaging.audit`), never by comparing all pairs:

1. candidates: LSH banding. Each image's whole-picture vector and its five crop views' vectors get
   ``bands`` keys of ``bits`` random-hyperplane signs each (one shuffle into ``(band, key)``
   buckets); in a bucket, sorted along a random direction of its band, each entry is paired with
   the next ``max_candidates``, and each image keeps its ``max_candidates`` partners with the most
   such collisions (so a table of look-alikes costs no more than that per image);
2. verification, per candidate pair: the best view cosine must reach ``candidate_cosine``, then the
   aligned match score ``min_score`` with the mean colours at most ``max_colour_distance`` apart;
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
_KEYS_SCHEMA = "image_id string, view int, band int, key long, order float"
_SCORED_SCHEMA = "image_id_a string, image_id_b string, score double, view_cosine double"


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


def _keys(frames: Iterator[pd.DataFrame], cfg: AuditConfig, centre: np.ndarray) -> Iterator[pd.DataFrame]:
    """``(image_id, view, band, key, order)`` rows of each batch of signatures (``order``: the
    view's position along a random direction of its band, which sorts a bucket). A flat picture
    (no direction in its whole view) gets none: it is matched with nothing (its flags show it)."""
    planes, width = hyperplanes(cfg), audit.VIEWS * audit.VECTOR_DIM
    orders = np.random.default_rng(cfg.seed + 1).standard_normal((cfg.bands, audit.VECTOR_DIM)).astype(np.float32)
    for frame in frames:
        valid = [
            (i, v)
            for i, v in zip(frame["image_id"], frame["dup_vectors"], strict=True)
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
                "image_id": np.repeat(np.asarray([i for i, _ in valid], dtype=object), audit.VIEWS * cfg.bands),
                "view": np.tile(np.repeat(np.arange(audit.VIEWS, dtype=np.int32), cfg.bands), n),
                "band": np.tile(np.arange(cfg.bands, dtype=np.int32), n * audit.VIEWS),
                "key": keys.ravel(),
                "order": (views @ orders.T).ravel(),  # (image, view, band): each band's own direction
            }
        )


def mean_view(signatures: DataFrame) -> np.ndarray:
    """The mean of every view vector of the table (one small aggregation)."""
    from pyspark.sql import functions as F

    width = audit.VIEWS * audit.VECTOR_DIM
    rows = (
        signatures.where(F.size("dup_vectors") == width)
        .select(F.posexplode("dup_vectors").alias("pos", "value"))
        .groupBy("pos")
        .agg(F.avg("value").alias("mean"))
        .collect()
    )
    means = np.zeros(width, dtype=np.float32)
    for row in rows:
        means[row["pos"]] = row["mean"]
    return means.reshape(audit.VIEWS, audit.VECTOR_DIM).mean(axis=0)


def candidates(signatures: DataFrame, cfg: AuditConfig) -> DataFrame:
    """``(image_id_a, image_id_b)`` with a < b: pairs with views that share a band key and lie within
    ``max_candidates`` entries of each other in that bucket's order, each image keeping its
    ``max_candidates`` partners with the most such collisions (:func:`nearest`). The work grows
    with the table times ``max_candidates``, not with the square of a bucket. ``signatures``:
    ``image_id, dup_vectors``."""
    from pyspark.sql import functions as F

    centre = mean_view(signatures)
    keys = signatures.select("image_id", "dup_vectors").mapInPandas(lambda it: _keys(it, cfg, centre), _KEYS_SCHEMA)
    # One shuffle into buckets (the keys are computed once), then each bucket's pairs in the JVM:
    # its entries sorted along the band's direction, each whole view paired with the
    # ``max_candidates`` entries either side of it (every pair of a small bucket; in a bucket of
    # look-alikes, the nearest, never all of them).
    entries = F.array_sort(F.collect_list(F.struct("order", "image_id", "view")))
    buckets = keys.groupBy("band", "key").agg(entries.alias("e")).where(F.size("e") > 1)
    reach = cfg.max_candidates

    def around(i: Column) -> Column:
        start = F.greatest(i - reach, F.lit(1))
        near = F.slice("e", start, i + reach - start + 1)
        pairs = F.transform(
            near, lambda x: F.struct(F.col("e")[i - 1]["image_id"].alias("q"), x["image_id"].alias("i"))
        )
        return F.when(F.col("e")[i - 1]["view"] == 0, pairs).otherwise(F.array())

    pairs = buckets.select(F.explode(F.flatten(F.transform(F.sequence(F.lit(1), F.size("e")), around))).alias("pair"))
    pairs = pairs.select("pair.q", "pair.i")
    pairs = pairs.where(F.col("q") != F.col("i"))
    ordered = pairs.select(F.least("q", "i").alias("image_id_a"), F.greatest("q", "i").alias("image_id_b"))
    return nearest(ordered.groupBy("image_id_a", "image_id_b").agg(F.count("*").alias("hits")), cfg.max_candidates)


def nearest(hits: DataFrame, k: int) -> DataFrame:
    """``(image_id_a, image_id_b)`` of the pairs among either image's ``k`` partners with the most
    ``hits`` (band collisions: a copy collides in most bands, a look-alike in few). Verification
    then costs at most ``k`` pairs per image, however alike the images of a table are."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ends = hits.select(F.col("image_id_a").alias("end"), "image_id_a", "image_id_b", "hits").unionByName(
        hits.select(F.col("image_id_b").alias("end"), "image_id_a", "image_id_b", "hits")
    )
    rank = F.row_number().over(Window.partitionBy("end").orderBy(F.desc("hits"), "image_id_a", "image_id_b"))
    kept = ends.withColumn("_rank", rank).where(F.col("_rank") <= k)
    return kept.select("image_id_a", "image_id_b").distinct()


def view_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The best cosine of one picture's whole view against the other's views, both ways, for each
    row of ``a`` with the same row of ``b`` (``(pairs, VIEWS * VECTOR_DIM)``)."""
    va = a.reshape(len(a), audit.VIEWS, audit.VECTOR_DIM)
    vb = b.reshape(len(b), audit.VIEWS, audit.VECTOR_DIM)
    one = np.einsum("pd,pvd->pv", va[:, 0], vb).max(axis=1)
    return np.maximum(one, np.einsum("pd,pvd->pv", vb[:, 0], va).max(axis=1))


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
                out.append((row.image_id_a, row.image_id_b, score, float(cosine)))
        yield pd.DataFrame(out, columns=["image_id_a", "image_id_b", "score", "view_cosine"])


def verified(signatures: DataFrame, pairs: DataFrame, cfg: AuditConfig) -> DataFrame:
    """The candidate ``pairs`` that are near-duplicates, as :data:`PAIRS_SCHEMA` rows.
    ``signatures``: ``image_id, source_uri, dup_thumb, dup_vectors``."""
    from pyspark.sql import functions as F

    side = {
        s: signatures.select(
            F.col("image_id").alias(f"image_id_{s}"),
            F.col("source_uri").alias(f"source_uri_{s}"),
            F.col("dup_thumb").alias(f"thumb_{s}"),
            F.col("dup_vectors").alias(f"vec_{s}"),
        )
        for s in ("a", "b")
    }
    both = pairs.join(side["a"], "image_id_a").join(side["b"], "image_id_b")
    scored = both.select("image_id_a", "image_id_b", "thumb_a", "thumb_b", "vec_a", "vec_b").mapInPandas(
        lambda it: _score(it, cfg), _SCORED_SCHEMA
    )
    uris = both.select("image_id_a", "image_id_b", "source_uri_a", "source_uri_b")
    return scored.join(uris, ["image_id_a", "image_id_b"]).select(
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
