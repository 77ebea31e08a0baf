"""``video-fer track``: a clip -> a per-frame table of AUs, expression, valence/arousal and head pose.

``settings`` (what to process), ``stages`` (faces, then the network), ``table`` (columns, writers),
``bundle`` (the model bundle), ``plot`` (pictures of a table), ``run`` (:func:`~video_fer.track.run.track`,
``track_clip``, ``track_files``). Never imports the data-preparation pipeline.
"""
