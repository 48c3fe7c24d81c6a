"""The deployable side of an export: TensorRT engines and operator checks, Triton model repositories,
verify tolerances. Never imports torch (tests/test_layout.py checks the folder)."""
