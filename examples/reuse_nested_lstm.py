# A nested model that holds an Embedding and an LSTM (int inputs), applied
# to two token sequences; TimeDistributed(Dense) tags every timestep of the
# joined sequences. Covers: int inputs through a model call, an LSTM at two
# call sites, TimeDistributed(layer) on a sequence, sparse targets.
import keras
from keras.layers import Input, Embedding, LSTM, Dense, TimeDistributed, concatenate

steps = 4
vocab = 7

tokens = Input(shape=(steps,), dtype='int32')
t = Embedding(vocab, 3)(tokens)
t = LSTM(3, return_sequences=True)(t)
reader = keras.Model(tokens, t)

first = Input(shape=(steps,), dtype='int32', name='first')
second = Input(shape=(steps,), dtype='int32', name='second')
joined = concatenate([reader(first), reader(second)])
tags = TimeDistributed(Dense(3, activation='softmax'))(joined)

pair_tagger = keras.Model([first, second], tags)
pair_tagger.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                    loss='sparse_categorical_crossentropy', metrics=['accuracy'])
