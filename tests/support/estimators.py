"""A team's own estimator, as an ML engineer would bring one: scikit-learn-compatible, with no ONNX
converter anywhere (so Shepherd must serve the pipeline itself, and say so)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression


class ShrunkLogisticClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression whose probabilities are pulled towards the training base rate by `shrink`."""

    def __init__(self, shrink: float = 0.1, C: float = 1.0, max_iter: int = 2000):
        self.shrink = shrink
        self.C = C
        self.max_iter = max_iter

    def fit(self, X, y):
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(X, y)
        self.classes_ = self.model_.classes_
        self.base_rate_ = float(np.mean(np.asarray(y) == self.classes_[1]))
        return self

    def predict_proba(self, X):
        positive = (1 - self.shrink) * self.model_.predict_proba(X)[:, 1] + self.shrink * self.base_rate_
        return np.column_stack([1 - positive, positive])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]
