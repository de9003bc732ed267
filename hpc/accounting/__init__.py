"""Per-job resource accounting: a node-local sampler (NVML + psutil) writing JSONL.

Light to import: nvidia-ml-py is loaded only when a sampler starts.
"""

from hpc.accounting.sampler import Sampler, SamplerConfig, summarize

__all__ = ["Sampler", "SamplerConfig", "summarize"]
