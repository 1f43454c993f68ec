"""Build ``gru_digits.onnx``: an ONNX GRU (hidden 32) reads 8x8 digits row by row."""

from _recurrent import HERE, build_recurrent


def build(out_dir=HERE):
    return build_recurrent("gru_digits", "GRU", seed=16, out_dir=out_dir)


if __name__ == "__main__":
    print(build())
