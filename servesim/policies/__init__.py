"""Scheduling policies: pure decision logic, one file each, registered here by name."""

from servesim.policies.base import EngineLimits, Policy, PolicyParams, ServingView, Step
from servesim.policies.flowprefill import FlowPrefill
from servesim.policies.layered import Layered
from servesim.policies.nexus import Nexus
from servesim.policies.orca import Orca
from servesim.policies.sarathi import Sarathi
from servesim.policies.vllm import Vllm
from servesim.policies.vllm_v1 import VllmV1

REGISTRY: dict[str, type[Policy]] = {
    "vllm": Vllm,
    "vllm_v1": VllmV1,
    "sarathi": Sarathi,
    "orca": Orca,
    "layered": Layered,
    "flowprefill": FlowPrefill,
    "nexus": Nexus,
}

__all__ = ["REGISTRY", "EngineLimits", "Policy", "PolicyParams", "ServingView", "Step"]
