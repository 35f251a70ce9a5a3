"""Training fresh networks on a labelled set and scoring them: the evaluation worker.

``evaluation`` holds the entries (``train_networks``, ``train_and_score``); ``settings`` the one
frozen ``TrainSettings``; ``protocols`` what each named evaluation protocol fixes; the rest are
the pieces: ``plain`` (one network), ``vectorized`` (many at once with vmap), ``distill``
(soft labels), ``augmentation``, ``optimizers``, ``memory`` and ``scoring``.
"""
