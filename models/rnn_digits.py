"""Build ``rnn_digits.onnx``: 8x8 digits read row by row by an ONNX RNN (tanh), hidden 32, then Gemm to 10."""

from _recurrent import build_recurrent


def build():
    return build_recurrent("rnn_digits", "RNN", seed=14)


if __name__ == "__main__":
    print(build())
