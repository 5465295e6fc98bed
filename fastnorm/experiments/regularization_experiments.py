"""Regularization: dropout rate, dropout versus data size, L2/L1 weight decay, early stopping."""
import numpy as np

import fastnorm as fn

from ._common import ExperimentResult, evaluate, mlp, predict, train
from ._data import image_data, two_moons

__all__ = ["run_dropout_rate", "run_dropout_data", "run_weight_decay", "run_early_stopping"]


def _mnist_split(ctx, fractions):
    data = image_data()
    parts = fn.train_val_test_split(data.X, data.y, fractions, seed=ctx.rng("split"))
    return data, parts


def run_dropout_rate(ctx):
    quick = ctx.quick
    data, ((Xtr, ytr), _, (Xte, yte)) = _mnist_split(ctx, (0.8, 0.0, 0.2))
    if quick:
        Xtr, ytr = Xtr[:1000], ytr[:1000]
    width = 64 if quick else 256
    epochs = 10 if quick else 40
    retain = [0.2, 0.5, 1.0] if quick else [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    batch, lr = 64, 0.02
    sizes = [Xtr.shape[1], width, width, width, data.num_classes]
    bar = ctx.bar(len(retain) * epochs * -(-Xtr.shape[0] // batch))
    rows, test_err, train_err = [], [], []
    for p in retain:
        model = mlp(sizes, "relu", dropout=1.0 - p, init="he", seed=ctx.seed_for("init"))
        opt = fn.optim.SGD(model, lr=lr, momentum=0.9)
        train(model, opt, Xtr, ytr, epochs=epochs, batch_size=batch, rng=ctx.rng("order"), bar=bar)
        tr_loss, tr_acc = evaluate(model, Xtr, ytr)
        te_loss, te_acc = evaluate(model, Xte, yte)
        test_err.append(1 - te_acc)
        train_err.append(1 - tr_acc)
        rows.append([p, 1 - p, 1 - tr_acc, 1 - te_acc, te_loss])
    bar.close()
    figures = []
    with ctx.figure("dropout_rate", size=(5.5, 3.4)) as (fig, ax):
        if fig is not None:
            ax.plot(retain, np.array(test_err) * 100, marker="o", label="test error")
            ax.plot(retain, np.array(train_err) * 100, marker="s", label="training error")
            ax.set_xlabel("retention probability p (1 = no dropout)")
            ax.set_ylabel("error (%)")
            ax.legend(fontsize=8)
            ax.set_title(f"784-{width}-{width}-{width}-10, {epochs} epochs", fontsize=10)
            figures.append("dropout_rate.png")
    best = int(np.argmin(test_err))
    no_dropout = test_err[retain.index(1.0)]
    lowest = test_err[retain.index(min(retain))]
    middle = [e for p, e in zip(retain, test_err) if 0.4 <= p <= 0.8]
    beats_none = min(test_err) < no_dropout
    low_worse = lowest > min(test_err)
    held = beats_none and low_worse and 0.4 <= retain[best] <= 0.9
    verdict = (f"{'Yes' if held else 'Partly' if beats_none or low_worse else 'No'}: the lowest test error, "
               f"{test_err[best]:.1%}, was at p = {retain[best]:g}, against {no_dropout:.1%} without dropout "
               f"(p = 1) and {lowest:.1%} at p = {min(retain):g}"
               + (f"; for 0.4 <= p <= 0.8 it stayed between {min(middle):.1%} and {max(middle):.1%}." if middle
                  else "."))
    return ExperimentResult(
        "dropout-rate", "Test error versus the retention probability p",
        "Dropout helps over a broad range of retention probabilities (about 0.4-0.8 for hidden units, "
        "0.5 being the usual choice); very low p underfits, and p = 1 (no dropout) overfits.",
        f"{data.name}: {Xtr.shape[0]} training and {Xte.shape[0]} test images. MLP 784-{width}-{width}-"
        f"{width}-10 (ReLU, He init) with `fastnorm.Dropout(1 - p)` after every hidden layer (inputs not "
        f"dropped), the same initial weights for every p; SGD lr {lr}, momentum 0.9, batch {batch}, "
        f"{epochs} epochs. Errors measured in evaluation mode (dropout off).",
        ["retention p", "drop probability", "training error", "test error", "test loss"],
        rows, verdict, True if held else (None if beats_none or low_worse else False), figures=figures,
        notes=[data.note], data={"retain": retain, "test_error": test_err, "train_error": train_err})


def run_dropout_data(ctx):
    quick = ctx.quick
    data, ((Xtr, ytr), _, (Xte, yte)) = _mnist_split(ctx, (0.8, 0.0, 0.2))
    sizes_n = [100, 500] if quick else [100, 250, 500, 1000, 2000, Xtr.shape[0]]
    sizes_n = [n for n in sizes_n if n <= Xtr.shape[0]]
    width = 64 if quick else 256
    steps = 150 if quick else 2000
    batch, lr = 64, 0.02
    order = ctx.rng("subsets").permutation(Xtr.shape[0])
    bar = ctx.bar(len(sizes_n) * 2 * steps)
    rows, err = [], {0.0: [], 0.5: []}
    for n in sizes_n:
        idx = order[:n]  # nested subsets: each larger set contains the smaller ones
        row = [n]
        for p_drop in (0.0, 0.5):
            model = mlp([Xtr.shape[1], width, width, width, data.num_classes], "relu", dropout=p_drop,
                        init="he", seed=ctx.seed_for("init"))
            opt = fn.optim.SGD(model, lr=lr, momentum=0.9)
            epochs = -(-steps * batch // n) + 1
            train(model, opt, Xtr[idx], ytr[idx], epochs=epochs, batch_size=batch, rng=ctx.rng("order", n),
                  bar=bar, max_steps=steps)
            e = 1 - evaluate(model, Xte, yte)[1]
            err[p_drop].append(e)
            row.append(e)
        row.append(row[1] - row[2])
        rows.append(row)
    bar.close()
    figures = []
    with ctx.figure("dropout_data", size=(5.5, 3.4)) as (fig, ax):
        if fig is not None:
            ax.semilogx(sizes_n, np.array(err[0.0]) * 100, marker="o", label="no dropout")
            ax.semilogx(sizes_n, np.array(err[0.5]) * 100, marker="s", label="dropout p = 0.5")
            ax.set_xlabel("training images")
            ax.set_ylabel("test error (%)")
            ax.legend(fontsize=8)
            figures.append("dropout_data.png")
    gains = [r[3] for r in rows]
    small_gain, best_gain = gains[0], max(gains)
    best_n = sizes_n[int(np.argmax(gains))]
    held = small_gain < best_gain and best_gain > 0 and best_n != sizes_n[0]
    verdict = (f"{'Yes' if held else 'No'}: dropout changed the test error by {-small_gain:+.1%} at "
               f"{sizes_n[0]} images and by {-gains[-1]:+.1%} at {sizes_n[-1]}; "
               + (f"its largest gain, {best_gain:.1%}, was at {best_n} images." if best_gain > 0 else
                  f"it never lowered the test error within {steps} steps."))
    return ExperimentResult(
        "dropout-data", "Dropout's benefit depends on the amount of data",
        "With very little data dropout does not help (the net can still memorize the noise, or dropout "
        "only adds noise); its gain appears with more data and shrinks again when data is plentiful.",
        f"{data.name}: nested random training subsets of {', '.join(map(str, sizes_n))} images, one fixed "
        f"test set of {Xte.shape[0]}. MLP 784-{width}-{width}-{width}-10 (ReLU, He init) with and without "
        f"`fastnorm.Dropout(0.5)` after each hidden layer, the same {steps} SGD steps (lr {lr}, momentum "
        f"0.9, batch {batch}) for every size.",
        ["training images", "test error, no dropout", "test error, dropout 0.5", "gain from dropout"],
        rows, verdict, held, figures=figures, notes=[data.note],
        data={"sizes": sizes_n, "error_plain": err[0.0], "error_dropout": err[0.5]})


def _weight_groups(model, **options):
    """Parameter groups: the options on Linear weights only, biases unregularized."""
    weights = [layer.weight for layer in model if isinstance(layer, fn.Linear)]
    biases = [layer.bias for layer in model if isinstance(layer, fn.Linear)]
    return [{"params": weights, **options}, {"params": biases}]


def run_weight_decay(ctx):
    quick = ctx.quick
    Xtr, ytr = two_moons(100, 0.35, ctx.rng("train"))
    Xte, yte = two_moons(2000, 0.35, ctx.rng("test"))
    width = 64 if quick else 128
    steps = 600 if quick else 4000
    lambdas = [0.0, 0.01, 0.1, 1.0]
    sparsity_lambdas = [1e-3, 1e-2] if quick else [1e-3, 3e-3, 1e-2]
    batch, lr = 20, 0.05
    bar = ctx.bar((len(lambdas) + 2 * len(sparsity_lambdas)) * steps)

    def fit_one(**options):
        model = mlp([2, width, width, 2], "relu", init="he", seed=ctx.seed_for("init"))
        opt = fn.optim.SGD(_weight_groups(model, **options), lr=lr, momentum=0.9)
        train(model, opt, Xtr, ytr, epochs=steps, batch_size=batch, rng=ctx.rng("order"), bar=bar,
              max_steps=steps)
        return model

    grid = np.linspace(-3, 3, 121, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    rows, surfaces = [], {}
    for lam in lambdas:
        model = fit_one(weight_decay=lam)
        w = np.concatenate([layer.weight.data.ravel() for layer in model if isinstance(layer, fn.Linear)])
        out = predict(model, points)
        prob = np.exp(out - out.max(axis=1, keepdims=True))
        surfaces[lam] = (prob[:, 1] / prob.sum(axis=1)).reshape(gx.shape)
        rows.append([lam, evaluate(model, Xtr, ytr)[1], evaluate(model, Xte, yte)[1], float(np.linalg.norm(w)),
                     float(np.abs(w).max())])
    sparse_rows, weights = [], {}
    threshold = 1e-3
    for lam in sparsity_lambdas:
        for kind in ("L2", "L1"):
            model = fit_one(**({"weight_decay": lam} if kind == "L2" else {"l1": lam}))
            w = np.concatenate([layer.weight.data.ravel() for layer in model if isinstance(layer, fn.Linear)])
            weights[(kind, lam)] = w
            sparse_rows.append([kind, lam, float(np.mean(np.abs(w) < threshold)),
                                float(np.mean(np.abs(w) < 1e-2)), float(np.median(np.abs(w))),
                                evaluate(model, Xte, yte)[1]])
    bar.close()
    figures = []
    with ctx.figure("weight_decay", size=(11, 3.0), ncols=len(lambdas)) as (fig, axes):
        if fig is not None:
            for ax, lam in zip(axes, lambdas):
                ax.contourf(gx, gy, surfaces[lam], levels=[0, 0.5, 1], colors=["#9ecae1", "#fdae6b"], alpha=0.6)
                ax.contour(gx, gy, surfaces[lam], levels=[0.5], colors="k", linewidths=1)
                ax.scatter(Xtr[:, 0], Xtr[:, 1], c=np.where(ytr == 1, "#e6550d", "#3182bd"), s=8)
                ax.set_title(f"L2 λ = {lam:g}" + (" (none)" if lam == 0 else ""), fontsize=10)
                ax.set_xticks([])
                ax.set_yticks([])
            figures.append("weight_decay.png")
    with ctx.figure("weight_decay_l1_l2", size=(5.5, 3.2)) as (fig, ax):
        if fig is not None:
            lam = sparsity_lambdas[-1]
            bins = np.logspace(-7, 1, 41)
            for kind in ("L2", "L1"):
                ax.hist(np.abs(weights[(kind, lam)]) + 1e-7, bins=bins, histtype="step", label=f"{kind}, λ = {lam:g}")
            ax.set_xscale("log")
            ax.set_xlabel("|w| (+1e-7)")
            ax.set_ylabel("weights")
            ax.axvline(threshold, color="k", lw=0.8, ls="--")
            ax.legend(fontsize=8)
            figures.append("weight_decay_l1_l2.png")
    norms = [r[3] for r in rows]
    shrinks = all(a >= b for a, b in zip(norms, norms[1:]))
    gap = [r[1] - r[2] for r in rows]
    sparser = all(l1[2] > l2[2] for l2, l1 in zip(sparse_rows[::2], sparse_rows[1::2]))
    held = shrinks and sparser
    l1_frac = max(r[2] for r in sparse_rows if r[0] == "L1")
    l2_frac = max(r[2] for r in sparse_rows if r[0] == "L2")
    verdict = (f"{'Yes' if held else 'Partly' if shrinks or sparser else 'No'}: the weight norm went "
               f"{' -> '.join(f'{n:.1f}' for n in norms)} as λ grew 0 -> 1, the train-test accuracy gap "
               f"{' -> '.join(f'{g:+.1%}' for g in gap)} and the boundary smoothed; at λ = 1 "
               + ("the weights collapsed and the net underfit (test accuracy "
                  f"{rows[-1][2]:.0%}); " if rows[-1][2] < max(r[2] for r in rows) - 0.02 else "it still fit; ")
               + f"L1 left up to {l1_frac:.0%} of the weights below {threshold:g} against {l2_frac:.0%} for L2.")
    tables = [(f"L1 versus L2 at equal strength (weights only, {steps} SGD steps): fraction of near-zero weights.",
               ["penalty", "λ", f"|w| < {threshold:g}", "|w| < 0.01", "median |w|", "test accuracy"], sparse_rows)]
    return ExperimentResult(
        "weight-decay", "L2 weight decay smooths the decision boundary; L1 makes weights sparse",
        "Weight decay (an L2 penalty λ/2·||w||²) shrinks the weights and smooths the decision boundary, "
        "trading training fit for generalization, and a very large λ underfits; an L1 penalty λ·||w||₁ "
        "drives many weights to (near) zero where L2 only makes them small.",
        f"Two interleaving half-moons in 2-D (noise 0.35, seeded): 100 training points, 2,000 test points. "
        f"MLP 2-{width}-{width}-2 (ReLU, He init), the same initial weights for every run; SGD lr {lr}, "
        f"momentum 0.9, batch {batch}, {steps} steps, penalty on the Linear weights only "
        "(`optim.SGD` parameter groups with `weight_decay=λ` or `l1=λ`; biases unpenalized).",
        ["L2 λ", "training accuracy", "test accuracy", "||w||₂", "max |w|"],
        rows, verdict, True if held else (None if shrinks or sparser else False), figures=figures,
        tables=tables, data={"lambdas": lambdas, "norms": norms, "sparsity": sparse_rows})


def run_early_stopping(ctx):
    quick = ctx.quick
    data, ((Xtr, ytr), (Xva, yva), (Xte, yte)) = _mnist_split(ctx, (0.6, 0.2, 0.2))
    Xtr, ytr = Xtr[:500 if quick else 1000], ytr[:500 if quick else 1000]
    width = 128 if quick else 512
    epochs = 15 if quick else 100
    patience = 3 if quick else 10
    batch, lr = 32, 1e-3
    model = mlp([Xtr.shape[1], width, width, data.num_classes], "relu", init="he", seed=ctx.seed_for("init"))
    opt = fn.optim.Adam(model, lr=lr)
    stopper = fn.EarlyStopping(patience=patience)
    history = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    state = {"stopped_at": None, "best_state": None, "stop_model_accuracy": None}
    bar = ctx.bar(epochs * -(-Xtr.shape[0] // batch))

    def on_epoch(epoch, mean_loss):
        train_loss, _ = evaluate(model, Xtr, ytr)
        val_loss, val_acc = evaluate(model, Xva, yva)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_acc)
        if state["stopped_at"] is None and stopper.step(val_loss, model):
            # Where training would have stopped; keep going to see what stopping saved.
            state["stopped_at"] = epoch + 1
            state["stop_model_accuracy"] = evaluate(model, Xte, yte)[1]
        return False

    train(model, opt, Xtr, ytr, epochs=epochs, batch_size=batch, rng=ctx.rng("order"), bar=bar,
          on_epoch=on_epoch)
    bar.close()
    last_loss, last_acc = evaluate(model, Xte, yte)
    stopper.restore(model)
    best_loss, best_acc = evaluate(model, Xte, yte)
    best_epoch = stopper.best_step + 1
    stopped = state["stopped_at"]
    rows = [["best validation loss (restored)", best_epoch, history["val_loss"][best_epoch - 1], best_loss, best_acc],
            ["when early stopping stopped", stopped if stopped else "never",
             history["val_loss"][stopped - 1] if stopped else float("nan"),
             float("nan"), state["stop_model_accuracy"] if stopped else float("nan")],
            ["last epoch", epochs, history["val_loss"][-1], last_loss, last_acc]]
    figures = []
    with ctx.figure("early_stopping", size=(6, 3.4)) as (fig, ax):
        if fig is not None:
            ep = np.arange(1, len(history["train_loss"]) + 1)
            ax.semilogy(ep, history["train_loss"], label="training loss")
            ax.semilogy(ep, history["val_loss"], label="validation loss")
            ax.axvline(best_epoch, color="g", ls="--", lw=0.8, label=f"best (epoch {best_epoch})")
            if stopped:
                ax.axvline(stopped, color="r", ls=":", lw=0.8, label=f"stopped (epoch {stopped})")
            ax.set_xlabel("epoch")
            ax.set_ylabel("cross-entropy")
            ax.legend(fontsize=8)
            figures.append("early_stopping.png")
    overfit = history["val_loss"][-1] > min(history["val_loss"]) * 1.1
    better = best_acc >= last_acc and best_loss < last_loss
    held = overfit and stopped is not None and better
    verdict = (f"{'Yes' if held else 'Partly' if overfit else 'No'}: the validation loss bottomed out at epoch "
               f"{best_epoch} ({min(history['val_loss']):.3f}) and reached {history['val_loss'][-1]:.3f} by epoch "
               f"{epochs} while the training loss kept falling to {history['train_loss'][-1]:.2g}; early stopping "
               f"(patience {patience}) {'stopped at epoch ' + str(stopped) if stopped else 'never triggered'}, and "
               f"the restored best state scored test loss {best_loss:.3f} and accuracy {best_acc:.1%} against "
               f"{last_loss:.3f} and {last_acc:.1%} at the last epoch"
               + (" (the same accuracy: stopping saved the training time and the calibration of the "
                  "predictions, not correct answers)" if best_acc == last_acc else "")
               + (" (accuracy kept improving even though the loss rose: the net grew over-confident on the "
                  "examples it gets wrong)" if best_acc < last_acc else "") + ".")
    return ExperimentResult(
        "early-stopping", "Early stopping on the validation loss",
        "Training loss keeps falling while validation loss turns up once the net starts to overfit; "
        "stopping there (and restoring the best weights) gives a better test result than training on.",
        f"{data.name} split with `fastnorm.train_val_test_split` (60/20/20); {Xtr.shape[0]} training images "
        f"(a subset, to overfit), {Xva.shape[0]} validation, {Xte.shape[0]} test. MLP 784-{width}-{width}-10 "
        f"(ReLU, He init, no regularization), Adam lr {lr}, batch {batch}, {epochs} epochs. "
        f"`fastnorm.EarlyStopping(patience={patience})` on the validation loss; training continues past the "
        "stop so the last epoch can be compared; `restore()` loads the best state.",
        ["model", "epoch", "validation loss", "test loss", "test accuracy"],
        rows, verdict, True if held else (None if overfit else False), figures=figures, notes=[data.note],
        data={"history": history, "best_epoch": best_epoch, "stopped_at": stopped, "best_accuracy": best_acc,
              "last_accuracy": last_acc})
