# A shared encoder (an unnamed inner Model) feeding two heads: two outputs.
# Covers: unnamed models (`functional`, `functional_1`), auto-named Dense
# layers inside and outside the nested model, list losses and loss_weights,
# a metrics dict, Adam with a learning rate.
from keras.layers import Input, Dense
from keras.models import Model
from keras.optimizers import Adam

features = Input(shape=(6,))
h = Dense(5, activation='relu')(features)
h = Dense(4, activation='tanh')(h)
encoder = Model(inputs=features, outputs=h)

x = Input(shape=(6,))
code = encoder(x)
label = Dense(3, activation='softmax', name='label')(code)
score = Dense(1)(code)

heads = Model(inputs=x, outputs=[label, score])
heads.compile(optimizer=Adam(learning_rate=0.01),
              loss=['categorical_crossentropy', 'mean_squared_error'],
              loss_weights=[1.0, 0.5],
              metrics={'label': 'accuracy'})
