"""Extractors on real tiny images: documented dimensions, determinism, batch-size invariance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spark_jobs.ml import extractors, models
from spark_jobs.ml.extractors import ClassicalConfig, CnnConfig, SiftConfig
from spark_jobs.params import load
from tests.factories import REPO


def _digits(n: int = 12, size: int = 32) -> np.ndarray:
    """Real scans: scikit-learn's handwritten digits as RGB uint8, ``size`` x ``size``."""
    from sklearn.datasets import load_digits

    scans = load_digits().images[:n]
    out = [
        np.asarray(Image.fromarray((255 - s / 16 * 255).astype(np.uint8)).resize((size, size)).convert("RGB"))
        for s in scans
    ]
    return np.stack(out)


def _photo(size: int = 64) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    return np.asarray(Image.fromarray(load_sample_images().images[0]).resize((size, size)))


def test_classical_dimension_is_the_documented_one() -> None:
    cfg = ClassicalConfig()
    extractor = extractors.Classical(cfg, 32)
    assert extractor.dim == 9 * 2 * 2 * 3 * 3 + 3 * 16 == 372
    out = extractor(_digits())
    assert out.shape == (12, 372)
    assert out.dtype == np.float32
    wide = extractors.Classical(ClassicalConfig(hog_pixels_per_cell=4, color_bins=8), 64)
    assert wide(_photo()[None]).shape == (1, 9 * 4 * 15 * 15 + 24)


def test_classical_is_hog_then_colour_histograms_and_deterministic() -> None:
    from skimage.color import rgb2gray
    from skimage.feature import hog

    photo = _photo(32)
    vector = extractors.hog_color(photo, ClassicalConfig())
    expected_hog = hog(rgb2gray(photo), 9, (8, 8), (2, 2), block_norm="L2-Hys")
    np.testing.assert_allclose(vector[:324], expected_hog, rtol=1e-6)
    colour = vector[324:].reshape(3, 16)
    np.testing.assert_allclose(colour.sum(axis=1), 1.0, rtol=1e-6)  # each channel is a distribution
    red_hist = np.histogram(photo[..., 0], bins=16, range=(0, 256))[0] / (32 * 32)
    np.testing.assert_allclose(colour[0], red_hist, rtol=1e-6)
    assert np.array_equal(vector, extractors.hog_color(photo.copy(), ClassicalConfig()))
    batch = extractors.Classical(ClassicalConfig(), 32)(np.stack([photo, photo]))
    assert np.array_equal(batch[0], vector)
    assert np.array_equal(batch[1], vector)


@pytest.fixture(scope="module")
def backbone_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The project's small backbone, seeded, as an exported program and as a state dict."""
    import torch

    folder = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(3)
    module = models.small_cnn(width=8).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(module.state_dict(), folder / "b.pt")
    models.export_backbone(module, folder / "b.pt2", 32)
    return {"exported": folder / "b.pt2", "state_dict": folder / "b.pt"}


def _cnn(path: Path, batch_size: int = 64, architecture: str | None = None) -> extractors.Cnn:
    return extractors.Cnn.open(CnnConfig(backbone=str(path), architecture=architecture), batch_size, 32)


def test_cnn_embedding_dimension_comes_from_the_backbone(backbone_files) -> None:
    extractor = _cnn(backbone_files["exported"])
    assert extractor.dim == 32  # 4 x width
    assert extractor.uri.startswith("file:///")
    assert len(extractor.sha256) == 64
    assert extractor(_digits()).shape == (12, 32)


def test_cnn_same_image_same_vector(backbone_files) -> None:
    digits = _digits()
    extractor = _cnn(backbone_files["exported"])
    first = extractor(digits)
    again = extractor(digits[::-1].copy())[::-1]
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert not np.allclose(first[0], first[1])  # different digits, different embeddings


@pytest.mark.parametrize("batch_size", [1, 5, 7])
def test_cnn_batch_size_does_not_change_the_result(backbone_files, batch_size: int) -> None:
    digits = _digits(20)
    reference = _cnn(backbone_files["exported"], batch_size=64)(digits)
    np.testing.assert_allclose(_cnn(backbone_files["exported"], batch_size=batch_size)(digits), reference, atol=1e-5)


def test_state_dict_and_exported_program_give_the_same_embeddings(backbone_files) -> None:
    digits = _digits()
    exported = _cnn(backbone_files["exported"])(digits)
    from_state = _cnn(backbone_files["state_dict"], architecture="small_cnn")(digits)
    np.testing.assert_allclose(from_state, exported, atol=1e-5)


