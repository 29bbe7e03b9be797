# One Dense object at three call sites, two of them in a row (its output
# feeds it again): one set of weights, gradients summed over every call.
# Covers: a layer applied twice in a row, a shared layer on two inputs,
# one call site's output both consumed again and used by another layer,
# SGD with momentum, mean squared error.
from keras import Input, Model
from keras.layers import Dense, Concatenate
from keras.optimizers import SGD

a = Input(shape=(4,), name='a')
b = Input(shape=(4,), name='b')
shared = Dense(4, activation='tanh', name='shared')
h1 = shared(a)
h2 = shared(h1)
h3 = shared(b)
joined = Concatenate()([h3, h2, h1])
out = Dense(2, name='out')(joined)

chain = Model(inputs=[a, b], outputs=out, name='chain')
chain.compile(optimizer=SGD(learning_rate=0.05, momentum=0.9), loss='mse')
