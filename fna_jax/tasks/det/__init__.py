"""Object detection (paper Sec. 4.2, Tab. 4/5): RetinaNet on MS-COCO, following MMDetection v1.

* :mod:`~fna_jax.tasks.det.coco`: COCO 2017 from the official zips, prepared into ArrayRecord.
"""
