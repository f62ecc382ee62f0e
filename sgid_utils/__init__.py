"""sgid_utils: the library behind the SGID reproduction notebooks (one module per pipeline stage).

Importing it first checks the installed libraries against the tested ranges (``versions``), so a
Colab runtime with an older diffusers gets one clear message instead of a traceback from inside it.
"""

from sgid_utils.params.versions import check_versions

__version__ = "0.1.0"

check_versions()
