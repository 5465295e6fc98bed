"""Normalization: batch norm's training curves and activation drift, batch/layer/group norm
at small batches, and the lecture's layer-norm table."""
import numpy as np

import fastnorm as fn

from ._common import ExperimentResult, evaluate, mlp, train
from ._data import image_data

__all__ = ["run_batchnorm", "run_small_batch", "run_layernorm_table"]


def _split(ctx, fractions=(0.6, 0.2, 0.2)):
    data = image_data()
    return data, fn.train_val_test_split(data.X, data.y, fractions, seed=ctx.rng("split"))


def run_batchnorm(ctx):
    quick = ctx.quick
    data, ((Xtr, ytr), _, (Xte, yte)) = _split(ctx, (0.8, 0.0, 0.2))
    if quick:
        Xtr, ytr = Xtr[:1000], ytr[:1000]
    width = 100
    epochs = 4 if quick else 25
    lrs = [0.1] if quick else [0.02, 0.1, 0.5]
    main_lr = 0.1
    batch = 60
    unit = 0
    sizes = [Xtr.shape[1], width, width, width, data.num_classes]
    steps_per_epoch = -(-Xtr.shape[0] // batch)
    bar = ctx.bar(len(lrs) * 2 * epochs * steps_per_epoch)
    rows, curves, drift = [], {}, {}
    for lr in lrs:
        for norm in (None, "batch"):
            # Sigmoid nets as in the batch-norm paper's MNIST experiment (3 hidden layers of 100).
            model = mlp(sizes, "sigmoid", norm=norm, init="glorot", seed=ctx.seed_for("init"))
            opt = fn.optim.SGD(model, lr=lr)
            layers = list(model)
            last_sigmoid = max(i for i, layer in enumerate(layers) if isinstance(layer, fn.Sigmoid))
            stats = []

            def forward(m, xb, layers=layers, last_sigmoid=last_sigmoid, stats=stats):
                # Layer by layer, to observe the input of the last sigmoid (the BN output when
                # there is one); Sequential.backward then runs on what each layer kept.
                h = xb
                for i, layer in enumerate(layers):
                    if i == last_sigmoid:
                        u = h[:, unit].astype(np.float64)
                        stats.append((u.mean(), u.std(), *np.percentile(u, [15, 50, 85])))
                    h = layer(h)
                return h

            test_acc = []
            train(model, opt, Xtr, ytr, epochs=epochs, batch_size=batch, rng=ctx.rng("order"), bar=bar,
                  forward=forward, on_epoch=lambda e, loss: test_acc.append(evaluate(model, Xte, yte)[1]))
            label = "batch norm" if norm else "no norm"
            curves[(lr, label)] = test_acc
            drift[(lr, label)] = np.array(stats)
            s = np.array(stats)
            first, last = s[:steps_per_epoch].mean(axis=0), s[-steps_per_epoch:].mean(axis=0)
            reach = next((i + 1 for i, a in enumerate(test_acc) if a >= 0.9), None)
            rows.append([lr, label, test_acc[0], test_acc[-1], reach if reach else f"not within {epochs}",
                         first[0], last[0], first[1], last[1]])
    bar.close()
    figures = []
    with ctx.figure("batchnorm", size=(11, 3.2), ncols=3) as (fig, axes):
        if fig is not None:
            ep = np.arange(1, epochs + 1)
            for lr in lrs:
                for label, style in (("no norm", "--"), ("batch norm", "-")):
                    axes[0].plot(ep, curves[(lr, label)], style, label=f"{label}, lr {lr:g}")
            axes[0].set_xlabel("epoch")
            axes[0].set_ylabel("test accuracy")
            axes[0].legend(fontsize=7)
            axes[0].set_title("training curves", fontsize=10)
            for ax, label in zip(axes[1:], ("no norm", "batch norm")):
                s = drift[(main_lr, label)]
                steps = np.arange(1, s.shape[0] + 1)
                keep = np.unique(np.geomspace(1, s.shape[0], 300).astype(int)) - 1  # log x axis
                s, steps = s[keep], steps[keep]
                ax.fill_between(steps, s[:, 2], s[:, 4], alpha=0.3, label="15th-85th percentile")
                ax.plot(steps, s[:, 3], lw=0.8, label="median")
                ax.set_xscale("log")
                ax.set_xlabel("training step")
                ax.set_title(f"input of one last-layer sigmoid, {label}", fontsize=9)
                ax.legend(fontsize=7)
            axes[1].set_ylabel("value over the minibatch")
            figures.append("batchnorm.png")
    main = {label: next(r for r in rows if r[0] == main_lr and r[1] == label) for label in ("no norm", "batch norm")}
    bn_faster = main["batch norm"][2] > main["no norm"][2] and main["batch norm"][3] >= main["no norm"][3]
    shift = {k: abs(v[6] - v[5]) / max(v[7], 1e-12) for k, v in main.items()}
    stable = shift["batch norm"] < shift["no norm"]
    held = bn_faster and stable
    verdict = (f"{'Yes' if held else 'Partly' if bn_faster or stable else 'No'}: at lr {main_lr:g} the net with "
               f"batch norm reached {main['batch norm'][2]:.1%} test accuracy after one epoch and "
               f"{main['batch norm'][3]:.1%} after {epochs}, against {main['no norm'][2]:.1%} and "
               f"{main['no norm'][3]:.1%} without; from the first epoch to the last, the observed unit's mean moved by "
               f"{shift['no norm']:.2f} times its first-epoch spread without batch norm and {shift['batch norm']:.2f} "
               "times with it.")
    return ExperimentResult(
        "batchnorm", "Batch norm trains faster and keeps hidden distributions steady",
        "With batch normalization a network trains faster at the same learning rate (and tolerates "
        "larger ones), because the distribution of each hidden unit's input stays steady instead of "
        "drifting as the earlier layers change (internal covariate shift).",
        f"{data.name}: {Xtr.shape[0]} training, {Xte.shape[0]} test images. MLP 784-100-100-100-10 with "
        "sigmoid activations (Glorot init), with and without `fastnorm.BatchNorm1d` between each Linear "
        f"and its sigmoid, the same initial weights; plain SGD (no momentum), batch {batch}, {epochs} "
        f"epochs, learning rates {', '.join(f'{lr:g}' for lr in lrs)}. For hidden unit {unit} of the last "
        "hidden layer, the input of its sigmoid (the batch-norm output when present) is recorded on every "
        "training minibatch: mean, spread (standard deviation) and 15/50/85th percentiles.",
        ["lr", "network", "test acc. epoch 1", "test acc. last epoch", "epochs to 90 %",
         "unit mean, epoch 1", "unit mean, last epoch", "unit std, epoch 1", "unit std, last epoch"],
        rows, verdict, True if held else (None if bn_faster or stable else False), figures=figures,
        notes=[data.note],
        data={"curves": {f"{k[0]}/{k[1]}": v for k, v in curves.items()},
              "unit_mean_shift": shift})


def run_small_batch(ctx):
    quick = ctx.quick
    data, ((Xtr, ytr), _, (Xte, yte)) = _split(ctx, (0.6, 0.2, 0.2))
    n_train = 600 if quick else 3000
    Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    batch_sizes = [2, 8, 64] if quick else [2, 4, 8, 16, 32, 64]
    norms = [None, "batch", "layer", "group"]
    width, groups = 128, 16
    epochs = 2 if quick else 8
    base_lr = 0.05
    total = len(norms) * sum(epochs * -(-n_train // b) for b in batch_sizes)
    bar = ctx.bar(total)
    acc = {}
    for norm in norms:
        for b in batch_sizes:
            model = mlp([Xtr.shape[1], width, width, data.num_classes], "relu", norm=norm, init="he",
                        groups=groups, seed=ctx.seed_for("init"))
            # Linear scaling rule (as in the group-norm paper): lr proportional to the batch size.
            opt = fn.optim.SGD(model, lr=base_lr * b / 32, momentum=0.9)
            try:
                train(model, opt, Xtr, ytr, epochs=epochs, batch_size=b, rng=ctx.rng("order", b), bar=bar)
                acc[(norm, b)] = evaluate(model, Xte, yte)[1]
            except FloatingPointError:
                acc[(norm, b)] = float("nan")
    bar.close()
    names = {None: "no norm", "batch": "batch norm", "layer": "layer norm", "group": f"group norm ({groups} groups)"}
    rows = [[names[n], *[acc[(n, b)] for b in batch_sizes],
             max(acc[(n, b)] for b in batch_sizes) - min(acc[(n, b)] for b in batch_sizes)] for n in norms]
    figures = []
    with ctx.figure("small_batch", size=(5.8, 3.4)) as (fig, ax):
        if fig is not None:
            for n in norms:
                ax.semilogx(batch_sizes, [100 * (1 - acc[(n, b)]) for b in batch_sizes], marker="o",
                            label=names[n], base=2)
            ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
            ax.set_xlabel("batch size")
            ax.set_ylabel("test error (%)")
            ax.legend(fontsize=8)
            figures.append("small_batch.png")
    spread = {n: r[-1] for n, r in zip(norms, rows)}
    bn_small, bn_big = acc[("batch", batch_sizes[0])], acc[("batch", batch_sizes[-1])]
    gn_small, gn_big = acc[("group", batch_sizes[0])], acc[("group", batch_sizes[-1])]
    bn_degrades = bn_big - bn_small > 0.02
    gn_steady = spread["group"] < spread["batch"] and gn_small > bn_small
    held = bn_degrades and gn_steady
    verdict = (f"{'Yes' if held else 'Partly' if bn_degrades or gn_steady else 'No'}: batch norm's test accuracy "
               f"went from {bn_big:.1%} at batch {batch_sizes[-1]} to {bn_small:.1%} at batch {batch_sizes[0]}; "
               f"group norm's from {gn_big:.1%} to {gn_small:.1%} (spread over batch sizes {spread['group']:.1%} "
               f"against {spread['batch']:.1%} for batch norm; layer norm {spread['layer']:.1%}).")
    return ExperimentResult(
        "small-batch", "Group norm stays consistent at small batches where batch norm degrades",
        "Batch norm's statistics are estimated from the minibatch, so with very small batches they are "
        "noisy and the running averages used at test time do not match training: accuracy degrades. "
        "Layer and group norm compute statistics per sample, so they do not depend on the batch size.",
        f"{data.name}: {n_train} training, {Xte.shape[0]} test images. MLP 784-{width}-{width}-10 with "
        "`BatchNorm1d`, `LayerNorm` or `GroupNorm(16, 128)` (or nothing) between each Linear and its ReLU; "
        f"SGD with momentum 0.9 and lr {base_lr:g}·B/32 (linear scaling rule), {epochs} epochs for every "
        "batch size B, the same initial weights. Test accuracy in evaluation mode (batch norm uses its "
        "running statistics).",
        ["normalization", *[f"B={b}" for b in batch_sizes], "max - min"],
        rows, verdict, True if held else (None if bn_degrades or gn_steady else False), figures=figures,
        notes=[data.note], data={"accuracy": {f"{names[n]}/B={b}": v for (n, b), v in acc.items()}})


_TABLE = [[1, 3, 6], [2, 2, 2], [0, 1, 5], [4, 6, 1], [5, 2, 3], [1, 0, 1]]


def run_layernorm_table(ctx):
    x = np.array(_TABLE, dtype=np.float64)
    mean, var = fn.moments(x, axis=1, ddof=1)
    std = np.sqrt(var)
    # A row of equal values has std 0: its normalized values are defined as 0 (x - mean = 0).
    safe = np.where(std > 0, std, 1.0)
    normalized = (x - mean[:, None]) / safe[:, None]
    layer = fn.LayerNorm(3, elementwise_affine=False, dtype=np.float64).eval()
    ln = layer(x)
    rows = [[f"{i + 1}", "  ".join(f"{v:g}" for v in row), m, s, *z, *lz]
            for i, (row, m, s, z, lz) in enumerate(zip(_TABLE, mean, std, normalized, ln))]
    figures = []
    with ctx.figure("layernorm_table", size=(7.5, 3.0), ncols=2) as (fig, axes):
        if fig is not None:
            for ax, m, title in ((axes[0], x, "layer outputs"), (axes[1], normalized, "normalized per row (sample std)")):
                im = ax.imshow(m, cmap="coolwarm", aspect="auto")
                for (i, j), v in np.ndenumerate(m):
                    ax.text(j, i, f"{v:.2f}" if m is normalized else f"{v:g}", ha="center", va="center", fontsize=8)
                ax.set_xticks(range(3), ["unit 1", "unit 2", "unit 3"])
                ax.set_yticks(range(6), [f"sample {i + 1}" for i in range(6)])
                ax.set_title(title, fontsize=10)
                fig.colorbar(im, ax=ax, shrink=0.8)
            figures.append("layernorm_table.png")
    row_means = normalized.mean(axis=1)
    row_stds = normalized.std(axis=1, ddof=1)
    nonconst = std > 0
    held = (np.allclose(row_means, 0, atol=1e-12) and np.allclose(row_stds[nonconst], 1, atol=1e-12)
            and np.all(normalized[~nonconst] == 0))
    ratio = float(np.max(np.abs(ln[nonconst] / normalized[nonconst])))
    verdict = (f"{'Yes' if held else 'No'}: every row now has mean 0 and sample standard deviation 1, and the "
               f"constant row [2, 2, 2] gives zeros; `fastnorm.LayerNorm` (biased variance plus eps, as PyTorch) "
               f"gives the same values times sqrt(3/2) = {np.sqrt(1.5):.4f} (measured up to {ratio:.4f}).")
    return ExperimentResult(
        "layernorm-table", "Layer norm normalizes each sample (row) on its own",
        "Layer normalization computes a mean and standard deviation per sample over its units, so each row "
        "of the lecture's 6x3 table of layer outputs is normalized independently; a row whose values are "
        "all equal becomes all zeros.",
        "The lecture's table (6 samples x 3 units). Per-row mean and sample standard deviation with "
        "`fastnorm.moments(x, axis=1, ddof=1)`, then (x - mean) / std (0 where std is 0); for comparison "
        "`fastnorm.LayerNorm(3, elementwise_affine=False)` in float64, which divides by the biased "
        "standard deviation sqrt(var + 1e-5).",
        ["row", "values", "mean", "sample std", "z₁", "z₂", "z₃", "LayerNorm₁", "LayerNorm₂", "LayerNorm₃"],
        rows, verdict, bool(held), figures=figures,
        data={"mean": mean, "std": std, "normalized": normalized, "layer_norm": ln})
