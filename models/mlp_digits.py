"""Build ``mlp_digits.onnx``: a 64-32-10 ReLU MLP for 8x8 digits."""

from _common import HERE, build_mlp


def build(out_dir=HERE):
    return build_mlp("mlp_digits", [64, 32, 10], seed=1, out_dir=out_dir)


if __name__ == "__main__":
    print(build())
