"""Install mmattn: ``pip install -e .`` (the pinned stack is installed by tools/setup_env.sh)."""
import os.path as osp

from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open(osp.join(osp.dirname(__file__), 'mmattn', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='mmattn',
    version=read_version(),
    description='Attention modules for dense prediction as OpenMMLab plugins '
    '(mmsegmentation, mmpose, mmdet)',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.9',
    # mmcv must be built with ops (see tools/setup_env.sh); pip cannot express that, so it is
    # declared here by version only.
    install_requires=[
        'torch==2.13.0',
        'torchvision==0.28.0',
        'numpy>=2,<2.4',  # cityscapesscripts (mmseg's CityscapesMetric) uses np.in1d, gone in 2.4
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'mmsegmentation==1.2.2',
        'mmpose==1.3.2',
        'mmdet==3.2.0',
        'ftfy',
        'regex',
        'matplotlib',
    ],
    extras_require={'tests': ['pytest', 'pytest-timeout', 'hypothesis']},
    zip_safe=False,
)
