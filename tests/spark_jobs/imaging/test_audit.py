"""The audit's pure functions: near-duplicate signatures and match scores on planted copies of real
photographs, and each quality flag on images built to raise it and on images built not to."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageFilter

from spark_jobs.core.ingest_config import AuditConfig, FlagsConfig
from spark_jobs.imaging import audit, near_duplicates
from tests.near_duplicate_corpus import TRANSFORMS, bases, corpus, photographs

DEFAULTS = AuditConfig()  # the photographs' settings


@pytest.fixture(scope="module")
def planted() -> tuple[list, list]:
    """Four bases per transform (with their copies) and their signatures."""
    items = corpus(4 * len(TRANSFORMS), flips=True)
    return items, [audit.signature(i.image) for i in items]


def best_view_cosine(a: list[float], b: list[float]) -> float:
    """The candidate similarity: one picture's whole view against the other's six views, both ways."""
    return float(near_duplicates.view_cosines(np.asarray([a], np.float32), np.asarray([b], np.float32))[0])


def is_match(a: bytes, b: bytes) -> bool:
    return audit.match(a, b, DEFAULTS) is not None


def test_every_planted_copy_matches_its_base_and_no_two_bases_match(planted: tuple[list, list]) -> None:
    items, sigs = planted
    by_name = dict(zip((i.name for i in items), sigs, strict=True))
    copies = [i for i in items if i.transform not in (None, "flip")]
    missed = sorted(c.name for c in copies if not is_match(by_name[f"base-{c.base}"][0], by_name[c.name][0]))
    assert len(missed) <= 0.05 * len(copies), missed  # recall >= 0.95 of the planted pairs
    unrelated = [
        (a.name, b.name)
        for (a, sa), (b, sb) in itertools.combinations(zip(items, sigs, strict=True), 2)
        if a.base != b.base and is_match(sa[0], sb[0])
    ]
    assert unrelated == []  # no false pair: textures and crops of one photograph among them
    candidates = [best_view_cosine(by_name[f"base-{c.base}"][1], by_name[c.name][1]) for c in copies]
    assert min(candidates) >= 0.75  # the vectors that find candidates keep every copy close


def test_a_mirrored_copy_is_not_a_match(planted: tuple[list, list]) -> None:
    """Flips are reported apart: the score compares pictures as they stand."""
    items, sigs = planted
    by_name = dict(zip((i.name for i in items), sigs, strict=True))
    flips = [i for i in items if i.transform == "flip"]
    assert all(audit.match_score(by_name[f"base-{f.base}"][0], by_name[f.name][0]) < 0.5 for f in flips[:5])


def test_a_picture_matches_itself_and_a_flat_one_matches_nothing() -> None:
    photo = next(photographs())[1]
    thumb, vectors = audit.signature(photo)
    assert len(thumb) == audit.THUMB_SIDE**2 + 2
    assert len(vectors) == audit.VIEWS * audit.VECTOR_DIM
    assert audit.match_score(thumb, thumb) == pytest.approx(1.0, abs=1e-4)
    flat_thumb, flat_vectors = audit.signature(Image.new("RGB", (50, 40), (90, 90, 90)))
    assert not any(flat_vectors)  # a flat picture has no direction to compare
    assert audit.match_score(flat_thumb, flat_thumb) == 0.0
    tiny = audit.signature(Image.new("L", (8, 8), 0))  # any mode, any size down to ingest's min_side
    assert len(tiny[0]) == audit.THUMB_SIDE**2 + 2
    blue, grey = (audit.signature(Image.new("RGB", (40, 40), c))[0] for c in ((90, 140, 220), (140, 140, 140)))
    assert audit.colour_distance(blue, grey) > DEFAULTS.max_colour_distance
    darker = audit.signature(Image.new("RGB", (40, 40), (72, 112, 176)))[0]  # the blue at 80 % brightness
    assert audit.colour_distance(blue, darker) <= DEFAULTS.max_colour_distance


def photo() -> Image.Image:
    return dict(photographs())["astronaut"].resize((audit.QUALITY_SIDE, audit.QUALITY_SIDE))


def flags_of(im: Image.Image) -> list[str]:
    return audit.flags(audit.quality(im, *im.size), FlagsConfig())


@pytest.mark.parametrize(
    ("flag", "raise_it"),
    [
        ("blurry", lambda im: im.filter(ImageFilter.GaussianBlur(6))),
        ("dark", lambda im: im.point(lambda v: v // 10)),
        ("light", lambda im: im.point(lambda v: 245 + v // 25)),
        ("low_contrast", lambda im: im.point(lambda v: 120 + v // 30)),
        ("low_information", lambda im: im.convert("L").point(lambda v: 255 * (v > 100)).convert("RGB")),
        ("grayscale", lambda im: im.convert("L")),
        ("odd_aspect", lambda im: im.resize((400, 100))),
    ],
)
def test_each_flag_is_raised_by_an_image_built_to_raise_it(flag: str, raise_it) -> None:
    assert flag not in flags_of(photo())
    assert flag in flags_of(raise_it(photo()))


def test_a_plain_photograph_raises_no_flag_and_the_figures_are_in_range() -> None:
    figures = audit.quality(photo(), 512, 512)
    assert flags_of(photo()) == []
    assert 0 <= figures["brightness"] <= 1
    assert 0 <= figures["contrast"] <= 1
    assert 0 <= figures["entropy"] <= 8
    assert figures["aspect_ratio"] == 1.0
    assert figures["grayscale"] is False
    grey = audit.quality(Image.new("RGB", (30, 10), (7, 7, 7)), 30, 10)
    assert grey["grayscale"] is True
    assert grey["entropy"] == 0.0
    assert grey["aspect_ratio"] == 3.0


def test_every_flag_has_a_threshold_and_a_gate_allowance() -> None:
    from spark_jobs.quality.thresholds import FlagSharesConfig

    assert tuple(FlagSharesConfig.model_fields) == audit.FLAGS
    assert len(FlagsConfig.model_fields) == len(audit.FLAGS) - 1  # grayscale needs no threshold


@pytest.mark.parametrize(
    ("colour", "score", "fits"),
    [
        (0.010, 0.85, True),  # close colours: any score the match needs
        (0.030, 0.85, False),  # apart, and the detail only roughly lines up
        (0.030, 0.97, True),  # apart, but the detail lines up almost exactly (a low-quality JPEG)
        (0.060, 0.99, False),  # too far apart whatever the score (sky against wall)
    ],
)
def test_colours_may_differ_more_when_the_detail_lines_up_almost_exactly(
    colour: float, score: float, fits: bool
) -> None:
    assert audit.colour_fits(colour, score, DEFAULTS) is fits


def test_low_quality_jpeg_copies_match_although_their_colour_shifted() -> None:
    shifted = []  # (base, copy) signatures of JPEG q10 copies whose mean colour moved past max_colour_distance
    for base in itertools.islice(bases(), 100):
        out = io.BytesIO()
        base.save(out, "JPEG", quality=10)
        pair = audit.signature(base)[0], audit.signature(Image.open(io.BytesIO(out.getvalue())))[0]
        if audit.colour_distance(*pair) > DEFAULTS.max_colour_distance:
            shifted.append(pair)
    assert len(shifted) >= 5
    assert sum(audit.match(a, b, DEFAULTS) is not None for a, b in shifted) >= 0.9 * len(shifted)
    strict = DEFAULTS.model_copy(update={"exact_colour_distance": DEFAULTS.max_colour_distance})
    assert not any(audit.match(a, b, strict) is not None for a, b in shifted)  # the colour check alone refused them


def test_the_signature_vectors_are_the_low_block_of_scipys_dct() -> None:
    from scipy.fft import dctn

    rng = np.random.default_rng(3)
    greys = rng.uniform(0, 255, (3, audit.VECTOR_SIDE, audit.VECTOR_SIDE)).astype(np.float32)
    greys[2] = 7.0  # flat: no direction
    for grey, vector in zip(greys, audit.dct_vectors(greys), strict=True):
        block = dctn(grey.astype(np.float64), norm="ortho")[: audit.DCT_BLOCK, : audit.DCT_BLOCK].ravel()[1:]
        block *= np.hypot(*np.meshgrid(range(audit.DCT_BLOCK), range(audit.DCT_BLOCK))).ravel()[1:]
        norm = np.linalg.norm(block)
        expected = block / norm if norm > 1e-3 else np.zeros_like(block)
        assert vector == pytest.approx(expected, abs=1e-5)
    assert not audit.dct_vectors(greys[2:]).any()


def test_the_sharpness_laplacian_is_scipys() -> None:
    from scipy.ndimage import laplace

    _, photo = next(photographs())
    grey = np.asarray(photo.convert("L").resize((97, 64)), dtype=np.float32)
    assert audit.laplacian(grey) == pytest.approx(laplace(grey), abs=1e-3)
