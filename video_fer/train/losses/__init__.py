"""The losses of every task: ``tae`` (pretraining terms, curriculum), ``landmarks`` (the landmark-guided
fields of pretraining, [ours]), ``heads`` (expression and
valence/arousal heads), ``au`` (the AU protocol)."""
