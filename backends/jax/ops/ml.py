"""Forward rules: the ai.onnx.ml domain (what scikit-learn exports through skl2onnx).

Linear models, scalers and tree ensembles are vectorised JAX over traced features; the
LabelEncoder maps static keys (often strings, which never reach JAX) with NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from projc.backends.jax.ops._registry import register

ML = "ai.onnx.ml"
INT64 = np.int64

_POST = {  # post_transform -> function of the scores (batch, classes)
    "NONE": lambda s: s,
    "LOGISTIC": jax.nn.sigmoid,
    "SOFTMAX": lambda s: jax.nn.softmax(s, axis=-1),
}


def _post(ctx, scores):
    return _POST[ctx.attr("post_transform", "NONE")](scores)


# --- elementwise and linear --------------------------------------------------------------


@register("Binarizer", since=1, domain=ML)
def _binarizer(ctx, x):
    return (x > ctx.attr("threshold", 0.0)).astype(x.dtype)


@register("Scaler", since=1, domain=ML)
def _scaler(ctx, x):
    offset = np.asarray(ctx.attr("offset", [0.0]), np.float32)
    scale = np.asarray(ctx.attr("scale", [1.0]), np.float32)
    return ((x - offset) * scale).astype(np.float32)  # the spec fixes the output type


_NORMS = {
    "MAX": lambda x: jnp.max(jnp.abs(x), axis=1, keepdims=True),
    "L1": lambda x: jnp.sum(jnp.abs(x), axis=1, keepdims=True),
    "L2": lambda x: jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True)),
}


@register("Normalizer", since=1, domain=ML)
def _normalizer(ctx, x):
    x = jnp.asarray(x).astype(np.float32)
    return x / jnp.maximum(_NORMS[ctx.attr("norm", "MAX")](x), 1e-30)


def _affine(ctx, x, rows: int):
    """x @ coefficients.T + intercepts, with the coefficients stored row-major (rows, F)."""
    x = jnp.asarray(x).astype(np.float64 if x.dtype == np.float64 else np.float32)
    coef = np.asarray(ctx.attr("coefficients"), x.dtype).reshape(rows, -1)
    intercepts = np.asarray(ctx.attr("intercepts", [0.0] * rows), x.dtype)
    return x @ coef.T + intercepts


@register("LinearRegressor", since=1, domain=ML)
def _linear_regressor(ctx, x):
    return _post(ctx, _affine(ctx, x, ctx.attr("targets", 1)))


def _class_labels(ctx) -> np.ndarray:
    ints, strings = ctx.attr("classlabels_ints"), ctx.attr("classlabels_strings")
    if ints is None and strings is not None:
        raise NotImplementedError("string class labels (JAX arrays cannot hold strings)")
    return np.asarray(ints, INT64)


@register("LinearClassifier", since=1, domain=ML)
def _linear_classifier(ctx, x):
    labels = _class_labels(ctx)
    rows = len(ctx.attr("coefficients")) // x.shape[1]
    scores = _affine(ctx, x, rows)
    if rows == 1 and len(labels) == 2:  # binary: one score, reported for both classes
        scores = jnp.concatenate([-scores, scores], axis=1)
    scores = _post(ctx, scores)
    return jnp.asarray(labels)[jnp.argmax(scores, axis=1)], scores


@register("ArrayFeatureExtractor", since=1, domain=ML)
def _array_feature_extractor(ctx, x, indices):
    idx = jnp.ravel(jnp.asarray(indices))
    out = jnp.take(x, idx, axis=-1)
    return jnp.reshape(out, (1, -1)) if x.ndim == 1 else out


@register("Imputer", since=1, domain=ML)
def _imputer(ctx, x):
    floats = ctx.attr("imputed_value_floats")
    values = np.asarray(floats if floats else ctx.attr("imputed_value_int64s"), x.dtype)
    key, default = ("replaced_value_float", 0.0) if floats else ("replaced_value_int64", 0)
    missing = ctx.attr(key, default)
    hit = jnp.isnan(x) if np.isnan(missing) else x == missing
    return jnp.where(hit, values, x)  # one value broadcasts over every column


def _columns(a, width: int):
    """A FeatureVectorizer input as (batch, width): cut, or padded with zeros."""
    a = jnp.reshape(a, (a.shape[0], -1))
    return jnp.pad(a[:, :width], ((0, 0), (0, max(width - a.shape[1], 0))))


@register("FeatureVectorizer", since=1, domain=ML)
def _feature_vectorizer(ctx, *xs):
    xs = [_columns(jnp.asarray(x).astype(np.float32), w)
          for x, w in zip(xs, ctx.attr("inputdimensions"))]
    return jnp.concatenate(xs, axis=1)


# --- LabelEncoder ------------------------------------------------------------------------


def _label_table(ctx):
    """(keys, values, default) from whichever typed attributes the node carries."""
    attrs = ctx.attrs
    pick = lambda kind: next(  # noqa: E731
        (attrs[f"{kind}_{t}"] for t in ("tensor", "strings", "int64s", "floats")
         if f"{kind}_{t}" in attrs), None)
    keys, values = np.asarray(pick("keys")), np.asarray(pick("values"))
    if "values_tensor" in attrs:
        default = attrs.get("default_tensor", np.zeros(1, values.dtype)).reshape(-1)[0]
    elif "values_strings" in attrs:
        default = attrs.get("default_string", "_Unused")
    elif "values_int64s" in attrs:
        default = attrs.get("default_int64", -1)
    else:
        default = attrs.get("default_float", -0.0)
    return keys, values, default


def _decode(a: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else v for v in a.reshape(-1)],
                    dtype=object).reshape(a.shape) if a.dtype.kind in "OSU" else a


@register("LabelEncoder", since=1, domain=ML)
def _label_encoder(ctx, x):
    keys, values, default = _label_table(ctx)
    dtype = ctx.output_dtype(0) or values.dtype
    if isinstance(x, Tracer):  # numeric keys: compare against every key at once
        hit = x[..., None] == keys
        picked = jnp.sum(jnp.where(hit, values, 0), axis=-1).astype(dtype)
        return jnp.where(jnp.any(hit, axis=-1), picked, jnp.asarray(default, dtype))
    table = dict(zip(_decode(keys).tolist(), _decode(values).tolist()))
    data = _decode(np.asarray(x))
    return np.asarray([table.get(v, default) for v in data.reshape(-1).tolist()],
                      dtype=dtype).reshape(data.shape)


@register("OneHotEncoder", since=1, domain=ML)
def _one_hot_encoder(ctx, x):
    """One float column per category; a value outside the categories gives all zeros."""
    ints = ctx.attr("cats_int64s")
    if ints is not None:
        return (jnp.asarray(x)[..., None] == np.asarray(ints, INT64)).astype(np.float32)
    cats = _decode(np.asarray(ctx.attr("cats_strings"), dtype=object))
    data = _decode(np.asarray(ctx.static(x, "OneHotEncoder's string input")))
    return (data[..., None] == cats).astype(np.float32)


# --- TreeEnsemble (ai.onnx.ml opset 5) ---------------------------------------------------

_COMPARE = {  # nodes_modes value -> comparison of the feature value v with the split s
    0: lambda v, s: v <= s,
    1: lambda v, s: v < s,
    2: lambda v, s: v >= s,
    3: lambda v, s: v > s,
    4: lambda v, s: v == s,
    5: lambda v, s: v != s,
}


def _member_sets(modes, values) -> np.ndarray:
    """(nodes, widest set) matrix of the NaN-delimited membership sets, NaN-padded."""
    sets, current = [], []
    for v in [] if values is None else np.asarray(values).tolist():
        if np.isnan(v):
            sets.append(current)
            current = []
        else:
            current.append(v)
    width = max([len(s) for s in sets] + [1])
    table = np.full((len(modes), width), np.nan)
    for node, members in zip(np.flatnonzero(modes == 6), sets):
        table[node, :len(members)] = members
    return table


def _tree_depth(true_ids, false_ids, true_leaf, false_leaf, roots) -> int:
    """The longest root-to-leaf path, in branch nodes (the number of steps to walk)."""
    memo: dict[int, int] = {}

    def depth(n):
        if n not in memo:
            below = [depth(c) for c, leaf in ((true_ids[n], true_leaf[n]),
                                               (false_ids[n], false_leaf[n])) if not leaf]
            memo[n] = 1 + max(below, default=0)
        return memo[n]

    return max((depth(r) for r in roots), default=0)


def _tree5_arrays(ctx) -> dict[str, np.ndarray]:
    """The node arrays of a TreeEnsemble-5 node, in the form ``_walk`` takes."""
    a = {k: np.asarray(ctx.attr(f"nodes_{k}")) for k in (
        "featureids", "modes", "splits", "truenodeids", "falsenodeids", "trueleafs", "falseleafs")}
    mode = a["modes"].astype(INT64)
    roots = np.asarray(ctx.attr("tree_roots"), INT64)
    t_leaf, f_leaf = a["trueleafs"].astype(bool), a["falseleafs"].astype(bool)
    t_ids, f_ids = a["truenodeids"].astype(INT64), a["falsenodeids"].astype(INT64)
    return dict(
        feat=a["featureids"], split=a["splits"], mode=mode, t_ids=t_ids, f_ids=f_ids,
        t_leaf=t_leaf, f_leaf=f_leaf, roots=roots,
        missing=np.asarray(ctx.attr("nodes_missing_value_tracks_true", [0] * len(mode)), bool),
        members=_member_sets(mode, ctx.attr("membership_values")),
        stump=t_leaf[roots] & f_leaf[roots] & (t_ids[roots] == f_ids[roots]),  # a root leaf
    )


def _walk(x, t):
    """Leaf index reached by every (sample, tree): shape (batch, trees)."""
    steps = _tree_depth(t["t_ids"], t["f_ids"], t["t_leaf"], t["f_leaf"], t["roots"])
    j = {k: jnp.asarray(v.astype(x.dtype) if k in ("split", "members") else v)
         for k, v in t.items()}
    node = jnp.broadcast_to(j["roots"], (x.shape[0], len(t["roots"])))
    done = jnp.broadcast_to(j["stump"], node.shape)
    for _ in range(steps):
        v = jnp.take_along_axis(x, j["feat"][node], axis=1)
        split, mode = j["split"][node], j["mode"][node]
        go = jnp.any(v[..., None] == j["members"][node], axis=-1)  # set membership
        for m, cmp in _COMPARE.items():
            go = jnp.where(mode == m, cmp(v, split), go)
        go = go | (jnp.isnan(v) & j["missing"][node])
        nxt = jnp.where(go, j["t_ids"][node], j["f_ids"][node])
        leaf = jnp.where(go, j["t_leaf"][node], j["f_leaf"][node])
        node, done = jnp.where(done, node, nxt), done | leaf
    return node


_AGGREGATE = {  # aggregate_function -> combination over trees (axis 1) of leaf weights
    0: lambda w, hit, n: jnp.sum(jnp.where(hit, w, 0), axis=1) / n,
    1: lambda w, hit, n: jnp.sum(jnp.where(hit, w, 0), axis=1),
    2: lambda w, hit, n: jnp.min(jnp.where(hit, w, jnp.finfo(w.dtype).max), axis=1),
    3: lambda w, hit, n: jnp.max(jnp.where(hit, w, jnp.finfo(w.dtype).min), axis=1),
}

_TREE_POST = {0: "NONE", 1: "SOFTMAX", 2: "LOGISTIC"}


@register("TreeEnsemble", since=5, domain=ML)
def _tree_ensemble(ctx, x):
    leaf = _walk(x, _tree5_arrays(ctx))
    weights = jnp.asarray(np.asarray(ctx.attr("leaf_weights")).astype(x.dtype))[leaf]
    targets = jnp.asarray(np.asarray(ctx.attr("leaf_targetids"), INT64))[leaf]
    hit = targets[..., None] == jnp.arange(ctx.attr("n_targets"))
    combine = _AGGREGATE[ctx.attr("aggregate_function", 1)]
    out = combine(weights[..., None], hit, leaf.shape[1])
    return _POST[_TREE_POST[ctx.attr("post_transform", 0)]](out).astype(x.dtype)


# --- TreeEnsembleRegressor / TreeEnsembleClassifier (what skl2onnx writes for trees) ---------

_LEGACY_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3,
                 "BRANCH_EQ": 4, "BRANCH_NEQ": 5, "LEAF": -1}


def _legacy_arrays(ctx):
    """Node arrays of the older tree ops (leaves are nodes; ids are per tree) and the map
    from (tree id, node id) to the node's position."""
    trees, ids = ctx.attr("nodes_treeids"), ctx.attr("nodes_nodeids")
    pos = {(t, n): i for i, (t, n) in enumerate(zip(trees, ids))}
    mode = np.asarray([_LEGACY_MODES[m] for m in ctx.attr("nodes_modes")], INT64)
    child = lambda key: np.asarray([  # noqa: E731
        i if m < 0 else pos[(t, c)] for i, (t, c, m) in enumerate(zip(trees, ctx.attr(key), mode))
    ], INT64)
    t_ids, f_ids = child("nodes_truenodeids"), child("nodes_falsenodeids")
    roots = np.asarray([pos[(t, ids[trees.index(t)])] for t in dict.fromkeys(trees)], INT64)
    arrays = dict(
        feat=np.asarray(ctx.attr("nodes_featureids"), INT64), mode=mode, roots=roots,
        split=np.asarray(ctx.attr("nodes_values"), np.float64), t_ids=t_ids, f_ids=f_ids,
        t_leaf=mode[t_ids] < 0, f_leaf=mode[f_ids] < 0, stump=mode[roots] < 0,
        missing=np.asarray(ctx.attr("nodes_missing_value_tracks_true", [0] * len(mode)), bool),
        members=np.full((len(mode), 1), np.nan),
    )
    return arrays, pos


