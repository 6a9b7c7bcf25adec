"""cnnlab: images in, a trained, evaluated CNN classifier out; a classic CNN course, runnable.

import cnnlab
run = cnnlab.train("photos/")          # or "fashion-mnist", or a torch Dataset; returns a Run
run.predict(["a.jpg"]); run.plot_confusion_matrix()
run = cnnlab.load("runs/NAME")          # a run trained before
"""

import warnings

from cnnlab.version import __version__ as __version__  # re-exported: cnnlab.__version__

# tqdm.auto (imported by a dependency) warns in a Jupyter kernel without ipywidgets; cnnlab draws no widget
warnings.filterwarnings("ignore", message="IProgress not found")

_API = {"train", "load", "audit_data", "sample_data", "Run", "Predictions", "Evaluation"}


def __getattr__(name: str):
    """`cnnlab.train` and the rest of the notebook API (cnnlab/api.py), imported on first use: `import cnnlab`
    itself stays light, and the CLI's start does not pay for the API's imports."""
    if name in _API:
        from cnnlab import api  # the API imports torch and every stage: only when asked for

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
