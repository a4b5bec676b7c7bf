"""Active selection: which items to ask a new user about, and which samples to label.

Selection strategies behind one interface (:mod:`~recsys_ref.active.strategies`), what
they read (:mod:`~recsys_ref.active.signals`), the elicitation simulator for new users
(:mod:`~recsys_ref.active.elicitation`), and the pool-based active-learning loop
(:mod:`~recsys_ref.active.pool`).
See the chapter "Active selection".
"""
