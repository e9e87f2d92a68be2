"""Export checkpoints to TorchScript / ONNX / TensorRT and write Triton model repositories."""
