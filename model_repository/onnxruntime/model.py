"""Triton python-backend model running an ONNX part (``encoder`` or ``fusion``) with ONNX Runtime.

The cpu profile's ``--runtime onnxruntime``: numpy and onnxruntime only, no torch in this
stub's process. Threads come from the model config (``ort_intra_op_threads``, default 1:
one instance per core, each single-threaded, like the TorchScript adapter). Requests that
arrive together (dynamic batching) are concatenated along the batch axis, run once and
split back: one response each.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("ort_intra_op_threads", params.get("torch_threads", "1")))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning intra-op threads burn the cores the HL7 listener needs for its ACKs.
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("ort_allow_spinning", "0"))
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.onnx"))
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = [t["name"] for t in config["input"]]
        self._outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        self._session_outputs = [o.name for o in self._session.get_outputs()]

    def execute(self, requests):
        try:
            arrays = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self._inputs] for r in requests]
            sizes = [a[0].shape[0] for a in arrays]
            feed = {n: np.concatenate([a[i] for a in arrays]) for i, n in enumerate(self._inputs)}
            out = self._session.run(self._session_outputs, feed)
        except Exception as exc:  # one bad batch answers every request in it with the error
            msg = f"{type(exc).__name__}: {exc}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(o[start : start + size]).astype(dtype))
                for (name, dtype), o in zip(self._outputs, out, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses

    def finalize(self):
        self._session = None
