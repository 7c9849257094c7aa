"""FAISS indexes: exact below the threshold, tuned IVF/HNSW above, filters never short."""
import numpy as np
import pytest

from wenlv.serving.indexes import build_index, exact_top_k, load_or_build, recall_at_k
from wenlv.bench.serving_fixtures import synthetic_bundle


@pytest.fixture(scope="module")
def vectors():
    b = synthetic_bundle(n_pois=3000, n_users=300, factors=16, seed=3)
    return b.poi_factors, b.user_factors


def test_flat_index_is_exact(vectors):
    items, queries = vectors
    index = build_index(items, queries, exact_below=10_000)
    assert index.info["kind"] == "flat"
    for q in queries[:20]:
        ids, scores = index.search(q, 10)
        want_ids, want_scores = exact_top_k(items, q, 10)
        assert list(ids) == list(want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_meets_its_recall_target(vectors, kind):
    items, queries = vectors
    index = build_index(items, queries, kind=kind, target_recall=0.95)
    assert index.info["kind"] == kind
    measured = recall_at_k(index, queries[100:], 10)  # queries it was not tuned on
    assert index.info["recall_at_10"] >= 0.95
    assert measured >= 0.9


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("share", [0.002, 0.01, 0.3])
def test_filtered_search_returns_k_eligible_items(vectors, kind, share):
    items, queries = vectors
    index = build_index(items, queries, kind=kind)
    rng = np.random.default_rng(1)
    for q in queries[:10]:
        mask = rng.random(len(items)) < share
        eligible = int(mask.sum())
        ids, _ = index.search(q, 10, mask)
        assert len(ids) == min(10, eligible)
        assert mask[ids].all()
        assert len(set(ids.tolist())) == len(ids)
        if kind == "flat":
            assert list(ids) == list(exact_top_k(items, q, 10, mask)[0])


def test_empty_mask_returns_nothing(vectors):
    items, queries = vectors
    index = build_index(items, queries, exact_below=10_000)
    ids, scores = index.search(queries[0], 10, np.zeros(len(items), dtype=bool))
    assert len(ids) == 0 and len(scores) == 0


def test_index_cache_is_keyed_by_the_vectors(vectors, tmp_path):
    items, queries = vectors
    first = load_or_build(items, queries, cache_dir=tmp_path, kind="ivf")
    assert len(list(tmp_path.glob("*.faiss"))) == 1
    again = load_or_build(items, queries, cache_dir=tmp_path, kind="ivf")
    assert again.info == first.info
    assert list(again.search(queries[0], 10)[0]) == list(first.search(queries[0], 10)[0])
    load_or_build(items * 1.01, queries, cache_dir=tmp_path, kind="ivf")  # other vectors, other entry
    assert len(list(tmp_path.glob("*.faiss"))) == 2


@pytest.mark.parametrize("exact_below", [10_000, 100])  # flat, and IVF over the users
def test_audience_is_the_top_users_for_a_target(exact_below):
    from wenlv.serving.model import ServingModel

    b = synthetic_bundle(n_pois=30, n_users=2000, factors=8, seed=6)
    model = ServingModel(b, "1", None, index_cache=None, exact_below=exact_below)
    target = list(b.pois.poi_id[:2])
    tokens, scores = model.audience(target, 50)
    truth = np.argsort(-(b.user_factors @ b.poi_factors[:2].mean(axis=0)))[:50]
    overlap = len(set(tokens) & set(b.users.token[truth])) / 50
    assert len(tokens) == 50 and list(scores) == sorted(scores, reverse=True)
    assert overlap == 1.0 if exact_below == 10_000 else overlap >= 0.9
    with pytest.raises(KeyError, match="none of the POIs"):
        model.audience(["nope"], 5)


def test_stored_indexes_are_checked_against_the_bundle(tmp_path):
    """A stored index is used only for the exact vectors, version and a faithful file (no MLflow needed here)."""
    import json

    import faiss

    from wenlv.serving.index_artifacts import IndexArtifactRefused, expected_manifest, read_indexes, write_indexes
    from wenlv.serving.indexes import build_bundle_indexes

    b = synthetic_bundle(n_pois=80, n_users=50, factors=8, seed=9, version="3")
    built = build_bundle_indexes(b, cache_dir=None, exact_below=60)
    expected = expected_manifest(b, "3", "run-a", exact_below=60)
    write_indexes(built, expected, tmp_path)
    loaded = read_indexes(tmp_path, expected, b)
    assert loaded.source == "mlflow" and isinstance(loaded.pois.index, faiss.IndexIVFFlat)
    q = b.user_factors[0]
    assert list(loaded.pois.search(q, 10)[0]) == list(built.pois.search(q, 10)[0])

    with pytest.raises(IndexArtifactRefused, match="model_version is '3', expected '4'"):
        read_indexes(tmp_path, expected_manifest(b, "4", "run-a", exact_below=60), b)
    other = synthetic_bundle(n_pois=80, n_users=50, factors=8, seed=10, version="3")
    with pytest.raises(IndexArtifactRefused, match="pois index vectors_sha256"):
        read_indexes(tmp_path, expected_manifest(other, "3", "run-a", exact_below=60), other)
    with pytest.raises(IndexArtifactRefused, match="pois index params"):  # would be built exact now
        read_indexes(tmp_path, expected_manifest(b, "3", "run-a", exact_below=10_000), b)

    # a valid FAISS file of the wrong index, with its digest fixed up, is still refused
    from wenlv.serving.index_artifacts import _file_sha256

    wrong = faiss.IndexFlatIP(8)
    wrong.add(b.poi_factors[:10])
    faiss.write_index(wrong, str(tmp_path / "pois.faiss"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["indexes"]["pois"]["file_sha256"] = _file_sha256(tmp_path / "pois.faiss")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexArtifactRefused, match="holds a IndexFlatIP of 10×8"):
        read_indexes(tmp_path, expected, b)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_search_excluding_a_few_ids_equals_the_masked_search(vectors, kind):
    items, queries = vectors
    index = build_index(items, queries, kind=kind, target_recall=0.95)
    rng = np.random.default_rng(5)
    for q in queries[:30]:
        top = index.search(q, 40)[0]
        exclude = np.concatenate([rng.choice(top, 6, replace=False), rng.choice(len(items), 3)])  # some in the top
        mask = np.ones(len(items), dtype=bool)
        mask[exclude] = False
        ids, scores = index.search_excluding(q, 10, exclude)
        assert len(ids) == 10 and not set(ids.tolist()) & set(exclude.tolist())
        if kind == "flat":  # exact: the very same answer as the mask's
            want_ids, want_scores = index.search(q, 10, mask)
            assert list(ids) == list(want_ids)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
        assert list(scores) == sorted(scores, reverse=True)


def test_search_excluding_nearly_everything_returns_what_is_left(vectors):
    items, queries = vectors
    index = build_index(items[:12], queries, exact_below=10_000)
    ids, _ = index.search_excluding(queries[0], 10, np.arange(9))
    assert sorted(ids.tolist()) == [9, 10, 11]
    assert len(index.search_excluding(queries[0], 10, np.arange(12))[0]) == 0
