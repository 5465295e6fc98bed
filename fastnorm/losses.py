"""Loss functions returning ``(loss, grad)``: the value and its gradient with respect
to the prediction, ready for ``model.backward(grad)``."""
import numpy as np

from ._arrays import as_float_array

__all__ = ["softmax_cross_entropy", "mse_loss", "accuracy"]

_REDUCTIONS = ("mean", "sum")


def _reduction(func, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{func}: reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


def _labels(func, labels, n, c):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{func}: labels must be integer class indices (or float class probabilities "
                        f"of the logits' shape), got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{func}: labels must have shape ({n},) (one class index per row of logits), "
                         f"got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"{func}: labels must lie in [0, {c}) (the number of classes), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return labels


def softmax_cross_entropy(logits, labels, *, reduction="mean"):
    """Cross-entropy of ``softmax(logits)`` against the labels: ``(loss, grad_logits)``.

    logits: (N, C) float array.  labels: (N,) integer class indices, or (N, C) float
    class probabilities (soft targets, rows summing to 1).  loss is a Python float:
    the mean over the N rows (reduction='mean', as ``torch.nn.functional.cross_entropy``)
    or their sum.  grad_logits = (softmax(logits) - onehot(labels)) / N (without the
    / N for 'sum'), in the logits' dtype.  Computed through log-sum-exp with the row
    maximum subtracted, so large logits neither overflow nor lose the loss.
    """
    func = "softmax_cross_entropy"
    reduction = _reduction(func, reduction)
    z = as_float_array(func, "logits", logits)
    if z.ndim != 2:
        raise ValueError(f"{func}: logits must have shape (N, C), got {z.shape}")
    n, c = z.shape
    if c == 0:
        raise ValueError(f"{func}: logits must have at least one class, got shape {z.shape}")
    work = z.astype(np.float64)
    shifted = work - work.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_prob = shifted - log_sum
    prob = np.exp(log_prob)
    target = np.asarray(labels) if not isinstance(labels, np.ndarray) else labels
    if target.dtype.kind == "f":
        if target.shape != z.shape:
            raise ValueError(f"{func}: class-probability labels must have the logits' shape {z.shape}, "
                             f"got {target.shape}")
        target = target.astype(np.float64)
        per_row = -(target * log_prob).sum(axis=1)
        # d/dz of -sum_j t_j log softmax(z)_j; equals prob - t when the row sums to 1.
        grad = prob * target.sum(axis=1, keepdims=True) - target
    else:
        idx = _labels(func, target, n, c)
        rows = np.arange(n)
        per_row = -log_prob[rows, idx]
        grad = prob
        grad[rows, idx] -= 1.0
    if reduction == "mean":
        loss = float(per_row.mean()) if n else float("nan")
        if n:
            grad /= n
    else:
        loss = float(per_row.sum())
    return loss, grad.astype(z.dtype, copy=False)


def mse_loss(prediction, target, *, reduction="mean"):
    """Mean squared error ``mean((prediction - target)**2)``: ``(loss, grad_prediction)``.

    prediction and target: float arrays of one shape.  loss is a Python float (mean
    over all elements, or the sum with reduction='sum', as ``torch.nn.MSELoss``);
    grad = 2 (prediction - target) / size (without / size for 'sum'), in the
    prediction's dtype.
    """
    func = "mse_loss"
    reduction = _reduction(func, reduction)
    p = as_float_array(func, "prediction", prediction)
    t = as_float_array(func, "target", target)
    if p.shape != t.shape:
        raise ValueError(f"{func}: target must have the shape of prediction {p.shape}, got {t.shape}")
    diff = p.astype(np.float64) - t.astype(np.float64)
    total = float(np.square(diff).sum())
    scale = 1.0 / diff.size if reduction == "mean" and diff.size else 1.0
    loss = total * scale if diff.size or reduction == "sum" else float("nan")
    return loss, (2.0 * scale * diff).astype(p.dtype, copy=False)


def accuracy(logits, labels):
    """Fraction of rows whose largest logit is at the label: a float in [0, 1]."""
    z = as_float_array("accuracy", "logits", logits)
    if z.ndim != 2:
        raise ValueError(f"accuracy: logits must have shape (N, C), got {z.shape}")
    labels = _labels("accuracy", labels, z.shape[0], z.shape[1])
    if not labels.size:
        return float("nan")
    return float(np.mean(z.argmax(axis=1) == labels))
