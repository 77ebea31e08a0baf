"""Evaluation: metrics (``metrics``), the AU benchmark report (``au_report``), linear probes (``probes``),
the disentanglement measures (``disentangle``), and the label-free real-video benchmark: reference signals
(``real_references``), its probes (``real_probes``) and its pretraining runs (``pretrain_runs``)."""
