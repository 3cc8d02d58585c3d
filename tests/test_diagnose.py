"""What keeps a model's pods from running, from pod status as the kubelet and the scheduler
write it (the shapes below are what a v1.36 kubelet reported for each fault)."""

from __future__ import annotations

from typing import Any

import pytest

from specfleet import diagnose


def pod(name: str = "llama-8b-7d9f-abcde", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def container(name: str, image: str = "specfleet/vllm-sim:0.1.0", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "ready": False, "restartCount": 0, **fields}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": message}}


RUNNING = {"running": {"startedAt": "2026-12-05T19:00:00Z"}}
UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/9 nodes are available: 9 Insufficient nvidia.com/gpu. preemption: 0/9 nodes "
    "are available: 9 No preemption victims found for incoming pod.",
}


@pytest.mark.parametrize(
    ("status", "reason", "words"),
    [
        (
            {
                "containerStatuses": [
                    container("gate", state=RUNNING),
                    container(
                        "vllm",
                        image="example.invalid/vllm:nope",
                        state=waiting(
                            "ErrImageNeverPull",
                            'Container image "example.invalid/vllm:nope" is not present with '
                            "pull policy of Never",
                        ),
                    ),
                ]
            },
            "ImagePullFailed",
            ["container vllm", "example.invalid/vllm:nope", "ErrImageNeverPull", "not present"],
        ),
        (
            {"containerStatuses": [container("vllm", state=waiting("ImagePullBackOff"))]},
            "ImagePullFailed",
            ["ImagePullBackOff", "image specfleet/vllm-sim:0.1.0"],
        ),
        (
            {
                "containerStatuses": [
                    container(
                        "vllm",
                        state=waiting("CreateContainerConfigError", 'secret "hf-token" not found'),
                    )
                ]
            },
            "ContainerCannotStart",
            ['secret "hf-token" not found', "container vllm"],
        ),
        (
            {
                "containerStatuses": [
                    container(
                        "vllm",
                        restartCount=3,
                        state=waiting("CrashLoopBackOff", "back-off 40s restarting failed"),
                        lastState={
                            "terminated": {
                                "exitCode": 2,
                                "reason": "Error",
                                "message": "vllm: error: unrecognized arguments: --enforce-eager\n",
                            }
                        },
                    )
                ]
            },
            "CrashLooping",
            ["container vllm", "exited with code 2", "3 restarts", "--enforce-eager"],
        ),
        (
            {"phase": "Pending", "conditions": [UNSCHEDULABLE]},
            "Unschedulable",
            ["cannot be scheduled", "Insufficient nvidia.com/gpu"],
        ),
    ],
)
def test_each_fault_is_named_with_the_words_that_explain_it(
    status: dict[str, Any], reason: str, words: list[str]
) -> None:
    found = diagnose.trouble([pod(**status)])
    assert found is not None
    assert found.reason == reason
    for word in words:
        assert word in found.message
    assert "llama-8b-7d9f-abcde" in found.message


@pytest.mark.parametrize(
    "status",
    [
        {},  # just created
        {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
        {"containerStatuses": [container("vllm", state=waiting("ContainerCreating"))]},
        {"containerStatuses": [container("vllm", state=RUNNING, ready=False)]},  # loading
        {"containerStatuses": [container("vllm", restartCount=1, state=RUNNING)]},
    ],
)
def test_pods_on_their_way_are_no_trouble(status: dict[str, Any]) -> None:
    assert diagnose.trouble([pod(**status)]) is None


def test_a_long_crash_message_keeps_its_end() -> None:
    tail = "ValueError: the last line says why"
    crashed = container(
        "vllm",
        restartCount=1,
        state=waiting("CrashLoopBackOff"),
        lastState={"terminated": {"exitCode": 1, "message": "x" * 5000 + "\n" + tail}},
    )
    found = diagnose.trouble([pod(containerStatuses=[crashed])])
    assert found is not None and found.message.endswith(tail)
    assert len(found.message) < diagnose.TERMINATION_MESSAGE_LIMIT + 200


def test_the_first_pod_by_name_speaks_and_terminating_pods_do_not() -> None:
    old = pod("m-a", containerStatuses=[container("vllm", state=waiting("ImagePullBackOff"))])
    old["metadata"]["deletionTimestamp"] = "2026-12-05T19:00:00Z"
    stuck = pod("m-c", conditions=[UNSCHEDULABLE])
    crashing = pod("m-b", containerStatuses=[container("vllm", state=waiting("CrashLoopBackOff"))])
    found = diagnose.trouble([stuck, old, crashing])
    assert found is not None and found.reason == "CrashLooping" and "m-b" in found.message


def test_an_init_container_that_cannot_pull_is_named() -> None:
    found = diagnose.trouble(
        [pod(initContainerStatuses=[container("fetch", state=waiting("ErrImagePull"))])]
    )
    assert found is not None and found.reason == "ImagePullFailed"
    assert "container fetch" in found.message
