"""Build ``residual_mlp_digits.onnx``: 64 -> 32 (ReLU), two blocks h + relu(W h + b), -> 10."""

from _common import HERE, Net


def build(out_dir=HERE):
    net = Net("residual_mlp_digits", seed=13)
    h = net.op("Relu", [net.gemm("x", 64, 32, "stem")])
    for block in (1, 2):
        branch = net.op("Relu", [net.gemm(h, 32, 32, f"block{block}")])
        h = net.op("Add", [h, branch])
    net.gemm(h, 32, 10, "head", init="glorot", out="logits")
    return net.save([("x", ["batch", 64])], [("logits", ["batch", 10])], out_dir)


if __name__ == "__main__":
    print(build())
