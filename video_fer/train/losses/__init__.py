"""The losses of every task: ``tae`` (pretraining terms, curriculum), ``heads`` (expression and
valence/arousal heads), ``au`` (the AU protocol)."""
