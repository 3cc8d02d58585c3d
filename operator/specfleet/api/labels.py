"""Label keys and values specfleet writes and reads.

The GPU labels are those NVIDIA GPU Feature Discovery sets on GPU nodes; the e2e harness gives
its simulated node pools the same ones, so placement is tested against what real clusters carry.
"""

from __future__ import annotations

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"

MANAGER = "specfleet"
"""The value of app.kubernetes.io/managed-by and part-of on everything the operator makes."""

GPU_RESOURCE = "nvidia.com/gpu"
"""The extended resource a GPU is requested as, and the key of the taint GPU nodes carry."""
GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_COUNT = "nvidia.com/gpu.count"
GPU_PRESENT = "nvidia.com/gpu.present"
GPU_MEMORY = "nvidia.com/gpu.memory"

GPU_PRODUCT_LABELS: dict[str, str] = {
    "H100-80GB": "NVIDIA-H100-80GB-HBM3",
    "H200-141GB": "NVIDIA-H200",
    "A100-80GB": "NVIDIA-A100-SXM4-80GB",
    "A100-40GB": "NVIDIA-A100-SXM4-40GB",
    "L40S": "NVIDIA-L40S",
    "L4": "NVIDIA-L4",
}
"""The `nvidia.com/gpu.product` value GPU Feature Discovery reports for each GPU product."""

INFERENCE_MODEL = "specfleet.dev/inferencemodel"
"""On every object made for an InferenceModel, with its name; selects its pods."""
ROUTING_POLICY = "specfleet.dev/routingpolicy"
"""On every object made for a RoutingPolicy, with its name; selects its router pods."""
