import math
import os
import sys
import time

import numpy as np
import numba
from numba import prange


def njit(*args, **kwargs):
    """numba.njit with the on-disk cache on, so a second process skips compiling.

    numba's cache records the module's import name and imports it again on
    load, so caching is on only when this module is registered under its
    name (a normal import); a module exec'd without a name would leave cache
    entries no other process can load."""
    kwargs.setdefault("cache", __name__ in sys.modules)
    return numba.njit(*args, **kwargs)