def test_cnn_threads_and_normalisation_are_applied(backbone_files) -> None:
    import torch

    digits = _digits(4)
    before = torch.get_num_threads()
    try:
        plain = _cnn(backbone_files["exported"])(digits)
        assert torch.get_num_threads() == 1  # features.cnn.threads
        cfg = CnnConfig(backbone=str(backbone_files["exported"]), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        normalised = extractors.Cnn.open(cfg, 64, 32)(digits)
    finally:
        torch.set_num_threads(before)
    scaled = _cnn_raw(backbone_files["exported"], (digits / 255.0 - 0.5) / 0.25)
    np.testing.assert_allclose(normalised, scaled, atol=1e-5)
    assert not np.allclose(plain, normalised)


def _cnn_raw(path: Path, x: np.ndarray) -> np.ndarray:
    """The backbone applied by hand to an already normalised NHWC float batch."""
    import torch

    module = models.module_from_bytes(path.read_bytes(), str(path), None)
    with torch.inference_mode():
        return module(torch.from_numpy(x).permute(0, 3, 1, 2).float()).numpy()


def test_the_backbone_is_loaded_once_per_process(backbone_files) -> None:
    """Each Python worker (a process Spark reuses across tasks) loads the file once, not per batch."""
    models.cached_backbone.cache_clear()
    extractor = _cnn(backbone_files["exported"], batch_size=4)
    for _ in range(5):  # five Arrow batches
        extractor(_digits(6))
    info = models.cached_backbone.cache_info()
    assert info.misses == 1
    assert info.hits == 4


def test_the_session_reuses_python_workers() -> None:
    from spark_jobs.core.config import SparkConfig
    from spark_jobs.core.session import spark_conf

    assert spark_conf(SparkConfig())["spark.python.worker.reuse"] == "true"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"pca_k": 400}, "pca_k=400 exceeds the descriptor length 372 of 32px images"),
        ({"hog_pixels_per_cell": 32}, "a 32px image holds no HOG block"),
        ({}, None),
    ],
)
def test_classical_settings_that_cannot_describe_the_images(changes: dict, expected: str | None) -> None:
    classical = load(REPO / "params.yaml").features.classical.model_copy(update=changes)
    problem = classical.problem(32)
    if expected is None:
        assert problem is None
    else:
        assert problem.startswith(expected)


def test_classical_descriptors_too_long_for_mllib_pca() -> None:
    classical = load(REPO / "params.yaml").features.classical
    assert classical.descriptor_dim(256) == 34644
    assert classical.problem(256).startswith("256px images give descriptors of length 34644 > 8192")
    assert classical.model_copy(update={"hog_pixels_per_cell": 32}).problem(256) is None


def test_sift_finds_keypoints_in_scans_and_none_in_a_flat_picture() -> None:
    cfg = SiftConfig()
    descriptors, positions = extractors.sift_keypoints(_digits(1)[0], cfg)
    assert descriptors.shape[1] == 128
    assert len(descriptors) == len(positions) >= 3
    assert descriptors.dtype == np.float32
    assert positions.dtype == np.float32
    assert (positions >= 0).all()
    assert (positions < 1).all()
    again, _ = extractors.sift_keypoints(_digits(1)[0].copy(), cfg)
    assert np.array_equal(descriptors, again)
    flat, where = extractors.sift_keypoints(np.full((32, 32, 3), 128, np.uint8), cfg)
    assert flat.shape == (0, 128)
    assert where.shape == (0, 2)
    capped, _ = extractors.sift_keypoints(_photo(64), cfg.model_copy(update={"max_keypoints": 2}))
    assert len(capped) == 2


def test_bag_of_words_counts_nearest_words_over_the_image_and_its_cells() -> None:
    codebook = np.array([[0.0, 0.0], [10.0, 10.0]], np.float32)
    descriptors = np.array([[1.0, 0.0], [9.0, 9.0], [0.0, 2.0], [11.0, 10.0]], np.float32)
    positions = np.array([[0.1, 0.1], [0.1, 0.9], [0.9, 0.9], [0.9, 0.9]], np.float32)  # (row, column)
    hist = extractors.bag_of_words(descriptors, positions, codebook, grid=2).reshape(5, 2)
    np.testing.assert_allclose(hist[0], [0.5, 0.5])  # the whole image
    np.testing.assert_allclose(hist[1:], [[0.25, 0], [0, 0.25], [0, 0], [0.25, 0.25]])  # TL, TR, BL, BR
    assert extractors.bag_of_words(descriptors, positions, codebook, grid=0).tolist() == [0.5, 0.5]
    empty = extractors.bag_of_words(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), codebook, 2)
    assert empty.shape == (10,)
    assert not empty.any()


def test_a_sift_extractor_recorded_in_json_gives_the_same_vectors() -> None:
    rng = np.random.default_rng(0)
    extractor = extractors.Sift.fitted(SiftConfig(words=8, grid=1), 32, rng.uniform(0, 60, (8, 128)))
    assert extractor.dim == 8 * 2
    batch = _digits(6)
    out = extractor(batch)
    assert out.shape == (6, 16)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, :8].sum(axis=1), 1.0, rtol=1e-6)  # each image's words sum to 1
    spec = json.loads(json.dumps(extractor.describe()))
    again = extractors.descriptor_extractor(spec)
    assert isinstance(again, extractors.Sift)
    assert np.array_equal(again.codebook, extractor.codebook)
    assert np.array_equal(again(batch), out)
    classical = extractors.descriptor_extractor(extractors.Classical(ClassicalConfig(), 32).describe())
    assert isinstance(classical, extractors.Classical)
    with pytest.raises(ValueError, match="no descriptors for cnn features"):
        extractors.descriptor_extractor({"kind": "cnn"})


@pytest.mark.parametrize(
    ("changes", "size", "expected"),
    [
        ({}, 8, "SIFT finds no keypoints in 8px images"),
        ({"words": 4096, "grid": 2}, 32, "words x (1 + grid^2) = 20480 > 8192"),
        ({"words": 16, "grid": 0, "pca_k": 32}, 32, "pca_k=32 exceeds the histogram length 16"),
        ({}, 32, None),
    ],
)
def test_sift_settings_that_cannot_describe_the_images(changes: dict, size: int, expected: str | None) -> None:
    sift = load(REPO / "params.yaml").features.sift.model_copy(update=changes)
    problem = sift.problem(size)
    assert problem == expected if expected is None else problem.startswith(expected)
