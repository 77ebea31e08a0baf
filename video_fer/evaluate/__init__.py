"""Evaluation: metrics (``metrics``), the AU benchmark report (``au_report``), linear probes (``probes``)
and the disentanglement measures (``disentangle``)."""
