"""The TFLite quantizations (``emit/tflite.py`` says what each does), apart from that module so that listing
them, as the command line does, imports no TensorFlow."""

QUANTIZE = ("none", "fp16", "dynamic", "int8")
