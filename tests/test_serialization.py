"""Model files hold data only: every model kind round-trips exactly, a renamed field loads
through a declared migration, and crafted files (a pickle, a foreign class, a truncated file, a
leaf of the wrong shape) fail with one clear line and run nothing."""

import json
import pickle
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import geoflow as gf
from geoflow import serialization
from geoflow.serialization import SerializationError


def _models():
    from discrete import dfm
    from geoflow.continuous import cnf, flow_matching
    from geoflow.image_flows import glow, realnvp_multiscale, residual_image_flow
    from manifolds import SO3, Sphere, Torus, rfm
    from molecules.proteins import frameflow

    key = jax.random.key(0)
    return {
        "nsf": gf.nsf(key, 2, layers=2, width=8),
        "maf-conditional": gf.maf(key, 3, cond_dim=2, layers=2, width=8, order="random"),
        "residual": gf.make_flow("residual", key, 2, layers=2, width=8),
        "glow": glow(key, (1, 8, 8), levels=1, depth=2, width=8),
        "realnvp-ms": realnvp_multiscale(key, (1, 8, 8), levels=1, couplings=1, width=8, blocks=1),
        "residual-image": residual_image_flow(key, (1, 4, 4), depth=1, width=8),
        "cnf": cnf(key, 2, width=8),
        "flow-matching": flow_matching(key, 2, width=8),
        "rfm-sphere": rfm(key, Sphere(2), width=8),
        "rfm-so3": rfm(key, SO3(), width=8),
        "rfm-torus": rfm(key, Torus(2), width=8),
        "rfm-sphere-fourier": rfm(key, Sphere(2), width=8, fourier_features=6),
        "dfm-transformer": dfm(key, 5, 4, denoiser="transformer", dim=16, depth=1),
        "frameflow": frameflow(key, 4, width=16, pair=8, layers=1, heads=1, head_dim=4, num_points=1),
        "molecule-flow": _molecule_flow(key, "e3nn"),
        "molecule-flow-vector": _molecule_flow(key, "vector"),
    }


def _molecule_flow(key, network):
    """With ``network="e3nn"`` its layers are a third-party type, stored through a registered codec."""
    from molecules import Vocabulary
    from molecules.flow import MoleculeFlow

    return MoleculeFlow(Vocabulary(("H", "C", "O")), 5, np.array([0, 1, 2, 1, 1, 1]), key=key, scalars=8, vectors=2,
                        layers=1, radial=4, network=network)


@pytest.mark.parametrize("name", list(_models()))
def test_every_model_kind_round_trips_exactly(name, tmp_path):
    model = _models()[name]
    loaded = gf.load(gf.save(tmp_path / "m.eqx", model))
    arrays = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_array))
    assert len(arrays(model)) == len(arrays(loaded))
    assert all(a.shape == b.shape and a.dtype == b.dtype and bool(jnp.all(a == b)) for a, b in zip(arrays(model), arrays(loaded)))
    # the hyper-parameters too; e3nn's Linear compares a helper object by identity, so that one
    # model is checked by its static layout instead
    if name == "molecule-flow":
        assert jax.tree.structure(eqx.filter(model, eqx.is_array)).num_leaves == len(arrays(loaded))
        assert str(model.network.layers.self_linear.irreps_out) == str(loaded.network.layers.self_linear.irreps_out)
    else:
        assert bool(eqx.tree_equal(model, loaded))


def test_a_checkpoint_with_optimizer_state_and_history_round_trips(tmp_path):
    x = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    ckpt = tmp_path / "ckpt.eqx"
    gf.fit(gf.nsf(jax.random.key(0), 2, layers=2, width=8), x, key=jax.random.key(1), steps=20, eval_every=10,
           checkpoint=ckpt, ema_decay=0.9, progress=False)
    saved = gf.load(ckpt)
    assert int(saved["step"]) == 20 and saved["history"].steps == [10, 20]
    assert jax.tree.structure(saved["opt_state"]) is not None
    again = gf.load(gf.save(tmp_path / "again.eqx", saved))
    rest = lambda d: {k: v for k, v in d.items() if k != "history"}
    assert bool(eqx.tree_equal(rest(saved), rest(again)))
    assert repr(saved["history"]) == repr(again["history"])  # its nan steps_per_second is not == itself


