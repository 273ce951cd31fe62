from .amp_optim_wrapper import PortableAmpOptimWrapper  # noqa: F401

__all__ = ['PortableAmpOptimWrapper']
