"""Build ``gru_digits.onnx``: 8x8 digits read row by row by an ONNX GRU, hidden 32, then Gemm to 10."""

from _recurrent import build_recurrent


def build():
    return build_recurrent("gru_digits", "GRU", seed=16)


if __name__ == "__main__":
    print(build())