def _rewrite(path, edit):
    """Apply ``edit`` to the JSON structure of a saved file, in place."""
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    structure = json.loads(bytes(arrays["structure"]).decode())
    edit(structure["tree"])
    arrays["structure"] = np.frombuffer(json.dumps(structure).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _find_class(node, class_path):
    if isinstance(node, dict):
        if node.get("class") == class_path:
            return node
        for v in node.values():
            if (found := _find_class(v, class_path)) is not None:
                return found
    if isinstance(node, list):
        for v in node:
            if (found := _find_class(v, class_path)) is not None:
                return found
    return None


def test_a_renamed_field_loads_through_a_declared_migration(tmp_path, monkeypatch):
    """A file written when ``Transformed`` called its base ``prior`` (simulated by renaming the
    field in the file): refused with the fix named, then loaded once a migration is declared."""
    model = gf.nsf(jax.random.key(0), 2, layers=2, width=8)
    path = gf.save(tmp_path / "old.eqx", model)
    class_path = "geoflow.distributions.Transformed"

    def rename(tree):
        node = _find_class(tree, class_path)
        node["fields"]["prior"] = node["fields"].pop("base")

    _rewrite(path, rename)
    with pytest.raises(SerializationError, match="declare a migration"):
        gf.load(path)
    monkeypatch.setattr(serialization, "MIGRATIONS", {})

    def migrate(fields):
        fields["base"] = fields.pop("prior")
        return fields

    serialization.register_migration(class_path, migrate)
    assert bool(eqx.tree_equal(gf.load(path), model))


@pytest.mark.parametrize("name, class_path, added", [
    ("rfm-sphere", "manifolds.fields.ManifoldMLP", "frequencies"),
    ("molecule-flow-vector", "molecules.vector_network.VectorNetwork", "length_head"),
    ("molecule-flow-vector", "molecules.flow.MoleculeFlow", "_fake_atoms"),
    ("realnvp-ms", "geoflow.bijections.image_coupling.ImageCoupling", "scale"),
])
def test_files_from_before_a_field_was_added_load_through_the_registered_migration(name, class_path, added, tmp_path):
    """The library's own migrations: a file written before ``added`` existed (simulated by
    deleting it from the file) loads as today's model with the field's neutral value."""
    model = _models()[name]
    path = gf.save(tmp_path / "old.eqx", model)
    _rewrite(path, lambda tree: _find_class(tree, class_path)["fields"].pop(added))
    assert bool(eqx.tree_equal(gf.load(path), model))


def test_dequantizers_from_before_the_base_was_a_choice_load_with_the_normal_base_they_had(tmp_path):
    from geoflow.dequantization import VariationalDequantizer

    deq = VariationalDequantizer((1, 4, 4), couplings=2, width=8, base="normal", key=jax.random.key(0))
    path = gf.save(tmp_path / "old.eqx", deq)
    _rewrite(path, lambda tree: _find_class(tree, "geoflow.dequantization.VariationalDequantizer")["fields"].pop("base"))
    loaded = gf.load(path)
    assert loaded.base == "normal" and bool(eqx.tree_equal(loaded, deq))


def test_split_priors_from_before_the_floor_load_unbounded_as_they_were_trained(tmp_path):
    """A Glow file written before ``SplitPrior.min_log_std`` existed holds a prior trained without
    the floor: it loads with ``min_log_std=None``, the same parameters, and its own density."""
    from geoflow.bijections import SplitPrior
    from geoflow.image_flows import glow
    from helpers import perturb

    model = perturb(glow(jax.random.key(0), (1, 8, 8), levels=2, depth=1, width=8), jax.random.key(1), scale=1.0)
    path = gf.save(tmp_path / "old.eqx", model)
    _rewrite(path, lambda tree: _find_class(tree, "geoflow.bijections.multiscale.SplitPrior")["fields"].pop("min_log_std"))
    loaded = gf.load(path)

    is_prior = lambda leaf: isinstance(leaf, SplitPrior)
    priors = [leaf for leaf in jax.tree.leaves(loaded, is_leaf=is_prior) if is_prior(leaf)]
    assert [p.min_log_std for p in priors] == [None]
    for a, b in zip(jax.tree.leaves(eqx.filter(loaded, eqx.is_array)), jax.tree.leaves(eqx.filter(model, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(a, b)
    x = 255.0 * jax.random.uniform(jax.random.key(2), (1, 8, 8))
    assert not np.isclose(float(loaded.log_prob(x)), float(model.log_prob(x)))  # the floor was in use


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/geoflow-pwned", "w"))


def _one_line_refusal(path):
    with pytest.raises(SerializationError) as info:
        gf.load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_crafted_files_fail_with_one_clear_line_and_run_nothing(tmp_path):
    import os

    marker = "/tmp/geoflow-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    good = gf.save(tmp_path / "good.eqx", gf.nsf(jax.random.key(0), 2, layers=2, width=8))

    pickled = tmp_path / "pickle.eqx"  # the old format's payload: a pickle that opens a file
    pickled.write_bytes(pickle.dumps({"format": "geoflow-pytree-v1", "tree": _Payload()}))
    assert "is a pickle" in _one_line_refusal(pickled)

    inside = tmp_path / "inside.eqx"  # a pickled object array inside the archive
    with open(inside, "wb") as f:
        np.savez(f, structure=np.frombuffer(b"{}", np.uint8), leaf_0=np.array([_Payload()], dtype=object))
    assert "not a geoflow save file" in _one_line_refusal(inside)
    assert not os.path.exists(marker)

    foreign = tmp_path / "foreign.eqx"
    foreign.write_bytes(good.read_bytes())
    _rewrite(foreign, lambda tree: tree.update({"class": "os.system"}))
    assert "outside this library's allow-list" in _one_line_refusal(foreign)

    function = tmp_path / "function.eqx"
    function.write_bytes(good.read_bytes())
    _rewrite(function, lambda tree: tree["fields"].update({"base": {"function": "subprocess.run"}}))
    assert "outside this library's allow-list" in _one_line_refusal(function)

    truncated = tmp_path / "truncated.eqx"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    assert "not a geoflow save file, or it is damaged" in _one_line_refusal(truncated)

    wrong_shape = tmp_path / "shape.eqx"
    with np.load(good) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["leaf_0"] = np.zeros((7, 7), arrays["leaf_0"].dtype)
    with open(wrong_shape, "wb") as f:
        np.savez(f, **arrays)
    assert "the structure records" in _one_line_refusal(wrong_shape)

    with pytest.raises(SerializationError, match="cannot save the function"):
        gf.save(tmp_path / "lambda.eqx", {"f": lambda x: x})
    assert zipfile.is_zipfile(good)
