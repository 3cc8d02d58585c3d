"""The vllm-sim image's `vllm` (specfleet_runtime.sim.vllm_cli): every command line the operator
renders runs in it as the spec means it, and anything else is refused the way argparse refuses,
exit 2 naming what is wrong. The rendered lines and the table of options are the ones
tests/test_vllm_args.py checks against vLLM's own parser."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping

import pytest

from specfleet import perf, plan
from specfleet.api.inferencemodel import InferenceModel
from specfleet.config import Config
from specfleet.render import inferencemodel as render
from specfleet_runtime.sim import cli as sim_cli
from specfleet_runtime.sim import vllm_cli
from tests.corpus import ROOT
from tests.test_vllm_args import CASES

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DRAFT = "meta-llama/Llama-3.2-1B-Instruct"


def _rendered_command(model: InferenceModel) -> list[str]:
    """The vllm container's command line, as the Deployment renders it."""
    result = plan.plan(model.metadata.name, model.spec)
    (deployment,) = [
        m for m in render.manifests(model, result, Config()) if m["kind"] == "Deployment"
    ]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (vllm,) = [c for c in containers if c["name"] == "vllm"]
    return [*vllm["command"], *vllm["args"]]


def _json(**config: object) -> str:
    return json.dumps(config)


def _refusal(
    argv: list[str], capsys: pytest.CaptureFixture[str], environ: Mapping[str, str] = {}
) -> str:
    with pytest.raises(SystemExit) as exited:
        vllm_cli.parse(argv, environ)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_the_table_covers_the_examples() -> None:
    examples = [case_id for case_id, _ in CASES if ":" in case_id]
    assert len(examples) >= 3


@pytest.mark.parametrize(("case_id", "model"), CASES, ids=[c[0] for c in CASES])
def test_every_rendered_command_line_runs_as_the_spec_means_it(
    case_id: str, model: InferenceModel, capsys: pytest.CaptureFixture[str]
) -> None:
    command = _rendered_command(model)
    assert command[0] == "vllm"
    spec = model.spec
    if spec.extra_args:
        # The simulator cannot model what an extra vLLM flag does: refused, not ignored.
        assert _refusal(command[1:], capsys).endswith(
            f"unrecognized arguments: {' '.join(spec.extra_args)}\n"
        )
        return
    run = vllm_cli.parse(command[1:], {})
    result = plan.plan(model.metadata.name, spec)
    simulated = run.simulation
    assert simulated.architecture == spec.model.name
    assert simulated.served_model_name == render.served_name(model)
    assert simulated.tensor_parallel_size == result.tensor_parallel_size
    live = spec.batching.mode == "Live"
    assert simulated.max_num_seqs == (spec.batching.max if live else render.initial_limit(model))
    # The precision the planner estimates with: 8-bit formats as fp8, the rest at 16 bits.
    if result.quantization == "none":
        assert simulated.quantization == "none"
    else:
        eight_bit = perf.SERVED_WEIGHT_BYTES[result.quantization] == 1.0
        assert simulated.quantization == ("fp8" if eight_bit else "none")
    assert simulated.gpu == "H100-80GB"
    assert (run.host, run.port) == ("0.0.0.0", 8000)
    draft = spec.draft
    draft_simulated = draft is not None and draft.method == "draft_model"
    if draft_simulated:
        assert draft is not None
        assert draft.model is not None
        assert simulated.draft == draft.model.name
        assert simulated.num_speculative_tokens == draft.num_speculative_tokens
        assert run.notes == ()
    else:
        assert simulated.draft is None
        assert bool(run.notes) == (draft is not None)
    server = sim_cli.build(simulated)
    assert server.served_model_name == simulated.served_model_name
    replica = server.engine.config.replica
    assert replica.speculative_tokens == (
        simulated.num_speculative_tokens if draft_simulated else 0
    )
    assert replica.tensor_parallel_size == result.tensor_parallel_size


