# Sequence tagging: token ids -> a tag distribution at every timestep.
# Covers: int32 input, Embedding, LSTM(return_sequences=True), Dense on a 3-D
# input, sparse_categorical_crossentropy, sparse accuracy, Adam object.
import keras
import keras.layers as L

maxlen = 12
vocab = 50
tags = 8

tokens = L.Input(shape=(maxlen,), dtype='int32', name='tokens')
h = L.Embedding(vocab, 16)(tokens)
h = L.LSTM(24, return_sequences=True)(h)
tag_probs = L.Dense(tags, activation='softmax', name='tags')(h)

tagger = keras.Model(inputs=tokens, outputs=tag_probs, name='tagger')
tagger.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),
               loss='sparse_categorical_crossentropy', metrics=['accuracy'])
tagger.fit(token_ids, tag_ids, epochs=5, batch_size=16)
