# One inner model reused by two different outer models in the same file:
# each generated module owns its own copy of the weights. Covers: an inner
# model inside a model inside a model, TimeDistributed of the nested model,
# TimeDistributed(Dense), three unnamed models and their Dense layers.
from keras.layers import Input, Dense, TimeDistributed
from keras.models import Model

v = Input(shape=(3,))
base = Model(v, Dense(4, activation='relu')(v))

w = Input(shape=(3,))
mid = Model(w, Dense(2)(base(w)))

p = Input(shape=(3,))
scorer = Model(p, Dense(1, activation='sigmoid')(mid(p)))
scorer.compile('sgd', 'binary_crossentropy')

s = Input(shape=(2, 3))
r = TimeDistributed(base)(s)
r = TimeDistributed(Dense(2, activation='softmax'))(r)
sequencer = Model(s, r)
sequencer.compile('rmsprop', 'categorical_crossentropy', metrics=['accuracy'])
