# Regression from two float inputs. Covers: `from keras import layers`,
# concatenate of two inputs, Dense without bias, the Activation layer,
# linear/tanh/sigmoid activations, mean_squared_error, SGD with Nesterov momentum.
from keras import layers, optimizers
from keras.models import Model

width = 2 * 8

a = layers.Input(shape=(6,))
b = layers.Input(shape=(3,))
x = layers.concatenate([a, b])
x = layers.Dense(width, use_bias=False)(x)
x = layers.Activation('tanh')(x)
x = layers.Dense(width // 2, activation='sigmoid')(x)
y = layers.Dense(2)(x)

regressor = Model([a, b], y)
regressor.compile(optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True), 'mse')
regressor.fit([features_a, features_b], targets, epochs=20, batch_size=8, shuffle=False)
