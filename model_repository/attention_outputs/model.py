"""Triton python-backend model ``attention_outputs``: the fusion's outputs -> what a clinician sees.

The fusion part (``lasan.models.ServedLASAN``) already returns calibrated probabilities,
the occlusion lead importance, the paper's aggregator weights and the inter-lead
attention; they are passed through unchanged, and decisions are added at the screening
and confirmation thresholds (chosen on calibrated validation probabilities) that
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
        # Inputs in the spec's order: probabilities, importance, aggregator weights, attention.
        self._inputs = [t["name"] for t in config["input"]]
        self._out = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]

    def _one(self, request):
        probs, importance, aggregator, attention = (
            pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self._inputs
        )
        values = (
            probs,
            importance,
            aggregator,
            attention,
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
