"""Build ``sign_mlp_digits.onnx``: a 64-128-10 MLP with Sign as its hidden activation."""

from _common import HERE, build_mlp


def build(out_dir=HERE):
    return build_mlp("sign_mlp_digits", [64, 128, 10], seed=6, activation="Sign", out_dir=out_dir)


if __name__ == "__main__":
    print(build())
