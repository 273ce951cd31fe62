"""Where the shipped configs are, in a checkout and in an installed package."""
import os.path as osp

__all__ = ['configs_root', 'tools_root', 'register_config_package']

_PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _shipped(folder: str) -> str:
    """``mmattn/.mim/<folder>`` of an installed package, else the checkout's ``<folder>/``."""
    installed = osp.join(_PACKAGE_DIR, '.mim', folder)
    if osp.isdir(installed):
        return installed
    return osp.join(osp.dirname(_PACKAGE_DIR), folder)


def configs_root() -> str:
    """The folder holding the shipped configs (where ``mmattn::`` bases resolve when
    installed)."""
    return _shipped('configs')


def tools_root() -> str:
    """The folder holding ``train.py`` and ``test.py``."""
    return _shipped('tools')


def register_config_package() -> None:
    """Let ``_base_ = 'mmattn::psa/...'`` resolve. mmengine 0.10 accepts ``pkg::path`` only for
    the packages named in its table ``MODULE2PACKAGE``; this adds mmattn's entry (an addition:
    no existing entry changes), so it works wherever mmattn is imported before the config is
    read (mmattn's tools, a script that imports mmattn)."""
    from mmengine.config import utils as config_utils
    config_utils.MODULE2PACKAGE.setdefault('mmattn', 'mmattn')
