"""`swsl-train`, the experiment runner: everything that needs TensorFlow.

`cli` and `config` import nothing heavy, so `--help` and every refusal answer
at once; the training modules load TensorFlow when they are imported.
"""
