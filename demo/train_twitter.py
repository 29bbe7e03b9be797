"""Train the module generated from examples/twitter.py on synthetic data.

Run after `python -m gen examples/twitter.py -o generated/twitter/` (README).
The main label is whether the headline's first word id is below 5000; the
auxiliary output learns the same label from the LSTM alone."""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "generated" / "twitter"))
import model as twitter  # noqa: E402  (the generated module)

rng = np.random.default_rng(0)
n = 2048
headlines = rng.integers(0, 10000, (n, 100))
extra = rng.normal(size=(n, 5)).astype(np.float32)
labels = (headlines[:, :1] < 5000).astype(np.float32)

m = twitter.Model(seed=0)
m.summary()
t0 = time.perf_counter()
history = m.fit([headlines, extra], [labels, labels], epochs=3, batch_size=32, validation_split=0.25)
print(f"trained in {time.perf_counter() - t0:.1f} s (the first epoch includes numba compilation)")
print("final:", {k: round(v[-1], 4) for k, v in history.items()})
print("predictions for 3 headlines:", m.predict([headlines[:3], extra[:3]])[0].ravel())
