import json

import pytest

from service.cli import main


def test_plan_prints_json(capsys):
    assert main(["plan", "--preset", "mamtra-1:3", "--context", "4096", "--streams", "256"]) == 0
    plan = json.loads(capsys.readouterr().out)
    for key in ("layout", "attention_layers", "params", "weight_bytes", "kv_bytes_per_stream",
                "mamba_state_bytes_per_stream", "state_bytes_per_stream", "total_state_bytes"):
        assert key in plan
    assert plan["attention_layers"] == [0, 4, 8, 12, 16, 20]
    # 6 attention layers x 4096 tokens x (K + V) x 2 KV heads x 64 x 2 bytes
    assert plan["kv_bytes_per_stream"] == 6 * 4096 * 2 * 2 * 64 * 2
    # 18 Mamba layers x (fp32 SSM state 14x64x64 + bf16 conv window 3 x (2*128 + 896))
    assert plan["mamba_state_bytes_per_stream"] == 18 * (14 * 64 * 64 * 4 + 3 * 1152 * 2)
    assert plan["total_state_bytes"] == 256 * plan["state_bytes_per_stream"]


def test_plan_ssm_dtype_halves_ssm_state(capsys):
    main(["plan", "--preset", "mamba", "--context", "256", "--ssm-dtype", "bf16"])
    bf16 = json.loads(capsys.readouterr().out)
    main(["plan", "--preset", "mamba", "--context", "256"])
    fp32 = json.loads(capsys.readouterr().out)
    assert bf16["kv_bytes_per_stream"] == fp32["kv_bytes_per_stream"] == 0
    # the conv window stays in the KV dtype, so slightly over half
    assert bf16["mamba_state_bytes_per_stream"] == fp32["mamba_state_bytes_per_stream"] - 24 * 14 * 64 * 64 * 2


def test_plan_rejects_context_beyond_model(capsys):
    assert main(["plan", "--preset", "transformer", "--context", "100000"]) == 2
    assert "max_context" in capsys.readouterr().err


def test_plan_unknown_preset_is_a_usage_error():
    with pytest.raises(SystemExit):
        main(["plan", "--preset", "nope"])
