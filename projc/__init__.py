"""projc: compile ONNX networks into projection programs and train them without gradients."""

__version__ = "0.1.0"
