"""Triton python-backend model ``attention_outputs``: logits -> what a clinician sees.

Softmax probabilities, the 8 lead-importance weights and the inter-lead attention map
(passed through), and decisions at the screening and confirmation thresholds that
``lasan build`` wrote into this model's parameters. Needs numpy only.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        classes = json.loads(params["classes"])
        thresholds = json.loads(params["thresholds"])
        self._screening = np.array([thresholds["screening"][c] for c in classes], dtype=np.float32)
        self._confirmation = np.array([thresholds["confirmation"][c] for c in classes], dtype=np.float32)
        self._logits, self._weights, self._attention = (t["name"] for t in config["input"])
        self._out = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]

    def _one(self, request):
        logits = pb_utils.get_input_tensor_by_name(request, self._logits).as_numpy().astype(np.float64)
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)  # (B, classes)
        values = (
            probs,
            pb_utils.get_input_tensor_by_name(request, self._weights).as_numpy(),
            pb_utils.get_input_tensor_by_name(request, self._attention).as_numpy(),
            probs >= self._screening,
            probs >= self._confirmation,
        )
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(name, np.ascontiguousarray(v).astype(dtype))
                for (name, dtype), v in zip(self._out, values, strict=True)
            ]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:  # never let one request take the model down
                msg = f"attention_outputs: {type(exc).__name__}: {exc}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)))
        return responses

    def finalize(self):
        pass
