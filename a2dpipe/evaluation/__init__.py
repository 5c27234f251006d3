"""Evaluation stage: metrics of every prediction set, the paper's tables, timings and the report's figures.

Rules (``workflow/rules/evaluation.smk``) and their commands:

- ``evaluate`` -> ``a2dpipe evaluate --split test|val`` (:mod:`.evaluate`, scores from :mod:`.metrics`):
  ``evaluation/<split>/...json`` and the per-video confusion matrices ``evaluation/<split>/...videos.npz``;
- ``tables`` -> ``a2dpipe tables`` (:mod:`.tables`): Tables 1-5 and the claims (:mod:`.claims`), beside the
  paper's figures (:mod:`.paper_results`), with paired-bootstrap intervals over test videos (:mod:`.bootstrap`),
  written as CSV, Markdown and LaTeX (:mod:`.writers`);
- ``validate`` -> ``a2dpipe metrics-table`` (:mod:`.metrics_table`): every variant's metrics on the validation
  split, from ``evaluate``'s of split val (``validation/metrics.csv``);
- ``aggregate`` (a seeds run, ``workflow/rules/seeds.smk``) -> ``a2dpipe aggregate`` (:mod:`.aggregate`): Tables 1-3
  and the claims as mean and standard deviation across the seeds' runs;
- ``timing`` -> ``a2dpipe timing`` (:mod:`.timing`): milliseconds per frame of each stage;
- ``report_figures`` -> ``a2dpipe report`` (:mod:`.report`): figures for ``snakemake --report``.

Inputs: predictions, frames shards (ground truth) and the caches' timing attributes, through their readers.
"""
