"""PyTorch checkpoints of the Ultralytics family (the YOLOv5 repository), read without their packages and
without running pickled code (:mod:`.pickled`), mapped onto plain darknet layers (:mod:`.yolov5`)."""
