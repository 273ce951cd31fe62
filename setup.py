"""Install mmattn into an existing OpenMMLab environment.

    pip install -e .                    # the modules, AttentionBackbone/Neck, engine components
    pip install -e ".[seg,pose,det]"    # with the task packages (see requirements/*.txt)

Requirements are ranges (requirements/runtime.txt), so an environment that already has torch,
mmengine and mmcv keeps them. The exact reference stack is requirements/reference.txt, installed
by tools/setup_env.sh. As in mmsegmentation and mmpose, the configs ship inside the package
(``mmattn/.mim/configs``), so an installed mmattn can name them as ``mmattn::psa/...``.
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version():
    namespace = {}
    with open(osp.join(HERE, 'mmattn', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_requirements(name):
    """The requirement lines of requirements/<name>.txt (comments and blanks dropped)."""
    with open(osp.join(HERE, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def add_mim_extension():
    """Put configs/ (and the tools) into mmattn/.mim, as mmseg's and mmpose's setup.py do:
    symbolic links for an editable install, copies when a wheel or sdist is built."""
    if any(cmd in sys.argv for cmd in ('develop', 'editable_wheel')):
        mode = 'symlink'
    elif any(cmd in sys.argv for cmd in ('sdist', 'bdist_wheel', 'build', 'install')):
        mode = 'copy'
    else:
        return
    mim_path = osp.join(HERE, 'mmattn', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in ('configs', 'tools'):
        src = osp.join(HERE, name)
        dst = osp.join(mim_path, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if not osp.exists(src):
            continue
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_path), dst, target_is_directory=True)
        else:
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    # mmengine reads .mim/model-index.yml before it resolves `mmattn::folder/file.py`; with no
    # model metafiles listed it takes the path under .mim/configs as given
    with open(osp.join(mim_path, 'model-index.yml'), 'w') as f:
        f.write('Import: []\n')


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='mmattn',
        version=read_version(),
        description='Attention modules for dense prediction as OpenMMLab plugins '
        '(mmsegmentation, mmpose, mmdet)',
        long_description=open(osp.join(HERE, 'README.md')).read(),
        long_description_content_type='text/markdown',
        packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
        include_package_data=True,
        package_data={'mmattn': ['.mim/model-index.yml', '.mim/configs/*/*.py', '.mim/configs/*/*.md',
                                 '.mim/tools/*.py', '.mim/tools/*.sh', '.mim/tools/*/*.py']},
        python_requires='>=3.9',
        install_requires=read_requirements('runtime'),
        extras_require={
            'mim': read_requirements('mminstall'),
            'seg': read_requirements('seg'),
            'pose': read_requirements('pose'),
            'det': read_requirements('det'),
            'tests': read_requirements('tests'),
            'benchmark': read_requirements('benchmark'),
        },
        zip_safe=False,
    )
