"""recsys: Spark-prepared, Horovod-trained, FAISS-served movie recommendations.

Nothing heavy is imported here: TensorFlow, Spark and FAISS load only in the
stages that need them, so ``recsys --help`` stays fast.
"""

__version__ = "0.1.0"
