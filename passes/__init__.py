"""Graph-to-graph transformations, one file per pass, composed by a pipeline string."""

from projc.passes.base import Pass, PassResult, get_pass, parse_pipeline, register_pass, registered_passes, run_pipeline

__all__ = ["Pass", "PassResult", "get_pass", "parse_pipeline", "register_pass", "registered_passes", "run_pipeline"]

# importing the pass modules registers them
from projc.passes import (  # noqa: E402,F401
    bipartize,
    canonicalize,
    dce,
    fold_constants,
    infer_shapes,
    lower_to_constraints,
    schedule_blocks,
)
