"""Build ``cnn_digits.onnx``: a tiny CNN for 8x8 digits.

Conv 3x3 (8 ch, pad 1) + Relu + MaxPool 2 -> Flatten (8 * 4 * 4 = 128) -> Gemm to 10 logits.
"""

from _common import HERE, Net


def build(out_dir=HERE):
    net = Net("cnn_digits", seed=12)
    h = net.op("Relu", [net.conv("x", 1, 8, 3, "conv1", pad=1)])
    h = net.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = net.op("Flatten", [h], axis=1)
    net.gemm(h, 8 * 4 * 4, 10, "fc", init="glorot", out="logits")
    return net.save([("x", ["batch", 1, 8, 8])], [("logits", ["batch", 10])], out_dir)


if __name__ == "__main__":
    print(build())
