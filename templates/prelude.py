import math
import os
import sys
import time

import numpy as np
import numba
from numba import prange


def njit(*args, **kwargs):
    """numba.njit with the on-disk cache on: a second process skips compilation."""
    kwargs.setdefault("cache", True)
    return numba.njit(*args, **kwargs)
