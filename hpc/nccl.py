"""NCCL environment profiles.

A profile is plain data: the variables it forces and whether it selects RDMA HCAs. Every
profile also sets ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1``: a failed or timed-out collective
then aborts the communicator and ends the process, so the launcher can restart the job
instead of leaving it hung until the wall-clock limit.

Variables and where they are set (anything else is left to NCCL's own choice, and can be
forced through ``overrides``):

* ``NCCL_IB_HCA`` -- ``infiniband``, ``roce``, ``azure-ndv5``: the detected active compute
  HCAs in ``=mlx5_0,mlx5_1`` form (``=`` = exact names, so ``mlx5_1`` does not also
  select ``mlx5_10``..; down ports and storage/management NICs stay out).
* ``NCCL_SOCKET_IFNAME`` -- every profile but ``default``/``debug``: bootstrap traffic
  must not pick ``lo`` or ``docker0``, which exist with the same address on every node.
* ``NCCL_IB_GID_INDEX``, ``NCCL_IB_QPS_PER_CONNECTION``, ``NCCL_CROSS_NIC`` -- ``roce``.
* ``NCCL_IB_TIMEOUT`` -- ``infiniband``, ``roce``, ``azure-ndv5``.
* ``NCCL_NVLS_ENABLE`` -- ``azure-ndv5``.
* ``NCCL_NET_GDR_LEVEL`` and ``CUDA_DEVICE_MAX_CONNECTIONS`` -- no profile: GPUDirect RDMA
  level depends on the PCIe layout (NCCL's default, GDR up to ``PXB``, is right on HGX
  boards), and ``CUDA_DEVICE_MAX_CONNECTIONS=1`` is a model-parallel framework choice
  (Megatron-style compute/communication overlap), not a fabric one. Use ``overrides``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "KNOWN_NCCL_VARS",
    "PROFILES",
    "NcclProfile",
    "UnknownNcclVariableWarning",
    "format_env",
    "nccl_env",
]

log = logging.getLogger(__name__)


class UnknownNcclVariableWarning(UserWarning):
    """An ``NCCL_*`` variable that NCCL does not document (likely a typo)."""


@dataclass(frozen=True)
class NcclProfile:
    """A named set of variables. ``link_layer`` is the fabric for HCA detection."""

    name: str
    description: str
    env: Mapping[str, str] = field(default_factory=dict)
    set_ib_hca: bool = False
    link_layer: str | None = None


_COMMON = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
# Bootstrap/out-of-band sockets: any interface but loopback and docker bridges.
_NOT_LO_DOCKER = "^lo,docker"

PROFILES: dict[str, NcclProfile] = {
    p.name: p
    for p in (
        NcclProfile(
            "default",
            "NCCL's own detection; only async error handling forced",
            dict(_COMMON),
        ),
        NcclProfile(
            "infiniband",
            "InfiniBand fabric (HGX/DGX with ConnectX HCAs)",
            {
                **_COMMON,
                "NCCL_SOCKET_IFNAME": _NOT_LO_DOCKER,
                # 4.096 us * 2^22 ~ 17 s per retry: rides out transient congestion and
                # link flaps on large fabrics instead of failing the job (NCCL default 18).
                "NCCL_IB_TIMEOUT": "22",
            },
            set_ib_hca=True,
            link_layer="InfiniBand",
        ),
        NcclProfile(
            "roce",
            "RDMA over Converged Ethernet (RoCE v2)",
            {
                **_COMMON,
                "NCCL_SOCKET_IFNAME": _NOT_LO_DOCKER,
                # GID 3 is the RoCE v2 / IPv4 entry on ConnectX with the usual IPv4 setup;
                # index 0/1 are RoCE v1 / link-local, which do not route across subnets.
                "NCCL_IB_GID_INDEX": "3",
                # Several QPs per connection give ECMP more flows (UDP source ports) to
                # hash across the Ethernet fabric's paths.
                "NCCL_IB_QPS_PER_CONNECTION": "4",
                # GPU RoCE fabrics are usually rail-optimized: keep each ring on one rail
                # rather than crossing through the (often oversubscribed) spine.
                "NCCL_CROSS_NIC": "0",
                "NCCL_IB_TIMEOUT": "22",  # Ethernet pauses (PFC) stall longer than IB
            },
            set_ib_hca=True,
            link_layer="Ethernet",
        ),
        NcclProfile(
            "aws-efa",
            "AWS Elastic Fabric Adapter via the aws-ofi-nccl plugin (p4d/p5)",
            {
                **_COMMON,
                "FI_PROVIDER": "efa",  # make libfabric pick EFA, never the TCP provider
                "FI_EFA_USE_DEVICE_RDMA": "1",  # GPUDirect RDMA on p4d/p5
                "FI_EFA_FORK_SAFE": "1",  # dataloader workers fork after memory registration
                # EFA's SRD transport does not deliver in order; LL/LL128 rely on ordered
                # 8/128-byte stores, so only the Simple protocol is safe over the network.
                "NCCL_PROTO": "simple",
                "NCCL_SOCKET_IFNAME": _NOT_LO_DOCKER,
            },
            # No NCCL_IB_HCA: EFA goes through libfabric, not NCCL's IB verbs transport.
        ),
        NcclProfile(
            "azure-ndv5",
            "Azure ND H100 v5 VMs (8x H100, 8x 400G InfiniBand)",
            {
                **_COMMON,
                # The VM's virtual PCI tree hides the GPU/NIC affinity; Azure ships the
                # real one as an NCCL topology file in its HPC images.
                "NCCL_TOPO_FILE": "/opt/microsoft/ndv5-topo.xml",
                "NCCL_IB_PCI_RELAXED_ORDERING": "1",  # needed for full bandwidth in the VM
                "NCCL_SOCKET_IFNAME": "eth0",  # the VM's front-end network
                "NCCL_IB_TIMEOUT": "22",
                # NVLink SHARP reserves GPU memory per communicator and needs multicast
                # support from the hypervisor's fabric manager; off is the safe choice.
                "NCCL_NVLS_ENABLE": "0",
            },
            set_ib_hca=True,  # the mlx5_ib* HCAs; the Ethernet mlx5_an0 stays out
            link_layer="InfiniBand",
        ),
        NcclProfile(
            "tcp-only",
            "No RDMA: plain TCP sockets",
            {
                **_COMMON,
                "NCCL_IB_DISABLE": "1",  # do not use IB/RoCE even if present
                "NCCL_NET": "Socket",  # and no network plugin either
                "NCCL_SOCKET_IFNAME": _NOT_LO_DOCKER,
                # One socket and thread per connection cannot fill a 25-100 Gb/s NIC;
                # 4x4 is NCCL's documented upper range (product must stay <= 64).
                "NCCL_SOCKET_NTHREADS": "4",
                "NCCL_NSOCKS_PERTHREAD": "4",
            },
        ),
        NcclProfile(
            "debug",
            "Verbose NCCL logging of init, network selection and variables read",
            {**_COMMON, "NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET,ENV"},
        ),
    )
}

# Documented NCCL variables (NCCL 2.18-2.27 "Environment Variables" page, plus the
# deprecated PyTorch name NCCL_ASYNC_ERROR_HANDLING).
_KNOWN_NAMES = """
    NCCL_ALGO NCCL_ALLOC_P2P_NET_LL_BUFFERS NCCL_ASYNC_ERROR_HANDLING NCCL_BLOCKING_WAIT
    NCCL_BUFFSIZE NCCL_CGA_CLUSTER_SIZE NCCL_CHECKS_DISABLE NCCL_CHECK_POINTERS
    NCCL_COLLNET_ENABLE NCCL_COLLNET_NODE_THRESHOLD NCCL_COMM_BLOCKING NCCL_CONF_FILE
    NCCL_CROSS_NIC NCCL_CTA_POLICY NCCL_CUMEM_ENABLE NCCL_CUMEM_HOST_ENABLE NCCL_DEBUG
    NCCL_DEBUG_FILE NCCL_DEBUG_SUBSYS NCCL_DEBUG_TIMESTAMP_FORMAT NCCL_DEBUG_TIMESTAMP_LEVELS
    NCCL_DMABUF_ENABLE NCCL_ENV_PLUGIN NCCL_GRAPH_MIXING_SUPPORT NCCL_GRAPH_REGISTER
    NCCL_HOSTID NCCL_IB_ADAPTIVE_ROUTING NCCL_IB_ADDR_FAMILY NCCL_IB_ADDR_RANGE
    NCCL_IB_AR_THRESHOLD NCCL_IB_CUDA_SUPPORT NCCL_IB_DISABLE NCCL_IB_ECE_ENABLE
    NCCL_IB_FIFO_TC NCCL_IB_GID_INDEX NCCL_IB_HCA NCCL_IB_MERGE_NICS NCCL_IB_MERGE_VFS
    NCCL_IB_PCI_RELAXED_ORDERING NCCL_IB_PKEY NCCL_IB_QPS_PER_CONNECTION
    NCCL_IB_RETRY_CNT NCCL_IB_RETURN_ASYNC_EVENTS NCCL_IB_ROCE_VERSION_NUM NCCL_IB_SL
    NCCL_IB_SPLIT_DATA_ON_QPS NCCL_IB_TC NCCL_IB_TIMEOUT NCCL_IB_USE_INLINE
    NCCL_IGNORE_CPU_AFFINITY NCCL_IGNORE_DISABLED_P2P NCCL_LAUNCH_MODE NCCL_LL128_BUFFSIZE
    NCCL_LL128_NTHREADS NCCL_LL_BUFFSIZE NCCL_LOCAL_REGISTER NCCL_MAX_CTAS
    NCCL_MAX_NCHANNELS NCCL_MAX_NRINGS NCCL_MAX_P2P_NCHANNELS NCCL_MEM_SYNC_DOMAIN
    NCCL_MIN_CTAS NCCL_MIN_NCHANNELS NCCL_MIN_NRINGS NCCL_MIN_P2P_NCHANNELS
    NCCL_MNNVL_ENABLE NCCL_NCHANNELS_PER_NET_PEER NCCL_NET NCCL_NET_DISABLE_INTRA
    NCCL_NET_FORCE_FLUSH NCCL_NET_GDR_C2C NCCL_NET_GDR_LEVEL NCCL_NET_GDR_READ
    NCCL_NET_OVERHEAD NCCL_NET_PLUGIN NCCL_NET_SHARED_BUFFERS NCCL_NET_SHARED_COMMS
    NCCL_NSOCKS_PERTHREAD NCCL_NTHREADS NCCL_NVB_DISABLE NCCL_NVLS_CHUNKSIZE
    NCCL_NVLS_ENABLE NCCL_NVLS_NCHANNELS NCCL_OOB_NET_ENABLE NCCL_OOB_NET_IFNAME
    NCCL_P2P_DIRECT_DISABLE NCCL_P2P_DISABLE NCCL_P2P_LEVEL NCCL_P2P_LL_THRESHOLD
    NCCL_P2P_NET_CHUNKSIZE NCCL_P2P_NVL_CHUNKSIZE NCCL_P2P_PCI_CHUNKSIZE
    NCCL_P2P_PXN_LEVEL NCCL_PROFILER_PLUGIN NCCL_PROTO NCCL_PXN_DISABLE NCCL_RAS_ADDR
    NCCL_RAS_ENABLE NCCL_RAS_TIMEOUT_FACTOR NCCL_RUNTIME_CONNECT NCCL_SET_STACK_SIZE
    NCCL_SET_THREAD_NAME NCCL_SHARP_DISABLE NCCL_SHM_DISABLE NCCL_SHM_LOCALITY
    NCCL_SHM_MEMCPY_MODE NCCL_SHM_USE_CUDA_MEMCPY NCCL_SINGLE_RING_THRESHOLD
    NCCL_SOCKET_FAMILY NCCL_SOCKET_IFNAME NCCL_SOCKET_NTHREADS NCCL_SOCKET_RETRY_CNT
    NCCL_SOCKET_RETRY_SLEEP_MSEC NCCL_TOPO_DUMP_FILE NCCL_TOPO_FILE NCCL_TREE_THRESHOLD
    NCCL_TUNER_PLUGIN NCCL_UID_STAGGER_RATE NCCL_UID_STAGGER_THRESHOLD NCCL_WIN_ENABLE
    NCCL_WORK_FIFO_BYTES NCCL_WORK_FIFO_DEPTH
