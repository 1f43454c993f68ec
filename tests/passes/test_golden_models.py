"""Golden text of the network IR after each import pass, for the example models in models/.

Set PROJC_UPDATE_GOLDEN=1 to rewrite the files after an intended change, then review the diff.
"""

import os
from pathlib import Path

import pytest

from projc.frontend import IMPORT_PIPELINE, bind_dims, read_model
from projc.ir import assign_roles, format_model, verify
from projc.passes import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden") / "models"
MODELS = ["mlp_digits", "cnn_digits", "residual_mlp_digits", "lstm_digits", "gru_digits", "rnn_digits"]


@pytest.mark.parametrize("name", MODELS)
def test_network_ir_after_each_import_pass(name):
    model = read_model(ROOT / "models" / f"{name}.onnx")
    bind_dims(model, 2)
    assign_roles(model.graph)
    parts = ["# imported\n" + format_model(model)]

    def record(p, m):
        verify(m)  # the verifier stays green after every pass
        parts.append(f"# after {p.name}\n" + format_model(m))

    run_pipeline(model, IMPORT_PIPELINE, after_each=record)
    text = "".join(parts)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("PROJC_UPDATE_GOLDEN") or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"network IR of {name} changed; rerun with PROJC_UPDATE_GOLDEN=1 and review"