@pytest.mark.parametrize(
    "flags",
    [
        ["--speculative-model", DRAFT],
        ["--num-speculative-tokens", "5"],
        ["--use-v2-block-manager"],
        ["--max-num", "8"],  # an abbreviation of --max-num-seqs
        ["-tp", "2"],  # vLLM's alias; specfleet renders the long flag
        ["--enable-chunked-prefill"],
    ],
    ids=lambda flags: flags[0],
)
def test_a_flag_it_does_not_know_exits_2_naming_it(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(["serve", MODEL, *flags], capsys)
    assert f"unrecognized arguments: {' '.join(flags)}" in err


@pytest.mark.parametrize(
    "argv",
    [[], [MODEL], ["chat", MODEL], ["--port", "8000"]],
    ids=["empty", "model", "chat", "flag"],
)
def test_without_the_serve_subcommand_it_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(argv, capsys)
    assert "serve" in err.splitlines()[-1]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("not json", "is not JSON"),
        ('["draft_model"]', "must be a JSON object"),
        (_json(method="draft_model", model=DRAFT, k=5), "keys the stand-in does not know: k"),
        ('{"method":"medusa","num_speculative_tokens":3}', "method must be one of"),
        ('{"method":"ngram","num_speculative_tokens":0}', "num_speculative_tokens must be 1 to 16"),
        ('{"method":"ngram","num_speculative_tokens":true}', "num_speculative_tokens must be a"),
        ('{"method":"eagle","num_speculative_tokens":3}', "method eagle needs a model"),
        (
            '{"method":"draft_model","model":"someone/tiny","num_speculative_tokens":3}',
            "cannot time the --speculative-config model someone/tiny",
        ),
        (
            _json(
                method="draft_model",
                model=DRAFT,
                num_speculative_tokens=3,
                draft_tensor_parallel_size=2,
            ),
            "draft_tensor_parallel_size must be 1 or --tensor-parallel-size (1), got 2",
        ),
    ],
    ids=[
        "json",
        "object",
        "key",
        "method",
        "tokens",
        "bool",
        "eagle-model",
        "unknown-draft",
        "draft-tp",
    ],
)
def test_the_speculative_config_is_checked(
    config: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(["serve", MODEL, "--speculative-config", config], capsys)
    assert message in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tensor-parallel-size", "0"], "--tensor-parallel-size: must be a positive integer"),
        (["--max-num-seqs", "many"], "--max-num-seqs: invalid _positive_int value"),
        (["--gpu-memory-utilization", "1.5"], "must be above 0 and at most 1"),
        (["--kv-cache-dtype", "int3"], "--kv-cache-dtype: invalid choice: 'int3'"),
        (["--quantization", "magic"], "--quantization: invalid choice: 'magic'"),
        (["--max-model-len", "-1"], "--max-model-len: must be a positive integer"),
        (["--port", "http"], "--port: invalid int value"),
        (["--served-model-name", "a", "b"], "serves one name, got 2: a b"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_values_are_checked_even_where_they_mean_nothing_to_the_simulator(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in _refusal(["serve", MODEL, *flags], capsys)


def test_a_model_the_catalog_cannot_time_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = _refusal(["serve", "someone/unknown-model"], capsys)
    assert "cannot time MODEL someone/unknown-model" in err


def test_what_the_command_line_cannot_say_comes_from_the_environment() -> None:
    environ = {
        vllm_cli.ENV_GPU: "A100-80GB",
        vllm_cli.ENV_ACCEPTANCE_RATE: "0.4",
        vllm_cli.ENV_TIME_FACTOR: "0.01",
        vllm_cli.ENV_STARTUP_DELAY: "2.5",
        vllm_cli.ENV_CAPABILITY: "0.6",
    }
    run = vllm_cli.parse(["serve", MODEL, "--quantization", "fp8"], environ)
    assert run.simulation.gpu == "A100-80GB"
    assert run.simulation.acceptance_rate == 0.4
    assert run.simulation.time_factor == 0.01
    assert run.startup_delay == 2.5
    assert run.simulation.capability == 0.6
    assert run.simulation.served_model_name == MODEL
    assert run.simulation.quantization == "fp8"
    defaults = vllm_cli.parse(["serve", MODEL], {})
    assert defaults.simulation.acceptance_rate == 0.7
    assert (defaults.simulation.time_factor, defaults.startup_delay) == (1.0, 0.0)
    assert defaults.simulation.quantization == "none"  # as vLLM: no flag, 16-bit weights
    assert defaults.simulation.capability is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (vllm_cli.ENV_GPU, "H800"),
        (vllm_cli.ENV_ACCEPTANCE_RATE, "1.5"),
        (vllm_cli.ENV_TIME_FACTOR, "0"),
        (vllm_cli.ENV_STARTUP_DELAY, "soon"),
        (vllm_cli.ENV_CAPABILITY, "1.2"),
        (vllm_cli.ENV_CAPABILITY, "strong"),
    ],
)
def test_a_bad_environment_variable_is_refused_by_name(
    name: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(["serve", MODEL], capsys, {name: value})
    assert f"{name}={value}" in err


def test_it_is_installed_as_a_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["specfleet-vllm-sim"] == "specfleet_runtime.sim.vllm_cli:main"
