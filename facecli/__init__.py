"""facecli: align, pack, train and evaluate face-recognition models of the ArcFace family.

The library is importable without the CLI: each stage lives in its own subpackage (``facecli.align``,
``facecli.data``, ``facecli.nn``, ``facecli.train``, ``facecli.eval``, ``facecli.gallery``) and stages talk to each
other only through files (see the picture in the README).
"""

__version__ = "0.1.0"
