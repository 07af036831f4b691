"""Delivering the winners: Model Registry + pyfunc model, Ray Serve, ONNX export, predict's files."""
