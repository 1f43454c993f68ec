"""Build ``lstm_digits.onnx``: 8x8 digits read row by row by an ONNX LSTM, hidden 32, then Gemm to 10."""

from _recurrent import build_recurrent


def build():
    return build_recurrent("lstm_digits", "LSTM", seed=15)


if __name__ == "__main__":
    print(build())
