"""Network-namespace testbed: topology (:mod:`mpt.lab.topology`) and traffic
tools (:mod:`mpt.lab.traffic`).

``Lab``, ``LabError`` and ``cleanup_stale`` are re-exported lazily, so that
``python -m mpt.lab.topology`` does not import the module twice.
"""

__all__ = ["Lab", "LabError", "cleanup_stale"]


def __getattr__(name):
    if name in __all__:
        from . import topology
        return getattr(topology, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
