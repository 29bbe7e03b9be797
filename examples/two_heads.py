# Two sequence inputs joined along time and along features, two outputs.
# Covers: Concatenate layer object on axis=1 and axis=-1, dict losses, list
# loss_weights, dict metrics, categorical and binary accuracy, sgd string.
import keras
from keras import layers

left = keras.Input(shape=(5, 4), name='left')
right = keras.Input(shape=(3, 4), name='right')
extra = keras.Input(shape=(5, 2), name='extra')

joined_time = layers.Concatenate(axis=1)([left, right])           # (8, 4)
joined_feat = layers.Concatenate()([left, extra])                  # (5, 6)
summary = layers.LSTM(6)(joined_time)
per_step = layers.Dense(3, activation='relu')(joined_feat)        # (5, 3)
flat = layers.LSTM(5, activation='tanh')(per_step)
both = layers.concatenate([summary, flat], axis=-1)
topic = layers.Dense(4, activation='softmax', name='topic')(both)
flag = layers.Dense(1, activation='sigmoid', name='flag')(flat)

two_heads = keras.Model(inputs=[left, right, extra], outputs=[topic, flag])
two_heads.compile(optimizer='sgd',
                  loss={'topic': 'categorical_crossentropy', 'flag': 'binary_crossentropy'},
                  loss_weights=[1.0, 0.5],
                  metrics={'topic': 'accuracy', 'flag': ['accuracy']})
two_heads.fit({'left': l, 'right': r, 'extra': e}, {'topic': t, 'flag': f}, epochs=3)
