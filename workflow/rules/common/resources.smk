# Cluster resources (workflow/profiles/slurm): every rule declares them with get_job_resources, so that rules
# renamed by a module (compare_masks_*, seed_<N>_*) keep them. The partition follows the job's `gpu` resource,
# runtime and host memory its size (config cluster).


def get_job_resources(size, gpu=0):
    """Resources of a rule's jobs: `gpu` (an int or a function of the wildcards), the partition that follows from
    it, and the runtime (minutes) and host memory of `size`, a key of config cluster.sizes.
    """
    cluster = config["cluster"]
    gpus = gpu if callable(gpu) else (lambda wildcards: gpu)

    def partition(wildcards):
        return cluster["gpu_partition"] if gpus(wildcards) else cluster["cpu_partition"]

    return dict(
        gpu=gpus,
        slurm_partition=partition,
        runtime=cluster["sizes"][size]["runtime"],
        mem_mb=cluster["sizes"][size]["mem_mb"],
    )


def get_loader_threads():
    """CPUs of a job that feeds a network through the frame loader: one per worker process and one for the main
    process, which drives the accelerator; at least 2, which a network on the CPU (no workers) runs on. The job
    gives its own torch what the workers leave."""
    return max(config["segmentation"]["loader_workers"] + 1, 2)


def get_flow_gpus():
    """Accelerators a flow job asks for: one for the neural methods, none for DIS."""
    return 0 if config["flow"]["method"] == "dis" else 1


def get_flow_threads():
    """CPUs of a flow job: one for DIS; for a neural method as many as a job that feeds the accelerator through
    the frame loader (get_loader_threads): frame readers and flow-image encoders run beside the network.
    """
    return 1 if config["flow"]["method"] == "dis" else get_loader_threads()
