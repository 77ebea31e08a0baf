"""Data: ``prepare`` (videos -> face-track cache), ``inputs`` (video lists, shards), ``cache``, the pure pair
sampler (``pairs``) and its dataset (``pretrain_dataset``), ``augment``, the benchmark datasets and folds
(``au_datasets``, ``au_faces``, ``expression_datasets``, ``face_images``, ``folds``) and ``synthetic``
animation."""
