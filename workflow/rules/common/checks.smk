# Parse-time checks: a config this workflow cannot run fails when the Snakefile is read, in one sentence, not in a
# job minutes later; and the results folder's lock.
from a2dpipe.config import check_coherence
from a2dpipe.integrity import check_results_free, lock_results, unlock_results
from a2dpipe.variants import check_region_runs


def check_synthetic_root():
    """Refuse, before Snakemake removes `synthesize`'s output, a dataset.root that `synthesize` did not write."""
    if config["dataset"]["synthetic"]:
        from a2dpipe.dataset.synthetic import check_replaceable

        check_replaceable(config["dataset"]["root"])


check_synthetic_root()
# A region run that names a mask source this run lacks fails here, not in a job minutes later.
check_region_runs(REGION_RUNS, config)
# What the schema cannot say (empty or inconsistent experiments, too few resamples for a 95% interval).
check_coherence(config)


# A lock in the results folder: a run from another working directory refuses to share it (Snakemake's own lock is
# per working directory). Taken when jobs start, released when the run ends; a killed run's lock is stale.
check_results_free(RESULTS)


onstart:
    lock_results(RESULTS)


onsuccess:
    unlock_results(RESULTS)


onerror:
    unlock_results(RESULTS)
