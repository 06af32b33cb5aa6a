"""recsys: Spark-prepared, Horovod-trained, FAISS-served movie recommendations.

Nothing heavy is imported here: TensorFlow, Spark and FAISS load only in the
stages that need them, so ``recsys --help`` stays fast.
"""

__version__ = "0.1.0"

import os as _os

# Quiet TensorFlow's C++ start-up lines, and make `import tf_keras`-based code (Horovod's
# wrappers need Keras 2) the default for every entry point. Cheap: sets two variables.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
