"""Train the module generated from examples/twitter.py on synthetic data.

Run after `python -m gen examples/twitter.py -o generated/twitter/` (README).
The label is whether the headline's last word is one of the first 50 of a
100-word working vocabulary: the LSTM has to find it, so both outputs (the
auxiliary one sees the LSTM alone) learn it."""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "generated" / "twitter"))
import model as twitter  # noqa: E402  (the generated module)

rng = np.random.default_rng(0)
n = 2048
headlines = rng.integers(0, 100, (n, 100))
extra = rng.normal(size=(n, 5)).astype(np.float32)
labels = (headlines[:, -1:] < 50).astype(np.float32)

m = twitter.Model(seed=0)
m.summary()
t0 = time.perf_counter()
history = m.fit([headlines, extra], [labels, labels], epochs=4, batch_size=32, validation_split=0.25)
print(f"trained in {time.perf_counter() - t0:.1f} s (the first epoch includes numba compilation)")
print("final:", {k: round(v[-1], 4) for k, v in history.items()})
print("predictions for 3 headlines:", m.predict([headlines[:3], extra[:3]])[0].ravel())