def _leaf_table(ctx, pos, prefix: str, width: int) -> np.ndarray:
    """(nodes, width) weights of every leaf, from the ``{prefix}_*`` attributes."""
    table = np.zeros((len(pos), width))
    keys = zip(ctx.attr(f"{prefix}_treeids"), ctx.attr(f"{prefix}_nodeids"))
    rows = [pos[key] for key in keys]
    np.add.at(table, (rows, ctx.attr(f"{prefix}_ids")), ctx.attr(f"{prefix}_weights"))
    return table


def _legacy_scores(ctx, x, prefix: str, width: int, base=None):
    x = jnp.asarray(x).astype(np.float32)
    arrays, pos = _legacy_arrays(ctx)
    leaf = _walk(x, arrays)
    w = jnp.asarray(_leaf_table(ctx, pos, prefix, width).astype(np.float32))[leaf]
    agg = {"AVERAGE": 0, "SUM": 1, "MIN": 2, "MAX": 3}[ctx.attr("aggregate_function", "SUM")]
    base = np.asarray(ctx.attr("base_values", [0.0] * width) if base is None else base, np.float32)
    return _AGGREGATE[agg](w, jnp.ones((1, 1, 1), bool), leaf.shape[1]) + base


@register("TreeEnsembleRegressor", since=1, domain=ML)
def _tree_regressor(ctx, x):
    return _post(ctx, _legacy_scores(ctx, x, "target", ctx.attr("n_targets", 1)))


