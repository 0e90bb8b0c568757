"""The served model: the artifact planned and loaded, its backends (torch, ONNX Runtime, CUDA
graphs), and the choices of backend, device, precision and threads made from the machine."""
