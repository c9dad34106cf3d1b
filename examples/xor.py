"""Learn XOR with a 2-8-1 tanh network, in RAM: the smallest complete oocnet program."""

import numpy as np

import oocnet as oc

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
y = np.array([[-1], [1], [1], [-1]], dtype=float)

model = oc.Sequential([oc.Dense(2, 8, activation="tanh"), oc.Dense(8, 1, activation="tanh")], seed=1, dtype="float64")
loss, opt = oc.HalfSquaredError(), oc.SGD(lr=0.1)
for step in range(2000):
    L = model.train_step(X, y, loss, opt)
    if step % 500 == 0:
        print(f"step {step:4d}  loss {L:.6f}")
print("final loss", model.evaluate(X, y, loss))
print("predictions", model.predict(X).ravel().round(3))
