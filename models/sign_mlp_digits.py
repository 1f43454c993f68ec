"""Build ``sign_mlp_digits.onnx``: a 64-64-10 MLP with Sign as its hidden activation."""

from _common import build_mlp


def build():
    return build_mlp("sign_mlp_digits", [64, 64, 10], seed=6, activation="Sign")


if __name__ == "__main__":
    print(build())
