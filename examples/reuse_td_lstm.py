# A per-frame model wrapped in TimeDistributed, followed by an LSTM: the
# seed document's video idea, small. Covers: TimeDistributed(Model) on an
# unnamed inner model, its output feeding an LSTM, categorical accuracy.
from keras.layers import Input, Dense, LSTM, TimeDistributed
from keras.models import Model

frame = Input(shape=(5,))
f = Dense(4, activation='relu')(frame)
f = Dense(3, activation='sigmoid')(f)
frame_model = Model(inputs=frame, outputs=f)

clip = Input(shape=(3, 5))
per_frame = TimeDistributed(frame_model)(clip)
summary = LSTM(4)(per_frame)
label = Dense(2, activation='softmax')(summary)

clip_model = Model(inputs=clip, outputs=label)
clip_model.compile('adam', 'categorical_crossentropy', metrics=['accuracy'])