"""
KNOWN_NCCL_VARS: frozenset[str] = frozenset(_KNOWN_NAMES.split())


def _check_names(names: Mapping[str, str], origin: str) -> None:
    for name in sorted(names):
        if name.startswith("NCCL_") and name not in KNOWN_NCCL_VARS:
            msg = f"unknown NCCL variable {name} in {origin} (not a documented NCCL setting)"
            log.warning(msg)
            warnings.warn(msg, UnknownNcclVariableWarning, stacklevel=3)


def nccl_env(
    profile: str,
    detected_hcas: list[str],
    overrides: Mapping[str, str],
    user_env: Mapping[str, str],
) -> dict[str, str]:
    """Environment for ``profile`` (sorted by name).

    ``detected_hcas`` are the active compute HCAs (see
    :func:`hpc.topology.placement.compute_hcas`); ``overrides`` replace profile values;
    any variable present in ``user_env`` is left out because the user's value is already
    in force. Unknown ``NCCL_*`` names in ``overrides`` or ``user_env`` warn
    (:class:`UnknownNcclVariableWarning`). Unknown profiles raise ValueError.
    """
    try:
        prof = PROFILES[profile]
    except KeyError:
        valid = ", ".join(PROFILES)
        raise ValueError(f"unknown NCCL profile {profile!r}; valid profiles: {valid}") from None
    _check_names(overrides, "overrides")
    _check_names(user_env, "the environment")
    env = dict(prof.env)
    if prof.set_ib_hca:
        if detected_hcas:
            env["NCCL_IB_HCA"] = "=" + ",".join(detected_hcas)
        else:
            log.warning("profile %s: no active HCA detected; NCCL_IB_HCA not set", profile)
    env.update(overrides)
    return {k: env[k] for k in sorted(env) if k not in user_env}


def format_env(env: Mapping[str, str]) -> str:
    """``NAME=value`` lines, sorted, newline-terminated (the golden-file format)."""
    return "".join(f"{k}={env[k]}\n" for k in sorted(env))
