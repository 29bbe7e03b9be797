# Two stacked LSTMs over a float sequence, binary classification.
# Covers: float 3-D input, LSTM with non-default activations, LSTM without
# bias, binary accuracy, centered RMSprop with momentum.
from keras.layers import Input, LSTM, Dense
from keras.models import Model
from keras.optimizers import RMSprop

steps, features = 7, 3

seq = Input(shape=(steps, features), name='seq')
h = LSTM(16, activation='relu', recurrent_activation='tanh', return_sequences=True)(seq)
h = LSTM(8, use_bias=False, unit_forget_bias=False)(h)
out = Dense(1, activation='sigmoid', name='label')(h)

stacked = Model(inputs=seq, outputs=out)
stacked.compile(optimizer=RMSprop(learning_rate=0.01, momentum=0.5, centered=True),
                loss='binary_crossentropy', metrics=['accuracy'])
stacked.fit(x_train, y_train, validation_split=0.2)
