"""Triton python-backend model running a ``torch.export`` ExportedProgram (``model.pt2``).

The cpu profile's ``--runtime torch-export``: TorchScript's successor, loaded with
``torch.export.load`` and run as the program's module. Requests that arrive together
(dynamic batching) are concatenated along the batch axis, run once and split back.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("torch_threads", "1")))
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.pt2"))
        self._module = torch.export.load(path).module()
        self._inputs = [t["name"] for t in config["input"]]
        self._outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]

    def execute(self, requests):
        try:
            arrays = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self._inputs] for r in requests]
            sizes = [a[0].shape[0] for a in arrays]
            batch = [torch.from_numpy(np.concatenate([a[i] for a in arrays])) for i in range(len(self._inputs))]
            with torch.inference_mode():
                out = self._module(*batch)
            out = out if isinstance(out, (tuple, list)) else (out,)
            out = [o.numpy() for o in out]
        except Exception as exc:  # one bad batch answers every request in it with the error
            msg = f"{type(exc).__name__}: {exc}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, o[start : start + size].astype(dtype))
                for (name, dtype), o in zip(self._outputs, out, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses

    def finalize(self):
        self._module = None
