"""Golden text of the constraint IR after lowering and after bipartization, for models/.

Set PROJC_UPDATE_GOLDEN=1 to rewrite the files after an intended change, then review the diff.
"""

import os
from pathlib import Path

import pytest

from projc.constraints import format_program
from projc.frontend import load_model
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden")
MODELS = ["mlp_digits", "cnn_digits", "residual_mlp_digits", "rnn_digits", "gru_digits", "lstm_digits",
          "sign_mlp_digits"]


@pytest.mark.parametrize("name", MODELS)
def test_constraint_ir_golden(name):
    prog = lower(load_model(ROOT / "models" / f"{name}.onnx", batch_size=2))
    text = "# after lower-to-constraints\n" + format_program(prog)
    bipartize(prog)
    text += "# after bipartize\n" + format_program(prog)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("PROJC_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"constraint IR of {name} changed; rerun with PROJC_UPDATE_GOLDEN=1 and review"