def _binary_tree_scores(ctx, x, labels):
    """Two classes scored by one class id, as onnxruntime reads a vague spec. On class 0
    (skl2onnx's choice), with the base value: s -> [1 - s, s] when all weights are positive
    (probabilities), else [-s, s]. On class 1: [0, s]. The label is the second class when s
    passes the midpoint (0.5 for probabilities, else 0)."""
    cid = ctx.attr("class_ids")[0]
    base = list(ctx.attr("base_values") or [0.0])
    if len(base) != 1:
        raise NotImplementedError("a binary TreeEnsembleClassifier with two base values")
    s = _legacy_scores(ctx, x, "class", 2, [0.0, 0.0])[:, cid:cid + 1]
    probs = min(ctx.attr("class_weights")) >= 0
    if cid == 1:  # onnxruntime ignores the base value here
        scores = jnp.concatenate([jnp.zeros_like(s), s], axis=1)
    else:
        s = s + base[0]
        scores = jnp.concatenate([1 - s, s] if probs else [-s, s], axis=1)
    upper = s[:, 0] > (0.5 if probs else 0.0)
    return jnp.where(upper, labels[1], labels[0]), _post(ctx, scores)


@register("TreeEnsembleClassifier", since=1, domain=ML)
def _tree_classifier(ctx, x):
    if ctx.attr("classlabels_int64s") is None:
        raise NotImplementedError("string class labels (JAX arrays cannot hold strings)")
    labels = np.asarray(ctx.attr("classlabels_int64s"), INT64)
    if len(set(ctx.attr("class_ids"))) == 1 and len(labels) == 2:
        return _binary_tree_scores(ctx, x, labels)
    scores = _post(ctx, _legacy_scores(ctx, x, "class", len(labels)))
    return jnp.asarray(labels)[jnp.argmax(scores, axis=1)], scores
