"""Topic clusters over prompt embeddings, the way BenchBuilder's topic_clustering.py groups prompts.

BenchBuilder runs BERTopic (UMAP to a few dimensions, then HDBSCAN with `min_topic_size`, then
`reduce_outliers`). Here: PCA to a few dimensions (UMAP is not a dependency), HDBSCAN from
scikit-learn (installed with sentence-transformers) with min_cluster_size = min_topic_size, and
every outlier assigned to the nearest cluster centroid by cosine. Too few rows for two clusters of
min_topic_size, or no cluster found: everything is topic 0.
"""

from __future__ import annotations

import numpy as np

from ...errors import MissingDependency


def topic_clusters(vectors: np.ndarray, min_topic_size: int = 32, dims: int = 5, seed: int = 0) -> np.ndarray:
    """A topic id (0, 1, ...) per row of unit vectors; ids ordered by cluster size, largest first."""
    n = len(vectors)
    if n < 2 * min_topic_size:
        return np.zeros(n, dtype=np.int64)
    try:
        from sklearn.cluster import HDBSCAN
        from sklearn.decomposition import PCA
    except ImportError:
        raise MissingDependency("scikit-learn", "embed", "BenchBuilder topic clusters") from None
    reduced = PCA(n_components=min(dims, vectors.shape[1], n - 1), random_state=seed).fit_transform(vectors)
    labels = HDBSCAN(min_cluster_size=min_topic_size, copy=True).fit_predict(reduced)
    found = sorted(set(labels.tolist()) - {-1})
    if not found:
        return np.zeros(n, dtype=np.int64)
    centroids = np.stack([vectors[labels == c].mean(axis=0) for c in found])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    outliers = labels == -1
    if outliers.any():  # BERTopic's reduce_outliers, by embedding similarity to each topic
        labels[outliers] = np.asarray(found)[np.argmax(vectors[outliers] @ centroids.T, axis=1)]
    sizes = {c: int((labels == c).sum()) for c in found}
    order = {c: i for i, c in enumerate(sorted(found, key=lambda c: (-sizes[c], c)))}
    return np.asarray([order[c] for c in labels.tolist()], dtype=np.int64)
