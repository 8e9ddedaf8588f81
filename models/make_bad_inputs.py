#!/usr/bin/env python3
"""Valid ONNX files that are not image classifiers, for the bad-input tests.

  python models/make_bad_inputs.py          # writes tests/data/bad/
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "bad")


def save(name, nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name + ".onnx"))


def main():
    os.makedirs(OUT, exist_ok=True)
    w = numpy_helper.from_array(np.ones((10, 4), np.float32), "w")
    save("tabular_regressor", [helper.make_node("MatMul", ["x", "w"], ["y"])],
         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    k = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "k")
    save("segmenter", [helper.make_node("Conv", ["x", "k"], ["y"], pads=[1, 1, 1, 1])],
         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 32, 32])], [k])
    np.save(os.path.join(OUT, "int64_input.npy"), np.zeros((1, 3, 32, 32), np.int64))
    np.save(os.path.join(OUT, "wrong_shape.npy"), np.zeros((1, 3, 32, 31), np.float32))


if __name__ == "__main__":
    main()
