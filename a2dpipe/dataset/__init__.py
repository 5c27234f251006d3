"""Dataset stage: datasets in the A2D layout, the synthetic benchmark, the frame index and the frames shards.

Rules (``workflow/rules/dataset.smk``) and their commands:

- ``synthesize`` -> ``a2dpipe synthesize`` (:mod:`.synthetic`): the embedded default, an A2D-layout folder, its
  clips planned and drawn by :mod:`.scenes`;
- ``index`` -> ``a2dpipe index`` (:mod:`.index`): ``index.csv``, one row per annotated frame, with split
  (train / val / test) and shard;
- ``extract_frames`` -> ``a2dpipe extract-frames`` (:mod:`.frames`): ``frames/shard-NNN.h5``, each annotated
  frame, its flow partner, its label map and instances.

:mod:`.a2d` reads the A2D layout (videoset, paths, annotated frames, clips) and :mod:`.annotation` its ``.mat``
annotations (and writes them, for the benchmark). Later stages read the frames shards through
:class:`.frames.FrameStore` only.
"""
