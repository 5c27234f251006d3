"""Segmentation stage: the two-stream network, its two training stages and inference (paper section 3).

Rules (``workflow/rules/segmentation.smk``) and their commands:

- ``train_stage1`` / ``train_stage2`` -> ``a2dpipe train --stage 1|2`` (:mod:`.train`): ``models/stage1/<input>/``
  (front-end + ASPP baseline) and ``models/stage2/...`` (frozen front-end + region back-end), each a ``model.pt``
  and its ``loss.csv``;
- ``predict`` -> ``a2dpipe predict --split test|val`` (:mod:`.predict`):
  ``predictions/<split>/<kind>/<input>/<train_source>/<test_source>.h5`` (parts: :mod:`a2dpipe.variants`), A2D id
  maps per frame of the split (test for the tables, val for ``validate``), for the Baseline, Ours and the mask-vote
  control, in the format of :mod:`.predictions` (its writer, and the reader the evaluation stage uses).

Inputs: frames shards, flow caches and region-mask caches, through their public readers. :mod:`.models` holds the
network, :mod:`.samples` turns stored frames into training and inference samples (a ``Dataset`` read lazily), and
:mod:`.loader` batches them through a ``DataLoader`` whose workers never change a result.
"""
