"""Build ``mlp_digits_128.onnx``: a 64-128-10 ReLU MLP for 8x8 digits."""

from _common import HERE, build_mlp


def build(out_dir=HERE):
    return build_mlp("mlp_digits_128", [64, 128, 10], seed=2, out_dir=out_dir)


if __name__ == "__main__":
    print(build())
