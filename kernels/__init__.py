"""Hand-written kernels, each with a pure-JAX reference in the tests (installed as jaxmap.kernels).

This folder is ``jaxmap.kernels``. Python puts the working directory (or a script's folder) first
on ``sys.path``, so from the repository root ``import kernels`` would find this folder before an
installed distribution of that name (the PyPI ``kernels`` package, which transformers imports).
Imported under the top-level name, this module therefore hands the name to the installed
distribution where there is one, so that it never hides it.
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [
        entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _checkout
    ]
    _installed = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _installed is not None and _installed.loader is not None:
        # The import statement returns whatever sys.modules holds once this body has run.
        _module = importlib.util.module_from_spec(_installed)
        sys.modules["kernels"] = _module
        _installed.loader.exec_module(_module)
