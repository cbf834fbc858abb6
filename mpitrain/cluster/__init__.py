"""Clustering across ranks: k-means with scikit-learn's draws and answer on all rows."""

from mpitrain.cluster._kmeans import DISTANCE_BLOCK_BYTES, KMeans, distance_block_rows

__all__ = ["KMeans", "DISTANCE_BLOCK_BYTES", "distance_block_rows"]
