"""mpt: a multipath tunnel for Linux routers."""

__version__ = "0.1.0"
