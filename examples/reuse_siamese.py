# Siamese network: one encoder model applied to two inputs, the two codes
# concatenated and compared. Covers: a named inner model called twice (its
# Dense layers run at two call sites each), concatenate() of two model-call
# outputs, RMSprop with arguments, binary accuracy.
import keras
from keras import layers

pair_in = keras.Input(shape=(4,), name='item')
e = layers.Dense(6, activation='tanh')(pair_in)
e = layers.Dense(3)(e)
encoder = keras.Model(pair_in, e, name='encoder')

left = keras.Input(shape=(4,), name='left')
right = keras.Input(shape=(4,), name='right')
both = layers.concatenate([encoder(left), encoder(right)])
same = layers.Dense(1, activation='sigmoid', name='same')(both)

siamese = keras.Model(inputs=[left, right], outputs=same, name='siamese')
siamese.compile(keras.optimizers.RMSprop(learning_rate=0.01, momentum=0.5),
                'binary_crossentropy', metrics=['accuracy'])
