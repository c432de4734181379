"""Our ONNX Runtime custom-op library: the ops of domain "qpasses" (MatMulMXFP4, MatMulInt4).

The C++ lives in `runtime/` and is built by the package install into this folder. Use
`session(path)` for a ready onnxruntime session, or `library_path()` to register the library
with any other ORT front end (`SessionOptions.register_custom_ops_library(path)`).
`QPASSES_ISA=scalar|avx2|avx512` forces a kernel path (read when a session is created).
`library` finds the library (a leaf); `ort` builds the sessions: `ort_session` chooses the graph
optimizations on purpose and registers the library when a model imports the domain.
"""

from qpasses.domain import DOMAIN, DOMAIN_VERSION
from qpasses.runtime.library import ISAS, LIBRARY_NAME, available_isas, library_path
from qpasses.runtime.ort import session

__all__ = ["DOMAIN", "DOMAIN_VERSION", "ISAS", "LIBRARY_NAME", "available_isas", "library_path", "session"]
