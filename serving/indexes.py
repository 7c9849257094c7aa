"""Serving's FAISS indexes: built and searched by `training.vector_index`.

The code moved down to training so that a registered model version (the MLflow pyfunc
model of `training.pyfunc_model`) carries and searches exactly the indexes serving
builds; this module keeps serving's names for them.
"""
from wenlv.training.vector_index import (DEFAULT_CACHE, EXACT_BELOW, TARGET_RECALL, BundleIndexes, VectorIndex,
                                         build_bundle_indexes, build_index, bundle_index_inputs, exact_neighbours,
                                         exact_top_k, fingerprint, index_params, load_or_build, recall_at_k,
                                         use_configured_threads, vectors_sha256)

__all__ = ["DEFAULT_CACHE", "EXACT_BELOW", "TARGET_RECALL", "BundleIndexes", "VectorIndex", "build_bundle_indexes",
           "build_index", "bundle_index_inputs", "exact_neighbours", "exact_top_k", "fingerprint", "index_params",
           "load_or_build", "recall_at_k", "use_configured_threads", "vectors_sha256"]
