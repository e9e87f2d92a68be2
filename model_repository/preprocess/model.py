"""Triton python-backend model ``preprocess``: raw ECG in mV -> model input.

A thin adapter: the numbers come from ``lasan_kernel`` (a copy of lasan.errors, leads,
dsp and preprocessing that ``lasan build`` places beside this file), so the served
preprocessing is the code the model was trained with. Needs numpy only.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # The kernel package lives in the version folder (e.g. preprocess/1/lasan_kernel).
        sys.path.insert(0, os.path.join(args["model_repository"], args["model_version"]))
        kernel = __import__(params.get("kernel_package", "lasan_kernel"), fromlist=["errors", "preprocessing"])
        self._errors = kernel.errors
        self._preprocess_array = kernel.preprocessing.preprocess_array
        self._spec = kernel.preprocessing.InputSpec.from_dict(json.loads(params["input_spec"]))
        self._ecg_name, self._rate_name = (t["name"] for t in config["input"])
        out = config["output"][0]
        self._out_name = out["name"]
        self._out_dtype = pb_utils.triton_string_to_numpy(out["data_type"])

    def _one(self, request):
        ecg = pb_utils.get_input_tensor_by_name(request, self._ecg_name).as_numpy()  # (B, leads, T)
        rate = pb_utils.get_input_tensor_by_name(request, self._rate_name).as_numpy()  # (B, 1)
        if ecg.ndim != 3:
            raise self._errors.BadWaveformError(
                f"'{self._ecg_name}' must be [batch, leads, samples], got shape {list(ecg.shape)}"
            )
        if rate.shape != (ecg.shape[0], 1):
            raise self._errors.BadWaveformError(
                f"'{self._rate_name}' must be [batch, 1] with one rate per ECG, got shape {list(rate.shape)}"
            )
        x = np.stack([self._preprocess_array(ecg[b], float(rate[b, 0]), None, self._spec) for b in range(len(ecg))])
        return pb_utils.InferenceResponse([pb_utils.Tensor(self._out_name, x.astype(self._out_dtype))])

    def execute(self, requests):
        responses = []
        for request in requests:  # lengths differ between requests, so each is preprocessed on its own
            try:
                responses.append(self._one(request))
            except self._errors.LasanError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocess: {exc}")))
            except Exception as exc:  # never let one request take the model down
                msg = f"preprocess: internal error ({type(exc).__name__}: {exc})"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)))
        return responses

    def finalize(self):
        pass
