"""recsys_ref: the reference package of the runnable book on recommender systems."""

__version__ = "0.1.0"
